#!/usr/bin/env bash
# On a machine with one NVIDIA H200: measure the ResNet-50 224 px bf16 train step (images/s and
# peak memory, byol_jax.bench) and print the preflight's prediction for the same config and chip
# next to it. Run from the repository root:  bash docs/preflight/h200_bench.sh
# Needs the CUDA wheels for the measurement: pip install "jax[cuda12]==0.10.2" -r requirements.txt
# -r requirements-preflight.txt (the preflight half runs on the CPU, as everywhere).
set -euo pipefail
cd "$(dirname "$0")/../.."
BATCH=${BATCH:-256}
common=(--config=configs/imagenet.py --config.batch_size="$BATCH")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# The bench preallocates 75% of memory by default; peak_bytes_in_use is what the step used.
measured=$(python -m byol_jax.bench "${common[@]}" --repeats=5 --warmup=3 --steps_per_repeat=5 | tail -n 1)
predicted=$(python -m byol_jax.preflight "${common[@]}" --target=gpu:h200:1 | tail -n 1)
python - "$measured" "$predicted" <<'PY'
import json, sys
m, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
gib = 1024**3
print(json.dumps({"measured": m, "predicted": p}))
print(f"H200, R50 224 px bf16, batch {p['global_batch']}: {m['images_per_sec']:.0f} images/s, "
      f"MFU {m['mfu']}, peak memory {m['peak_memory_bytes'] / gib:.2f} GiB measured vs "
      f"{p['memory']['total'] / gib:.2f} GiB predicted "
      f"(temp {p['memory']['temporaries'] / gib:.2f}); FLOPs/image measured-step XLA "
      f"{m['flops_per_image']}, preflight estimate {p['flops_per_image']:.3g}")
PY
