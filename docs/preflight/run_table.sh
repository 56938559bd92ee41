#!/usr/bin/env bash
# The compiles behind the README's "Predicted memory per chip" table, in priority order; each
# appends JSON lines to docs/preflight/table.jsonl. Run from the repository root in a venv with
# requirements-preflight.txt installed:  bash docs/preflight/run_table.sh [first-line]
# then:  python docs/preflight/table.py
# ImageNet config: ResNet-50, 224 px views from 384 px whole-image sources (data.train_source_size).
# Per-chip batch 16 (global 64 over 4 chips): the paper's 4096 over 512 TPU v3 cores is 8 per
# core, i.e. 16 per two-core chip (v4/v5p run both cores of a chip as one "megacore" device). The
# v3 line is the paper's own setup (4096 over v3:16x16 = 512 cores). --max_batch searches print
# every compile; the first is the 16-per-chip one.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=docs/preflight/table.jsonl
pf() { nice -n 19 python -m byol_jax.preflight --config=configs/imagenet.py --fast "$@" >> "$out"; }
F32="--config.model.dtype=float32"
R200X2="--config.model.encoder=resnet200 --config.model.width=2"
B64="--config.batch_size=64"
B128="--config.batch_size=128"
lines=(
  "--target=tpu:v3:16x16 --config.batch_size=4096"
  "--target=tpu:v5e:2x2 $B64 --max_batch"
  "--target=gpu:h100:4 $B64 --max_batch"
  "--target=tpu:v4:2x2x1 $B64 --max_batch"
  # The remaining setups at 16 per chip first, then a second point (32 per chip) for each: the
  # table fits a line through the two compiles.
  "--target=tpu:v5p:2x2x1 $B64"
  "--target=gpu:h100:4 $B64 $F32"
  "--target=gpu:h100:4 $B64 $R200X2"
  "--target=tpu:v5e:2x2 $B64 $F32"
  "--target=tpu:v4:2x2x1 $B64 $F32"
  "--target=tpu:v5p:2x2x1 $B64 $F32"
  "--target=tpu:v5p:2x2x1 $B64 $R200X2"
  "--target=tpu:v5e:2x2 $B64 $R200X2"
  "--target=tpu:v4:2x2x1 $B64 $R200X2"
  "--target=tpu:v5p:2x2x1 $B128"
  "--target=gpu:h100:4 $B128 $F32"
  "--target=gpu:h100:4 $B128 $R200X2"
  "--target=tpu:v5e:2x2 $B128 $F32"
  "--target=tpu:v4:2x2x1 $B128 $F32"
  "--target=tpu:v5p:2x2x1 $B128 $F32"
  "--target=tpu:v5e:2x2 $B128 $R200X2"
  "--target=tpu:v4:2x2x1 $B128 $R200X2"
  "--target=tpu:v5p:2x2x1 $B128 $R200X2"
)
for line in "${lines[@]:${1:-0}}"; do
  echo "$(date -u +%H:%M:%S) $line" >&2
  # shellcheck disable=SC2086
  pf $line
done
