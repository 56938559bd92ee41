#!/usr/bin/env bash
# Compiles behind the README's "Accelerator preflight" table; each appends JSON lines to
# docs/preflight/<queue>.jsonl. Run from the repository root in a venv with
# requirements-preflight.txt installed:  bash docs/preflight/run_table.sh gpu|tpu
# (the two queues can run side by side). Then: python docs/preflight/table.py
# In the first session only the first two GPU lines finished; the TPU figures came from the
# shorter single-compile queue in run_tpu.sh (a TPU --max_batch search of ResNet-50 is 5-6
# compiles of ~5 min each on 2 busy cores). The rest is the full plan for a later run.
# Per-chip batch 16 everywhere: the paper's 4096 over 512 TPU v3 cores is 8 per core, i.e. 16
# per chip of two cores (v4/v5p run both cores of a chip as one "megacore" device).
set -uo pipefail
cd "$(dirname "$0")/../.."
queue=${1:?gpu or tpu}
out=docs/preflight/$queue.jsonl
pf() { nice -n 5 python -m byol_jax.preflight --config=configs/imagenet.py --fast "$@" >> "$out"; }
R50=""; F32="--config.model.dtype=float32"
R200X2="--config.model.encoder=resnet200 --config.model.width=2"
if [ "$queue" = gpu ]; then
  pf --target=gpu:h100:4 --config.batch_size=64 --max_batch --hlo
  pf --target=gpu:h100:4 --config.batch_size=64 $F32 --max_batch
  pf --target=gpu:h200:4 --config.batch_size=64 --max_batch
  pf --target=gpu:h100:4 --config.batch_size=64 $R200X2 --max_batch
else
  pf --target=tpu:v5e:2x2 --config.batch_size=64 --max_batch --hlo
  pf --target=tpu:v3:16x16 --config.batch_size=4096
  pf --target=tpu:v4:2x2x1 --config.batch_size=64 --max_batch
  pf --target=tpu:v5p:2x2x1 --config.batch_size=64 --max_batch
  pf --target=tpu:v5e:2x2 --config.batch_size=64 $F32 --max_batch
  pf --target=tpu:v5p:2x2x1 --config.batch_size=64 $R200X2 --max_batch
  pf --target=tpu:v4:2x2x1 --config.batch_size=64 $F32 --max_batch
  pf --target=tpu:v5p:2x2x1 --config.batch_size=64 $F32 --max_batch
  pf --target=tpu:v4:2x2x1 --config.batch_size=64 $R200X2 --max_batch
  pf --target=tpu:v5e:2x2 --config.batch_size=64 $R200X2 --max_batch
fi
