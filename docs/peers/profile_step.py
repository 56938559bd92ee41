"""Where the CPU train step's time goes: per-op XLA:CPU time, grouped by what the op belongs to.

    python docs/peers/profile_step.py --config=configs/bench_deepmind.py [--plan=tuned] [--top=20]

Builds the benchmarked step (``byol_jax.bench``'s synthetic batch, the cached or freshly tuned
CPU plan unless ``--plan=default``), traces a few steps with XLA:CPU's per-op trace events
(``--xla_cpu_enable_xprof_traceme``) and attributes each op's time to a group by the JAX name
stack in its HLO metadata: augmentation, online forward, target forward, backward, LARS + EMA
update, other. Times are summed over the worker threads, so they add up to about
(threads x wall time); read them as shares. Tracing slows the step: the wall time it prints is
not a throughput figure (use ``byol_jax.bench`` for that).

Needs TensorFlow's profiler protos (TensorFlow comes with tensorflow-datasets in requirements).
A developer tool, like the peer scripts here: not part of the package or its tests.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Benchmark config file.")
_PLAN = flags.DEFINE_enum("plan", "tuned", ["default", "tuned"], "CPU plan to profile.")
_STEPS = flags.DEFINE_integer("steps", 3, "Traced steps (after 2 untraced ones).")
_TOP = flags.DEFINE_integer("top", 15, "Individual ops to list.")
flags.mark_flag_as_required("config")

# First match wins; matched against the op's JAX name stack (metadata op_name).
_GROUPS = (
    ("backward", ("transpose(jvp(",)),
    ("online forward", ("jvp(BYOLNetwork)", "jvp(probe)")),
    ("target forward", ("BYOLNetwork",)),
    ("augmentation", ("vmap(",)),
)


def _group(op_name: str, hlo_name: str) -> str:
    for group, markers in _GROUPS:
        if any(marker in op_name for marker in markers):
            return group
    if op_name and not hlo_name.startswith(("copy", "transpose_copy")):
        return "update (LARS + EMA) and loss"  # the step's top-level arithmetic
    return "copies and unnamed"


def _op_times(trace_dir: str, steps: int) -> collections.Counter:
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    times: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if "XLAEigen" not in line.name and "PjRtCpuClient" not in line.name:
                continue  # Python and profiler threads
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if "ThunkExecutor" in name or "Await" in name:
                    continue  # containers and waits, not ops
                times[name] += event.duration_ps / 1e9 / steps  # ms per step
    return times


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from byol_jax import bench, cpu_autotune

    config = _CONFIG.value
    plan = None
    if _PLAN.value == "tuned":
        plan, _ = bench.tuned_plan(config)
        if plan is not None:
            cpu_autotune.apply_flags(plan)
    extra = " --xla_cpu_enable_xprof_traceme=true"
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + extra

    import jax

    step = bench.build_step(config, plan)
    compiled, state, batch = step.compiled, step.state, step.batch
    op_names = {}
    for match in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = ([^\n]*)", compiled.as_text(), re.M):
        found = re.search(r'op_name="([^"]*)"', match.group(2))
        op_names[match.group(1)] = found.group(1) if found else ""
    for _ in range(2):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))

    with tempfile.TemporaryDirectory() as trace_dir:
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            for _ in range(_STEPS.value):
                state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
        wall_ms = (time.perf_counter() - start) / _STEPS.value * 1e3
        times = _op_times(trace_dir, _STEPS.value)

    groups: collections.Counter = collections.Counter()
    for name, ms in times.items():
        groups[_group(op_names.get(name, ""), name)] += ms
    total = sum(groups.values())
    print(f"plan: {_PLAN.value} {os.environ['XLA_FLAGS'].replace(extra, '').strip()!r}")
    print(f"op time {total:.1f} ms/step over all threads; traced wall {wall_ms:.1f} ms/step")
    for group, ms in groups.most_common():
        print(f"  {ms:8.1f} ms  {100 * ms / total:5.1f}%  {group}")
    print(f"top {_TOP.value} ops:")
    for name, ms in times.most_common(_TOP.value):
        print(f"  {ms:8.2f} ms  {name:30s} {op_names.get(name, '')[:70]}")


if __name__ == "__main__":
    app.run(main)
