"""Throughput benchmark of the compiled BYOL train step: images/s, FLOPs, MFU, memory.

    python -m byol_jax.bench --config=configs/<file>.py[:arg] [--config.key=value ...] \
        [--repeats=5] [--warmup=2] [--steps_per_repeat=1] [--input] \
        [--plan=tuned|default|both] [--rounds=1] [--tune_budget_s=60]

The step is exactly the one training runs (``train.build_experiment`` → ``parallel.map_step``,
state donated), fed a device-resident synthetic uint8 batch ``[batch, source_size, source_size,
3]``, so augmentation, both networks, loss, LARS and EMA are all timed. After ``--warmup`` steps,
each of ``--repeats`` repeats runs ``--steps_per_repeat`` steps and waits for the result; the
median repeat gives ``step_ms``. One JSON line is printed:

* ``images_per_sec``: source images per second (each image gives two augmented views).
* ``compile_s``: lowering + XLA compilation of the pmapped step.
* ``flops_per_image``: XLA's cost analysis of the compiled step, summed over devices, divided by
  the global batch (all FLOPs the step executes: augmentation, forward/backward, optimizer).
* ``model_flops_per_image``: the same for the step with native convolutions, before XLA's
  optimizations. The explicit-matmul convolutions also multiply partly padded windows, which
  XLA counts for a dot but not for a convolution, so only this count is comparable across
  implementations (setup A: ~0.43 GFLOP per image, the released step's ~28 GFLOP per 64).
* ``mfu``: model FLOP/s over the peak. On CPU the peak is measured in the same process with a
  large f32 matmul (what XLA's matmul reaches on this machine, under the same load); on GPU/TPU
  it is the spec sheet's dense peak for the compute dtype (``null`` when unknown).
* ``peak_memory_bytes``: ``device.memory_stats()['peak_bytes_in_use']`` (``null`` on CPU).

``--input`` also times the real input pipeline (``input_pipeline.train_batches`` +
``parallel.prefetch_to_device``) feeding the same compiled step, with the same repeat protocol,
and adds ``end_to_end_images_per_sec`` and ``end_to_end_ratio``.

``--plan`` picks the CPU plan (``cpu_autotune``: XLA flags + per-shape convolution choices):
``tuned`` (the default, what ``launch.py`` trains with: from the cache, else measured first),
``default`` (untuned: no flags, the fixed per-shape rule) or ``both``: tune, then run the default
and the tuned plan in alternating child processes (flags are process-global), ``--rounds`` times
each, and print one JSON line with both results, the median ``speedup`` of tuned over default,
the CPU model and the load average. Every result has ``plan``: its flags, per-layer choices
(``layers``), the tuning time and whether it came from the cache.

The probe's class count comes from ``config.bench.num_classes`` when a config sets it (bench
presets do), else 1000. ``config.bench.num_train_examples`` (default 50_000) only shapes the LR
and EMA schedules, which do not change the step's cost.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from byol_jax import cpu_autotune, models, parallel, train, train_data

DEFAULT_NUM_CLASSES = 1000
DEFAULT_NUM_TRAIN_EXAMPLES = 50_000

# Dense peak FLOP/s per chip from vendor spec sheets, by compute dtype (matched as substrings of
# `device.device_kind`, lower-cased, first match wins).
_PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("h200", {"bfloat16": 989e12, "float32": 67e12}),
    ("h100", {"bfloat16": 989e12, "float32": 67e12}),
    ("a100", {"bfloat16": 312e12, "float32": 19.5e12}),
    ("v100", {"bfloat16": 125e12, "float32": 15.7e12}),
    ("tpu v5 lite", {"bfloat16": 197e12}),
    ("tpu v5e", {"bfloat16": 197e12}),
    ("tpu v5p", {"bfloat16": 459e12}),
    ("tpu v5", {"bfloat16": 459e12}),
    ("tpu v4", {"bfloat16": 275e12}),
    ("tpu v3", {"bfloat16": 123e12}),
)


def _bench_setting(config: ml_collections.ConfigDict, key: str, default: Any) -> Any:
    bench = config.get("bench")
    if bench is None or bench.get(key) is None:
        return default
    return bench.get(key)


def spec_peak_flops(device: jax.Device, dtype: str) -> float | None:
    """Spec-sheet dense peak of one accelerator for ``dtype``; None when not in the table."""
    kind = device.device_kind.lower()
    for name, peaks in _PEAK_FLOPS:
        if name in kind:
            return peaks.get(dtype)
    return None


def measured_cpu_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large f32 matmul on the default device (best of ``repeats``)."""
    a = jnp.ones((size, size), jnp.float32)
    b = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def _cost_flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled (per-device) executable from XLA's cost analysis."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # Not every backend implements it.
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


def _model_flops(
    config: ml_collections.ConfigDict,
    lowered: Any,
    state: Any,
    batch: Any,
    num_classes: int,
    num_examples: int,
) -> float | None:
    """Per-device FLOPs of the step with native convolutions, before XLA optimizes it.

    The explicit-matmul convolutions also multiply partly padded windows, which XLA counts for
    a dot but not for a convolution, so the executed count depends on the implementation. This
    one does not (it is the count quoted for the released step: ~28 GFLOP per batch of 64).
    """
    if train.resolve_conv_impl(config.model.conv_impl) != "native":
        native = ml_collections.ConfigDict(config.to_dict())
        native.model.conv_impl = "native"
        experiment = train.build_experiment(
            native, num_classes=num_classes, num_train_examples=num_examples
        )
        lowered = parallel.map_step(experiment.step_fn).lower(state, batch)
    return _cost_flops(lowered)


def _peak_memory_bytes() -> int | None:
    peaks = []
    for device in jax.local_devices():
        try:
            stats = device.memory_stats()
        except Exception:
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def synthetic_batch(
    batch_size: int, source_size: int, num_classes: int, seed: int = 0, with_valid: bool = False
) -> dict[str, jax.Array]:
    """A device-resident, sharded uint8 batch with labels (host RNG, so it costs no compile).

    ``with_valid``: also per-image valid sizes (the whole square), as whole-image training feeds
    them, so the step is the one with the masked crop sampler.
    """
    rng = np.random.default_rng(seed)
    batch = {
        "image": rng.integers(0, 256, (batch_size, source_size, source_size, 3), np.uint8),
        "label": rng.integers(0, num_classes, (batch_size,), np.int32),
    }
    if with_valid:
        batch["valid"] = np.full((batch_size, 2), source_size, np.int32)
    return parallel.shard_batch(batch)


def _time_repeats(
    step: Callable, state: Any, batches: Iterator[Any], *, warmup: int, repeats: int, steps: int
) -> tuple[Any, list[float]]:
    """Seconds per step of each repeat (``steps`` steps, then wait), after ``warmup`` steps."""
    metrics = None
    for _ in range(warmup):
        state, metrics = step(state, next(batches))
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, next(batches))
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - start) / steps)
    if metrics is not None and not np.isfinite(float(parallel.fetch(metrics)["loss"])):
        raise FloatingPointError("the benchmarked step produced a non-finite loss")
    return state, times


def plan_report(
    experiment: train.Experiment,
    image_size: int,
    batch_per_device: int,
    name: str,
    plan: cpu_autotune.Plan | None,
) -> dict[str, Any]:
    """The plan a benchmark ran with: flags, and the implementation of every convolution shape."""
    encoder = experiment.online_net.encoder
    layers = []
    shapes = cpu_autotune.encoder_conv_shapes(encoder, image_size, batch_per_device)
    conv_plan = plan.convs if plan is not None else ()
    for key, count in shapes.items():
        impl = "native"
        if encoder.conv_impl == "matmul":
            impl = models.cpu_conv_choice(key, conv_plan)
        height, width, cin, cout, k, stride, dtype = key
        layers.append(
            {
                "height": height,
                "width": width,
                "in": cin,
                "out": cout,
                "kernel": k,
                "stride": stride,
                "dtype": dtype,
                "count": count,
                "impl": impl,
            }
        )
    report: dict[str, Any] = {"name": name, "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if plan is not None:
        report.update(
            tuning_s=plan.tuning_s,
            source=plan.source,
            cache_file=plan.cache_file,
            complete=plan.complete,
            flag_totals_ms=dict(plan.flag_totals_ms),
        )
    elif name == "tuned":
        report["source"] = (
            "not tuned (explicit conv_impl, XLA_FLAGS set, cpu_autotune off, or not CPU)"
        )
    report["layers"] = layers
    return report


@dataclasses.dataclass(frozen=True)
class BenchStep:
    """The benchmarked step, compiled, with the replicated state and batch it runs on."""

    experiment: train.Experiment
    state: Any
    batch: dict[str, jax.Array]
    num_classes: int
    num_examples: int
    source_size: int  # the train step's input size
    lowered: Any
    compiled: Callable
    compile_s: float


def build_step(
    config: ml_collections.ConfigDict, plan: cpu_autotune.Plan | None = None
) -> BenchStep:
    """Build, replicate and compile ``config``'s train step on a synthetic batch.

    ``plan``'s convolution choices are used; its XLA flags must already be in effect.
    """
    num_classes = int(_bench_setting(config, "num_classes", DEFAULT_NUM_CLASSES))
    num_examples = int(_bench_setting(config, "num_train_examples", DEFAULT_NUM_TRAIN_EXAMPLES))
    experiment = train.build_experiment(
        config,
        num_classes=num_classes,
        num_train_examples=num_examples,
        conv_plan=plan.convs if plan is not None else (),
    )
    state = parallel.replicate(train.initial_state(experiment, config.seed))
    source_size, with_valid = train_data.train_source_shape(config)
    batch = synthetic_batch(config.batch_size, source_size, num_classes, config.seed, with_valid)
    start = time.perf_counter()
    lowered = parallel.map_step(experiment.step_fn).lower(state, batch)
    compiled = lowered.compile()
    return BenchStep(
        experiment,
        state,
        batch,
        num_classes,
        num_examples,
        source_size,
        lowered,
        compiled,
        time.perf_counter() - start,
    )


def run(
    config: ml_collections.ConfigDict,
    *,
    repeats: int = 5,
    warmup: int = 2,
    steps_per_repeat: int = 1,
    with_input: bool = False,
    plan: cpu_autotune.Plan | None = None,
    plan_name: str = "default",
) -> dict[str, Any]:
    """Benchmark the train step for ``config``; returns the JSON-able result dict.

    ``plan``'s convolution choices are used here; its XLA flags must already be in effect
    (``cpu_autotune.apply_flags`` before the backend starts, as ``main`` does).
    """
    if repeats < 1 or warmup < 0 or steps_per_repeat < 1:
        raise ValueError("need repeats >= 1, warmup >= 0 and steps_per_repeat >= 1")
    devices = jax.device_count()
    if config.batch_size % devices:
        raise ValueError(f"batch_size {config.batch_size} does not split over {devices} devices")
    step = build_step(config, plan)
    experiment, state, batch = step.experiment, step.state, step.batch
    num_classes, num_examples = step.num_classes, step.num_examples
    lowered, compiled, compile_s = step.lowered, step.compiled, step.compile_s
    device_flops = _cost_flops(compiled)
    model_flops = _model_flops(config, lowered, state, batch, num_classes, num_examples)

    def repeat_batch() -> Iterator[Any]:
        while True:
            yield batch

    state, times = _time_repeats(
        compiled,
        state,
        repeat_batch(),
        warmup=warmup,
        repeats=repeats,
        steps=steps_per_repeat,
    )
    step_s = statistics.median(times)
    images_per_sec = config.batch_size / step_s

    device = jax.local_devices()[0]
    backend = jax.default_backend()
    dtype = str(jnp.dtype(config.model.dtype))
    per_image = devices / config.batch_size
    flops_per_image = None if device_flops is None else device_flops * per_image
    model_flops_per_image = None if model_flops is None else model_flops * per_image
    if backend == "cpu":
        # All host "devices" share the same cores, so the peak is one process-wide figure.
        peak_flops = measured_cpu_peak_flops()
    else:
        per_chip = spec_peak_flops(device, dtype)
        peak_flops = None if per_chip is None else per_chip * devices
    mfu = None
    if model_flops_per_image is not None and peak_flops:
        mfu = model_flops_per_image * images_per_sec / peak_flops

    result: dict[str, Any] = {
        "images_per_sec": images_per_sec,
        "step_ms": 1e3 * step_s,
        "step_ms_min": 1e3 * min(times),
        "compile_s": compile_s,
        "flops_per_image": flops_per_image,
        "model_flops_per_image": model_flops_per_image,
        "achieved_tflops": None
        if model_flops_per_image is None
        else model_flops_per_image * images_per_sec / 1e12,
        "peak_tflops": None if not peak_flops else peak_flops / 1e12,
        "mfu": mfu,
        "peak_memory_bytes": _peak_memory_bytes(),
        "devices": devices,
        "device_kind": device.device_kind,
        "backend": backend,
        "dtype": dtype,
        "conv_impl": train.resolve_conv_impl(config.model.conv_impl),
        "encoder": config.model.encoder,
        "stem": config.model.stem,
        "batch_size": config.batch_size,
        "image_size": config.data.image_size,
        "source_size": step.source_size,  # the train step's input size
        "repeats": repeats,
        "steps_per_repeat": steps_per_repeat,
        "plan": plan_report(
            experiment, config.data.image_size, config.batch_size // devices, plan_name, plan
        ),
    }
    if with_input:
        info = train_data.train_dataset_info(config)
        if info.num_classes > num_classes:
            raise ValueError(
                f"{config.data.dataset} has {info.num_classes} classes but the probe has "
                f"{num_classes}; set --config.bench.num_classes"
            )
        host_batches = train_data.host_train_batches(config)
        device_batches = parallel.prefetch_to_device(host_batches, size=2)
        # At least 2 warm-up steps: the first pulls fill tf.data's buffers and the prefetch queue.
        state, input_times = _time_repeats(
            compiled,
            state,
            device_batches,
            warmup=max(warmup, 2),
            repeats=repeats,
            steps=steps_per_repeat,
        )
        end_to_end = config.batch_size / statistics.median(input_times)
        result["dataset"] = config.data.dataset
        result["end_to_end_images_per_sec"] = end_to_end
        result["end_to_end_ratio"] = end_to_end / images_per_sec
    del state
    return result


def tuned_plan(
    config: ml_collections.ConfigDict, budget_s: float = cpu_autotune.DEFAULT_BUDGET_S
) -> tuple[cpu_autotune.Plan | None, float]:
    """(the plan launch.py would train ``config`` with, seconds it took here: ~0 when cached)."""
    start = time.perf_counter()
    spec = train.cpu_tune_spec(config)
    plan = None if spec is None else cpu_autotune.plan_for(spec, budget_s=budget_s)
    return plan, time.perf_counter() - start


def _compare_plans(argv: list[str], rounds: int, budget_s: float) -> dict[str, Any]:
    """Default and tuned plan in alternating child processes (flags are process-global)."""
    config = _flags()["config"].value
    _, tune_wall_s = tuned_plan(config, budget_s)  # measured once here, read from the cache below
    base = [a for a in argv[1:] if not a.startswith(("--plan", "--rounds"))]
    runs: dict[str, list[dict[str, Any]]] = {"default": [], "tuned": []}
    for _ in range(rounds):
        for name in runs:
            process = subprocess.run(
                [sys.executable, "-m", "byol_jax.bench", *base, f"--plan={name}"],
                capture_output=True,
                text=True,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            )
            if process.returncode != 0:
                tail = process.stderr.strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"bench --plan={name} failed: {tail[0]}")
            runs[name].append(json.loads(process.stdout.strip().splitlines()[-1]))
    median = {
        name: statistics.median(r["images_per_sec"] for r in results)
        for name, results in runs.items()
    }
    return {
        "default": runs["default"][-1],
        "tuned": runs["tuned"][-1],
        "images_per_sec": {name: [r["images_per_sec"] for r in rs] for name, rs in runs.items()},
        "speedup": median["tuned"] / median["default"],
        "rounds": rounds,
        "tuning_wall_s": tune_wall_s,
        "cpu_model": cpu_autotune.cpu_model(),
        "load_average": os.getloadavg(),
    }


def main(argv: list[str]) -> None:
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    flags_ = _flags()
    config = flags_["config"].value
    plan_name = flags_["plan"].value
    budget_s = flags_["tune_budget_s"].value
    if plan_name == "both":
        print(json.dumps(_compare_plans(sys.argv, flags_["rounds"].value, budget_s)), flush=True)
        return
    plan, tune_wall_s = None, 0.0
    if plan_name == "tuned":
        plan, tune_wall_s = tuned_plan(config, budget_s)
        if plan is not None:
            cpu_autotune.apply_flags(plan)  # before run() starts the backend
    result = run(
        config,
        repeats=flags_["repeats"].value,
        warmup=flags_["warmup"].value,
        steps_per_repeat=flags_["steps_per_repeat"].value,
        with_input=flags_["input"].value,
        plan=plan,
        plan_name=plan_name,
    )
    result["plan"]["tuning_wall_s"] = tune_wall_s
    print(json.dumps(result), flush=True)


_FLAG_HOLDERS: dict[str, Any] = {}


def _flags() -> dict[str, Any]:
    """Define the command-line flags once (only when run as a program)."""
    if not _FLAG_HOLDERS:
        from absl import flags
        from ml_collections import config_flags

        _FLAG_HOLDERS["config"] = config_flags.DEFINE_config_file(
            "config", None, "Experiment config file, optionally with ':arg'."
        )
        _FLAG_HOLDERS["repeats"] = flags.DEFINE_integer("repeats", 5, "Timed repeats.")
        _FLAG_HOLDERS["warmup"] = flags.DEFINE_integer("warmup", 2, "Untimed steps first.")
        _FLAG_HOLDERS["steps_per_repeat"] = flags.DEFINE_integer(
            "steps_per_repeat", 1, "Steps per timed repeat (one wait per repeat)."
        )
        _FLAG_HOLDERS["input"] = flags.DEFINE_bool(
            "input", False, "Also time the real input pipeline + step (end-to-end images/s)."
        )
        _FLAG_HOLDERS["plan"] = flags.DEFINE_enum(
            "plan",
            "tuned",
            ["tuned", "default", "both"],
            "CPU plan: tuned (measured on this machine, cached), default (untuned), or both "
            "(alternating child processes, one JSON line with the speedup).",
        )
        _FLAG_HOLDERS["rounds"] = flags.DEFINE_integer(
            "rounds", 1, "--plan=both: alternating runs of each plan."
        )
        _FLAG_HOLDERS["tune_budget_s"] = flags.DEFINE_float(
            "tune_budget_s", cpu_autotune.DEFAULT_BUDGET_S, "Wall-time bound of the tuning."
        )
        flags.mark_flag_as_required("config")
    return _FLAG_HOLDERS


if __name__ == "__main__":
    from absl import app

    _flags()
    app.run(main)
