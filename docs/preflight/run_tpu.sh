#!/usr/bin/env bash
# TPU compiles behind the README table (two queues side by side): bash docs/preflight/run_tpu.sh a|b
set -uo pipefail
cd "$(dirname "$0")/../.."
out=docs/preflight/tpu.jsonl
pf() { nice -n 5 python -m byol_jax.preflight --config=configs/imagenet.py --fast "$@" >> "$out"; }
if [ "$1" = a ]; then
  pf --target=tpu:v5e:2x2 --config.batch_size=64 --hlo
  pf --target=tpu:v4:2x2x1 --config.batch_size=64
  pf --target=tpu:v5e:2x2 --config.batch_size=128
  pf --target=tpu:v5e:2x2 --config.batch_size=64 --config.model.dtype=float32
else
  pf --target=tpu:v5p:2x2x1 --config.batch_size=64
  pf --target=tpu:v3:16x16 --config.batch_size=4096
  pf --target=tpu:v5p:2x2x1 --config.batch_size=64 --config.model.encoder=resnet200 --config.model.width=2
fi
