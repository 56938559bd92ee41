#!/usr/bin/env bash
# Side-by-side CPU throughput: byol_jax (untuned and tuned plans) next to its peers, one script.
#
#   bash docs/peers/measure.sh [OUT_DIR]
#
# Needs: this repo's .venv; lightly 1.6 + PyTorch in $LIGHTLY_PYTHON (see docs/peers/lightly_step.py);
# optionally DeepMind's released step in $DEEPMIND_STEP (a command printing one JSON line with
# images_per_sec, e.g. "/work/peers/dm/.venv/bin/python /work/peers/dm/released_step.py").
# Setups run in turn (A with its peer, then B with its peer); each `--plan=both` alternates the
# untuned and tuned plan in child processes. Every line of OUT_DIR/results.jsonl is one result.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-/tmp/byol_peers}"
mkdir -p "$out"
python=.venv/bin/python
lightly_python="${LIGHTLY_PYTHON:-}"
deepmind_step="${DEEPMIND_STEP:-}"
results="$out/results.jsonl"
: > "$results"

note() { echo "$(date -u +%H:%M:%S) $*" >&2; }
record() { grep '^{' | tail -1 | tee -a "$results"; }

note "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $(nproc); load $(cut -d' ' -f1-3 /proc/loadavg)"

note "setup A: configs/bench_deepmind.py, default vs tuned plan"
$python -m byol_jax.bench --config=configs/bench_deepmind.py --plan=both --rounds=2 \
  --repeats=5 --steps_per_repeat=5 2>"$out/a.log" | record
if [ -n "$deepmind_step" ]; then
  note "setup A peer: DeepMind's released step"
  $deepmind_step 2>"$out/a_peer.log" | record
fi

note "setup B: configs/bench_lightly.py, default vs tuned plan"
$python -m byol_jax.bench --config=configs/bench_lightly.py --plan=both --rounds=1 \
  --repeats=3 --steps_per_repeat=2 2>"$out/b.log" | record
if [ -n "$lightly_python" ]; then
  note "setup B peer: lightly 1.6 (contiguous, then channels-last)"
  $lightly_python docs/peers/lightly_step.py 2>"$out/b_peer.log" | record
  $lightly_python docs/peers/lightly_step.py --channels_last 2>>"$out/b_peer.log" | record
fi

note "default config: configs/fashion_mnist.py, default vs tuned plan"
$python -m byol_jax.bench --config=configs/fashion_mnist.py --plan=both --rounds=2 \
  --repeats=5 --steps_per_repeat=10 2>"$out/default.log" | record
note "done: $results; load $(cut -d' ' -f1-3 /proc/loadavg)"
