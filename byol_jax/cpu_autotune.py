"""CPU autotuning: XLA CPU flags and per-shape convolution choices, measured on this machine.

On XLA:CPU the fastest way to run a convolution (XLA's own, or ``models.conv_matmul``'s im2col
+ one matrix product) depends on the CPU, the jax version, the XLA flags and the shape; so does
whether convolutions should go through YNNPACK (the default) or XLA's other kernels
(``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``). Like cuDNN's and XLA's GPU
autotuners, ``plan_for`` times the candidates for the configuration at hand and keeps the fastest:

* Flags are process-global and read when JAX starts its backend, so each candidate flag set is
  timed in a short-lived worker process (``python -m byol_jax.cpu_autotune --worker``).
* The worker lists the encoder's convolutions (shape, stride, dtype, per-device batch), and for
  each distinct one times XLA's convolution against ``conv_matmul`` (forward + backward, jitted,
  interleaved, best of a few runs), largest first, until its share of the time budget is spent.
* The flag set with the smallest total convolution time (summed over every convolution the
  network runs, on shapes all workers measured) wins; non-default flags must win by
  ``FLAG_MARGIN``. Its per-shape choices become the ``models.ConvPlan``; a shape leaves the
  untuned rule only when the other implementation is faster by ``CONV_MARGIN``.

Plans are cached as JSON per (CPU model, core count, jax/jaxlib version, network shapes, batch,
dtype, candidate flags) under ``$XDG_CACHE_HOME/byol_jax/cpu_autotune`` (default
``~/.cache/byol_jax/cpu_autotune``), so later runs start at once; delete that folder to re-tune.
Both implementations compute the same function (tests compare outputs and gradients), so a plan
only changes speed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

# Bump when the measurement changes, so that old cached plans are not reused.
TUNER_VERSION = 2  # 2: per-shape choices leave the untuned rule only by CONV_MARGIN
DEFAULT_FLAGS = ""
# YNNPACK runs individual convolutions by default in jaxlib 0.10; this routes them to XLA's
# other kernels (2.3x faster for setup B on a 2-core AMD EPYC; setup A 20% slower with it on a
# Sapphire Rapids, 4% faster on another 2-core Intel Xeon).
FLAG_CANDIDATES: tuple[str, ...] = (
    DEFAULT_FLAGS,
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
)
DEFAULT_BUDGET_S = 60.0
# A non-default flag set must be this much faster in total: per-layer sums from separate
# processes on a loaded machine are noisy, and the default is what everyone else runs.
FLAG_MARGIN = 0.05
# Likewise per convolution, against the untuned rule (``models.native_conv_is_faster``): timed
# one at a time, im2col won a few percent on the 28 px stem of the default config, yet the whole
# step ran 4% slower with it (2-core Intel Xeon), so small isolated wins are not trusted.
CONV_MARGIN = 0.10
_WORKER_MIN_S = 10.0  # a worker spends ~3-8 s importing jax + flax before it times anything


@dataclasses.dataclass(frozen=True)
class TuneSpec:
    """What the plan depends on besides the machine: the encoder, its input and the batch."""

    encoder: str
    width: int
    base_width: int | None
    stem: str
    dtype: str
    image_size: int
    batch_size: int  # global; the worker divides by its device count


@dataclasses.dataclass(frozen=True)
class Plan:
    """A tuned (or cached) choice: the XLA flags to start with and the per-shape conv plan."""

    xla_flags: str
    convs: tuple[tuple[tuple[int, int, int, int, int, int, str], str], ...]
    tuning_s: float  # seconds the measurement took (when it was made, for a cached plan)
    source: str  # "measured" or "cache"
    cache_file: str | None = None
    flag_totals_ms: Mapping[str, float] = dataclasses.field(default_factory=dict)
    complete: bool = True  # False when the budget ran out before every shape was timed

    def summary(self) -> dict[str, Any]:
        """JSON-able description (flags, per-layer choices, timing) for logs and the bench."""
        return {
            "xla_flags": self.xla_flags,
            "convs": [
                {
                    "height": k[0],
                    "width": k[1],
                    "in": k[2],
                    "out": k[3],
                    "kernel": k[4],
                    "stride": k[5],
                    "dtype": k[6],
                    "impl": impl,
                }
                for k, impl in self.convs
            ],
            "tuning_s": self.tuning_s,
            "source": self.source,
            "cache_file": self.cache_file,
            "flag_totals_ms": dict(self.flag_totals_ms),
            "complete": self.complete,
        }


# --------------------------------------------------------------------------- timing


def time_candidates(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    min_runs: int = 2,
    max_runs: int = 5,
    budget_s: float = 1.0,
    block: Callable[[Any], Any] = lambda out: out,
) -> dict[str, float]:
    """Best wall time (s) of each candidate: one untimed call (compile), then interleaved runs.

    Runs alternate between candidates, so that a change in background load hits all of them;
    at least ``min_runs`` each, more while ``budget_s`` lasts (up to ``max_runs``).
    """
    for run in candidates.values():
        block(run())
    best = {name: float("inf") for name in candidates}
    start = time.perf_counter()
    for index in range(max_runs):
        if index >= min_runs and time.perf_counter() - start > budget_s:
            break
        for name, run in candidates.items():
            tick = time.perf_counter()
            block(run())
            best[name] = min(best[name], time.perf_counter() - tick)
    return best


def fastest(times: Mapping[str, float], *, default: str | None = None, margin: float = 0.0) -> str:
    """The candidate with the smallest time; another beats ``default`` only by > ``margin``."""
    winner = min(times, key=times.get)
    if default in times and times[winner] >= times[default] * (1.0 - margin):
        return default
    return winner


# --------------------------------------------------------------------------- the worker side


def encoder_conv_shapes(encoder: Any, image_size: int, batch: int) -> dict[tuple, int]:
    """Every convolution the encoder runs on a ``batch`` of images: plan key → occurrences."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from byol_jax import models

    found: dict[tuple, int] = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, models.Conv) and context.method_name == "__call__":
            x = args[0]
            key = models.conv_key(
                *x.shape[1:], module.features, module.kernel_size, module.stride, module.dtype
            )
            found[key] = found.get(key, 0) + 1
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(encoder.init, jax.random.key(0), x)
    # init traces each module once; the step's forward pass runs each convolution once per view.
    return found


def conv_candidates(key: tuple, batch: int) -> dict[str, Callable[[], Any]]:
    """Jitted forward + backward of one convolution, as XLA's convolution and as conv_matmul."""
    import jax

    from byol_jax import models

    height, width, cin, cout, k, stride, dtype = key
    rng = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(rng[0], (batch, height, width, cin), dtype)
    kernel = (jax.random.normal(rng[1], (k, k, cin, cout)) * 0.05).astype(dtype)
    out_shape = jax.eval_shape(lambda a, b: models.native_conv(a, b, stride), x, kernel).shape
    cotangent = jax.random.normal(rng[2], out_shape, dtype)
    # The stem's input is the image: the step needs no gradient for it.
    needs_input_grad = cin != 3

    def make(conv: Callable) -> Callable[[], Any]:
        def fwd_bwd(x, kernel, cotangent):
            y, vjp = jax.vjp(lambda a, b: conv(a, b, stride), x, kernel)
            dx, dk = vjp(cotangent)
            return (y, dx, dk) if needs_input_grad else (y, dk)

        # Compiled ahead of time, so that compiles can run in threads before anything is timed.
        compiled = jax.jit(fwd_bwd).lower(x, kernel, cotangent).compile()
        return lambda: compiled(x, kernel, cotangent)

    return {"native": make(models.native_conv), "matmul": make(models.conv_matmul)}


def _conv_flops(key: tuple, batch: int) -> int:
    height, width, cin, cout, k, stride, _ = key
    return batch * (height // stride) * (width // stride) * k * k * cin * cout


def run_worker(spec: TuneSpec, deadline: float, out: TextIO) -> dict[str, Any]:
    """Time both implementations of every convolution of ``spec`` under this process's flags.

    ``deadline`` is a ``time.time()`` value: shapes not compiled and timed by then are left out
    (largest first, so what is left out matters least). Writes ``progress DONE TOTAL`` lines to
    ``out`` as it goes; returns the per-shape times.
    """
    import jax

    from byol_jax import models

    backend = jax.default_backend()
    if backend != "cpu":
        return {"backend": backend}
    devices = jax.device_count()
    batch = max(1, spec.batch_size // devices)
    encoder = models.build_encoder(
        spec.encoder,
        width=spec.width,
        base_width=spec.base_width,
        stem=spec.stem,
        dtype=jax.numpy.dtype(spec.dtype),
        conv_impl="matmul",
    )
    shapes = encoder_conv_shapes(encoder, spec.image_size, batch)
    order = sorted(shapes, key=lambda k: -_conv_flops(k, batch) * shapes[k])
    total = 2 * len(order)  # progress steps: compile all, then time all
    print(f"progress 0 {total}", file=out, flush=True)
    # Compiling dominates (seconds per candidate vs milliseconds per run): compile in two threads
    # first, largest shapes first, within most of the time left; then time them.
    compile_deadline = time.time() + 0.8 * (deadline - time.time())
    compiled = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    futures = [pool.submit(conv_candidates, key, batch) for key in order]
    for key, future in zip(order, futures, strict=True):
        try:
            candidates = future.result(timeout=max(compile_deadline - time.time(), 0))
        except concurrent.futures.TimeoutError:
            break
        compiled.append((key, candidates))
        print(f"progress {len(compiled)} {total}", file=out, flush=True)
    # Out of time: drop what has not started; a compile still running cannot be stopped (the
    # worker process exits without waiting for it).
    pool.shutdown(wait=False, cancel_futures=True)
    measured = []
    for key, candidates in compiled:
        if measured and time.time() > deadline:
            break
        times = time_candidates(candidates, block=jax.block_until_ready)
        measured.append({"key": list(key), "count": shapes[key], "times": times})
        print(f"progress {len(order) + len(measured)} {total}", file=out, flush=True)
    return {
        "backend": backend,
        "devices": devices,
        "batch": batch,
        "num_shapes": len(order),
        "measured": measured,
    }


# --------------------------------------------------------------------------- the parent side


def choose_plan(
    results: Mapping[str, Mapping[str, Any]],
    *,
    margin: float = FLAG_MARGIN,
    conv_margin: float = CONV_MARGIN,
) -> tuple[str, tuple, dict[str, float], bool]:
    """(flags, conv plan, total ms per flag set, complete) from the workers' per-shape times.

    Flag sets are compared on the convolutions every worker measured, each at its best
    implementation, weighted by how often the network runs it. Each shape then keeps the
    untuned rule's implementation unless the other one is faster by ``conv_margin``.
    """
    common = None
    for result in results.values():
        keys = {tuple(m["key"]) for m in result["measured"]}
        common = keys if common is None else common & keys
    totals = {}
    for flags, result in results.items():
        total = 0.0
        for m in result["measured"]:
            if tuple(m["key"]) in common:
                total += m["count"] * min(m["times"].values())
        totals[flags] = 1e3 * total
    default = DEFAULT_FLAGS if DEFAULT_FLAGS in totals else None
    flags = fastest(totals, default=default, margin=margin)
    from byol_jax import models

    convs = []
    for m in results[flags]["measured"]:
        key = tuple(m["key"])
        untuned = models.cpu_conv_choice(key)
        convs.append((key, fastest(m["times"], default=untuned, margin=conv_margin)))
    complete = all(len(r["measured"]) == r["num_shapes"] for r in results.values())
    return flags, tuple(convs), totals, complete


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for cache keys and reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> str:
    """Where plans are cached: ``$XDG_CACHE_HOME/byol_jax/cpu_autotune`` or ``~/.cache/...``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "byol_jax", "cpu_autotune")


def cache_key(spec: TuneSpec, flag_sets: Sequence[str]) -> dict[str, Any]:
    """Everything a plan depends on; its hash names the cache file."""
    import jax
    import jaxlib

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "tuner_version": TUNER_VERSION,
        "cpu_model": cpu_model(),
        "cores": cores,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "jax_platforms": os.environ.get("JAX_PLATFORMS", ""),
        "spec": dataclasses.asdict(spec),
        "flag_sets": list(flag_sets),
    }


def _cache_file(key: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), f"{digest}.json")


def _plan_from_json(data: Mapping[str, Any], source: str, path: str | None) -> Plan | None:
    if data.get("xla_flags") is None:
        return None  # Not a CPU backend: nothing to tune.
    return Plan(
        xla_flags=data["xla_flags"],
        convs=tuple((tuple(k), impl) for k, impl in data["convs"]),
        tuning_s=data["tuning_s"],
        source=source,
        cache_file=path,
        flag_totals_ms=data.get("flag_totals_ms", {}),
        complete=data.get("complete", True),
    )


def _run_worker_process(
    spec: TuneSpec, flags: str, deadline: float, on_progress: Callable[[int, int], None]
) -> dict[str, Any]:
    env = dict(os.environ, XLA_FLAGS=flags, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)  # time what a real run compiles
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen(
        [sys.executable, "-m", "byol_jax.cpu_autotune", "--worker", repr(deadline)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )
    process.stdin.write(json.dumps(dataclasses.asdict(spec)))
    process.stdin.close()
    result = None
    for line in process.stdout:
        if line.startswith("progress "):
            done, total = map(int, line.split()[1:3])
            on_progress(done, total)
        elif line.startswith("result "):
            result = json.loads(line[len("result ") :])
    stderr = process.stderr.read()
    process.wait()
    if process.returncode != 0 or result is None:
        last = stderr.strip().splitlines()[-1:] or [f"exit code {process.returncode}"]
        raise RuntimeError(f"autotune worker ({flags or 'default flags'}) failed: {last[0]}")
    return result


class _ProgressLine:
    """One console line: rewritten in place on a terminal, printed once at the end otherwise."""

    def __init__(self, stream: TextIO | None):
        self.stream = stream
        self.live = bool(stream) and hasattr(stream, "isatty") and stream.isatty()

    def update(self, text: str) -> None:
        if self.live:
            self.stream.write(f"\r{text}\033[K")
            self.stream.flush()

    def finish(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(f"\r{text}\033[K\n" if self.live else f"{text}\n")
            self.stream.flush()


def tune(
    spec: TuneSpec,
    *,
    flag_sets: Sequence[str] = FLAG_CANDIDATES,
    budget_s: float = DEFAULT_BUDGET_S,
    progress: TextIO | None = None,
) -> tuple[dict[str, Any] | None, float]:
    """Measure ``spec`` under every flag set; (cache record or None off-CPU, seconds taken)."""
    start = time.perf_counter()
    line = _ProgressLine(progress)
    results: dict[str, dict[str, Any]] = {}
    for index, flags in enumerate(flag_sets):
        remaining = budget_s - (time.perf_counter() - start)
        # Each worker gets an equal share of what is left, at least enough to time something.
        deadline = time.time() + max(remaining / (len(flag_sets) - index), _WORKER_MIN_S)

        def on_progress(done: int, total: int, index: int = index) -> None:
            line.update(
                f"cpu autotune: flag set {index + 1}/{len(flag_sets)}, "
                f"{done}/{total} convolutions compiled + timed "
                f"({time.perf_counter() - start:.0f} s of <= {budget_s:.0f} s)"
            )

        result = _run_worker_process(spec, flags, deadline, on_progress)
        if result["backend"] != "cpu":
            line.finish(f"cpu autotune: skipped ({result['backend']} backend)")
            return {"xla_flags": None}, time.perf_counter() - start
        results[flags] = result
    flags, convs, totals, complete = choose_plan(results)
    seconds = time.perf_counter() - start
    native = sum(impl == "native" for _, impl in convs)
    line.finish(
        f"cpu autotune: {seconds:.0f} s; XLA flags {flags or '(default)'}; {native} of "
        f"{len(convs)} convolution shapes on XLA's convolution, the rest im2col + matmul"
        + ("" if complete else " (budget ran out: untimed shapes keep the default)")
    )
    record = {
        "xla_flags": flags,
        "convs": [[list(k), impl] for k, impl in convs],
        "tuning_s": seconds,
        "flag_totals_ms": totals,
        "complete": complete,
    }
    return record, seconds


def plan_for(
    spec: TuneSpec,
    *,
    flag_sets: Sequence[str] = FLAG_CANDIDATES,
    budget_s: float = DEFAULT_BUDGET_S,
    progress: TextIO | None = sys.stderr,
    use_cache: bool = True,
) -> Plan | None:
    """The plan for ``spec`` on this machine: from the cache, else measured and cached.

    None when the backend is not the CPU. Must run before this process starts JAX's backend
    if its flags are to be applied (``apply_flags``).
    """
    key = cache_key(spec, flag_sets)
    path = _cache_file(key)
    if use_cache and os.path.exists(path):
        try:
            with open(path) as f:
                return _plan_from_json(json.load(f)["plan"], "cache", path)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # A damaged cache entry is measured again.
    record, _ = tune(spec, flag_sets=flag_sets, budget_s=budget_s, progress=progress)
    if record["xla_flags"] is not None and not record["convs"]:
        # Nothing timed within the budget (a heavily loaded machine): use the default now and
        # measure again next time rather than cache an empty plan.
        return _plan_from_json(record, "measured", None)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"key": key, "plan": record}, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        path = None  # Read-only home: the plan still applies to this run.
    return _plan_from_json(record, "measured", path)


def user_xla_flags() -> str | None:
    """XLA_FLAGS as the user set them (None when unset or empty): they always win."""
    return os.environ.get("XLA_FLAGS", "").strip() or None


def apply_flags(plan: Plan) -> None:
    """Start this process's XLA backend with the plan's flags (before JAX initializes it)."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError("cpu_autotune.apply_flags must run before JAX initializes its backend")
    if user_xla_flags() is None and plan.xla_flags:
        os.environ["XLA_FLAGS"] = plan.xla_flags


def _worker_main(argv: Sequence[str]) -> None:
    deadline = float(argv[argv.index("--worker") + 1])
    spec = TuneSpec(**json.loads(sys.stdin.read()))
    result = run_worker(spec, deadline, sys.stdout)
    print("result " + json.dumps(result), flush=True)
    sys.stderr.flush()
    os._exit(0)  # without waiting for a compile the deadline cut off


if __name__ == "__main__":
    if "--worker" not in sys.argv:
        raise SystemExit(
            "usage: python -m byol_jax.cpu_autotune --worker DEADLINE_EPOCH_S < spec.json"
        )
    _worker_main(sys.argv)
