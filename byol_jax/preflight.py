"""Accelerator preflight: compile the real train step for a TPU/GPU this machine does not have.

    python -m byol_jax.preflight --config=configs/imagenet.py --target=tpu:v5e:4x4 \
        [--config.key=value ...] [--step=train|linear_eval] [--max_batch] [--fast]

The train step is exactly the one training runs: ``train.build_experiment`` (convolutions
resolved for the target's backend, the config's dtype) → ``parallel.map_step`` (state donated),
``pmap``-ed over the target's compile-only devices (``accelerators.topology_devices``) with the
per-chip batch ``batch_size / chips``. Nothing is executed; the host only traces and compiles,
so it needs no accelerator and forces ``JAX_PLATFORMS=cpu`` for itself.

One JSON line per compile: target, chips, global/per-chip batch, per-chip memory from XLA's
buffer assignment (``arguments``, ``outputs``, ``temporaries``, ``aliased`` = donated state
reused for the new state, ``generated_code``; ``total = arguments + outputs - aliased +
temporaries``) against the chip's memory (``usable`` = 75% of it on GPU, JAX's default
preallocation), ``fits``, FLOPs per image and the hand count (``flop_count``), compile seconds.
FLOPs: on TPU from the compiled program's cost analysis; the CUDA plugin has none, so on GPU
they come from the cost analysis of the HLO before optimization (``flops_source`` says which).
A TPU compile that runs out of HBM fails inside XLA; that is reported as ``fits: false``.

``--max_batch`` searches the largest per-chip batch (a multiple of ``--batch_multiple``) that
fits: two compiles give a linear fit of memory against batch, whose prediction seeds a
bisection over further compiles (usually 2-4 more). ``--step=linear_eval`` compiles the linear
evaluation's training call instead (frozen encoder, ``config.evals.linear.batch_size``);
``--step=embed`` the evaluators' feature extraction (eval view + encoder in inference mode,
``config.data.eval_batch_size`` per process); ``--step=knn`` one call of the sharded kNN
(``evaluators.knn.sharded_knn``: a bank of ImageNet train size split over the chips, its
``chunk_size`` queries per call, ``config.evals.knn.k``). The per-chip batch of ``knn`` is its
queries per chip.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from byol_jax import accelerators, features, flop_count, models, parallel, train, train_data
from byol_jax.evaluators import classifier as linear_classifier
from byol_jax.evaluators import knn as knn_eval

DEFAULT_NUM_CLASSES = 1000
DEFAULT_NUM_TRAIN_EXAMPLES = 1_281_167  # ImageNet train; only shapes the LR/EMA schedules
# evaluators.linear.linear_evaluation's default: steps scanned inside one compiled call.
LINEAR_EVAL_STEPS_PER_CALL = 50
# Backend optimizations off: compiles ~2x faster; buffer assignment (the memory figures) is
# the same (checked for the smoke and ResNet-50 steps on TPU and GPU, see the README).
FAST_OPTIONS = {"xla_backend_optimization_level": 0}


def _chips_per_host() -> int:
    # eval_batch_size is per process; a TPU host drives 4 chips (v4/v5e/v5p/v6e hosts: 4 or 8).
    return 4


class PreflightError(ValueError):
    """Bad input to the preflight; the message is one line for the user."""


def _replicated(tree: Any, count: int) -> Any:
    """Abstract per-device copies: [count, ...] of every leaf, as pmap's arguments."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((count, *x.shape), x.dtype), tree)


def abstract_state(experiment: train.Experiment, seed: int) -> Any:
    """The train state's shapes and dtypes, without computing it (ResNet-200 2x included)."""
    return jax.eval_shape(lambda: train.initial_state(experiment, seed))


def train_step_program(
    config: ml_collections.ConfigDict,
    devices: Sequence[Any],
    backend: str,
    per_chip_batch: int,
    *,
    num_classes: int = DEFAULT_NUM_CLASSES,
    num_train_examples: int = DEFAULT_NUM_TRAIN_EXAMPLES,
) -> tuple[Callable, tuple[Any, ...]]:
    """The mapped train step training runs, and abstract (state, batch) for ``devices``."""
    experiment = train.build_experiment(
        config, num_classes=num_classes, num_train_examples=num_train_examples, backend=backend
    )
    # Training's host size and batch format (ImageNet: whole images at train_source_size with
    # each image's valid size, so the masked crop sampler is compiled too).
    count = len(devices)
    size, with_valid = train_data.train_source_shape(config)
    state = _replicated(abstract_state(experiment, config.seed), count)
    batch = {
        "image": jax.ShapeDtypeStruct((count, per_chip_batch, size, size, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((count, per_chip_batch), jnp.int32),
    }
    if with_valid:
        batch["valid"] = jax.ShapeDtypeStruct((count, per_chip_batch, 2), jnp.int32)
    return parallel.map_step(experiment.step_fn, devices=devices), (state, batch)


def linear_eval_program(
    config: ml_collections.ConfigDict,
    devices: Sequence[Any],
    backend: str,
    per_chip_batch: int,
    *,
    num_classes: int = DEFAULT_NUM_CLASSES,
    steps_per_call: int = LINEAR_EVAL_STEPS_PER_CALL,
) -> tuple[Callable, tuple[Any, ...]]:
    """The linear evaluation's mapped training call (``steps_per_call`` steps) and its inputs.

    Built from ``evaluators.classifier``'s pieces (``Spec``, ``init_state``, ``train_chunk``) the
    way ``linear_evaluation`` builds them, on the pretrained online encoder's shapes.
    """
    experiment = train.build_experiment(
        config,
        num_classes=num_classes,
        num_train_examples=DEFAULT_NUM_TRAIN_EXAMPLES,
        backend=backend,
    )
    encoder = experiment.online_net.encoder
    state = abstract_state(experiment, config.seed)
    variables = features.encoder_variables(state)
    spec = linear_classifier.Spec(
        head=nn.Dense(num_classes, kernel_init=nn.initializers.zeros, name="head"),
        encoder=encoder,
        image_size=int(config.data.image_size),
        crop_fraction=float(config.data.eval_crop_fraction),
        mean=tuple(float(m) for m in config.data.mean),
        std=tuple(float(s) for s in config.data.std),
        augment=bool(config.evals.linear.augment),
        fine_tune=False,
        weight_decay=0.0,
        seed=int(config.seed),
        top_k=min(5, num_classes),
    )
    dim = models.embedding_dim(encoder)
    classifier = jax.eval_shape(
        lambda v: linear_classifier.init_state(spec, v, dim, peak_lr=0.1, total_steps=1), variables
    )
    count, size, k = len(devices), config.data.source_size, steps_per_call
    chunk = {
        "inputs": jax.ShapeDtypeStruct((count, k, per_chip_batch, size, size, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((count, k, per_chip_batch), jnp.int32),
        "valid": jax.ShapeDtypeStruct((count, k), jnp.bool_),
    }
    mapped = parallel.map_function(
        functools.partial(linear_classifier.train_chunk, spec=spec),
        donate_argnums=(0,),
        devices=devices,
    )
    return mapped, (_replicated(classifier, count), chunk)


def embed_program(
    config: ml_collections.ConfigDict,
    devices: Sequence[Any],
    backend: str,
    per_chip_batch: int,
    *,
    num_classes: int = DEFAULT_NUM_CLASSES,
) -> tuple[Callable, tuple[Any, ...]]:
    """The evaluators' feature extraction (``features.embed_split``'s mapped call)."""
    experiment = train.build_experiment(
        config, num_classes=num_classes, num_train_examples=DEFAULT_NUM_TRAIN_EXAMPLES,
        backend=backend,
    )  # fmt: skip
    encoder = experiment.online_net.encoder
    state = abstract_state(experiment, config.seed)
    variables = features.encoder_variables(state)
    view = train_data.eval_view(config)

    def encode(v: Any, images: jax.Array) -> jax.Array:
        return encoder.apply(v, features.eval_views(images, view), train=False)

    count, size = len(devices), config.data.source_size
    images = jax.ShapeDtypeStruct((count, per_chip_batch, size, size, 3), jnp.uint8)
    mapped = parallel.map_function(encode, devices=devices)
    return mapped, (_replicated(variables, count), images)


def knn_program(
    config: ml_collections.ConfigDict,
    devices: Sequence[Any],
    backend: str,
    per_chip_batch: int,
    *,
    num_classes: int = DEFAULT_NUM_CLASSES,
    bank_examples: int = DEFAULT_NUM_TRAIN_EXAMPLES,
) -> tuple[Callable, tuple[Any, ...]]:
    """One call of the sharded kNN: ``per_chip_batch`` queries per chip against the bank."""
    experiment = train.build_experiment(
        config, num_classes=num_classes, num_train_examples=DEFAULT_NUM_TRAIN_EXAMPLES,
        backend=backend,
    )  # fmt: skip
    dim = models.embedding_dim(experiment.online_net.encoder)
    count = len(devices)
    rows = -(-bank_examples // count)
    options = config.evals.knn
    fn = functools.partial(
        knn_eval._sharded_chunk,
        ks=(int(options.get("k", knn_eval.DEFAULT_K)),),
        num_classes=num_classes,
        recall_target=float(options.get("recall_target", 1.0)),
    )
    mapped = parallel.map_function(fn, in_axes=(0, 0, 0, 0, None), devices=devices)
    args = (
        jax.ShapeDtypeStruct((count, rows, dim), jnp.float32),
        jax.ShapeDtypeStruct((count, rows), jnp.int32),
        jax.ShapeDtypeStruct((count, per_chip_batch, dim), jnp.float32),
        jax.ShapeDtypeStruct((count, per_chip_batch), jnp.int32),
        jax.ShapeDtypeStruct((), jnp.float32),
    )
    return mapped, args


STEPS = ("train", "linear_eval", "embed", "knn")


def _memory(compiled: Any) -> dict[str, int]:
    stats = compiled.memory_analysis()
    memory = {
        "arguments": int(stats.argument_size_in_bytes),
        "outputs": int(stats.output_size_in_bytes),
        "temporaries": int(stats.temp_size_in_bytes),
        "aliased": int(stats.alias_size_in_bytes),
        "generated_code": int(stats.generated_code_size_in_bytes),
    }
    memory["total"] = (
        memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temporaries"]
    )
    return memory


def _flops(analysis: Any) -> float | None:
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


def _unoptimized_cost(lowered: Any) -> Any:
    """XLA's cost analysis of the HLO before optimization, run by the host's CPU client.

    ``Lowered.cost_analysis()`` refuses plugin backends (the CUDA plugin); the analysis itself
    is backend-neutral HLO arithmetic. Under pmap this HLO has per-device shapes already.
    """
    try:
        from jax._src import xla_bridge
        from jax._src.lib import _jax

        module = lowered._lowering.hlo().as_hlo_module()
        return _jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module)
    except Exception:  # noqa: BLE001 - private API: a missing estimate is not an error
        return None


def program_flops(lowered: Any, compiled: Any, platform: str) -> tuple[float | None, str]:
    """Per-device FLOPs of one call and where they come from.

    TPU: the compiled program's cost analysis. GPU: the CUDA plugin has none, so the estimate
    is the cost analysis of the HLO before optimization (same arithmetic, before fusion).
    """
    if platform == "tpu":
        flops = _flops(compiled.cost_analysis())
        if flops is not None:
            return flops, "compiled cost analysis"
    return _flops(_unoptimized_cost(lowered)), "pre-optimization HLO cost analysis (estimate)"


def _hand_count(config: ml_collections.ConfigDict, num_classes: int) -> float:
    model = config.model
    encoder = models.build_encoder(
        model.encoder, width=model.width, base_width=model.base_width or None, stem=model.stem
    )
    channels, size = encoder.base_width * encoder.width, config.data.image_size
    macs = flop_count.resnet_macs(encoder.stage_sizes, encoder.block, channels, encoder.stem, size)
    return flop_count.byol_train_flops_per_image(
        encoder_macs=macs,
        stem_macs=flop_count.stem_macs(channels, encoder.stem, size),
        embedding_dim=models.embedding_dim(encoder),
        projector_hidden_dim=model.projector_hidden_dim,
        projector_dim=model.projector_dim,
        predictor_hidden_dim=model.predictor_hidden_dim,
        num_classes=num_classes,
    )["total"]


def _out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def compile_once(
    config: ml_collections.ConfigDict,
    target: accelerators.Target,
    devices: Sequence[Any],
    per_chip_batch: int,
    *,
    step: str = "train",
    fast: bool = False,
    num_classes: int = DEFAULT_NUM_CLASSES,
) -> dict[str, Any]:
    """Compile ``step`` for ``target`` at ``per_chip_batch``; the JSON-able report."""
    build = {
        "train": train_step_program,
        "linear_eval": linear_eval_program,
        "embed": embed_program,
        "knn": knn_program,
    }[step]
    chip = target.chip
    usable = int(chip.memory_bytes * chip.usable_fraction)
    report: dict[str, Any] = {
        "target": target.spec,
        "device_kind": devices[0].device_kind,
        "step": step,
        "chips": len(devices),
        "global_batch": per_chip_batch * len(devices),
        "per_chip_batch": per_chip_batch,
        "encoder": config.model.encoder,
        "width": config.model.width,
        "dtype": str(jnp.dtype(config.model.dtype)),
        "conv_impl": train.resolve_conv_impl(config.model.conv_impl, target.platform),
        "image_size": config.data.image_size,
        "fast": fast,
    }
    start = time.perf_counter()
    mapped, args = build(config, devices, target.platform, per_chip_batch, num_classes=num_classes)
    lowered = mapped.lower(*args)
    try:
        compiled = lowered.compile(compiler_options=FAST_OPTIONS if fast else None)
    except Exception as e:  # noqa: BLE001 - only an out-of-memory compile is an answer
        if not _out_of_memory(e):
            raise
        report.update(
            memory=None,
            chip_memory=chip.memory_bytes,
            usable_memory=usable,
            fits=False,
            error=str(e).strip().splitlines()[0][:300],
            compile_s=round(time.perf_counter() - start, 1),
        )
        return report
    compile_s = time.perf_counter() - start
    memory = _memory(compiled)
    flops, source = program_flops(lowered, compiled, target.platform)
    report.update(
        memory=memory,
        memory_gib=round(memory["total"] / accelerators.GIB, 3),
        chip_memory=chip.memory_bytes,
        usable_memory=usable,
        fits=memory["total"] + memory["generated_code"] <= usable,
        flops_per_image=None if flops is None else flops / per_chip_batch,
        flops_source=source,
        compile_s=round(compile_s, 1),
    )
    if step == "train":
        report["flop_count_per_image"] = _hand_count(config, num_classes)
        report["flop_count_method"] = (
            "2 x multiply-adds of convs + dense layers x (8 encoder+projector, "
            "6 predictor, 2 probe) forward-equivalents"
        )
    report["compiled"] = compiled  # removed before printing; kept for HLO inspection
    return report


def _printable(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "compiled"}


def max_batch(
    compile_at: Callable[[int], dict[str, Any]],
    start: int,
    multiple: int = 8,
    limit: int = 1 << 14,
) -> tuple[int | None, list[dict[str, Any]]]:
    """Largest per-chip batch (a multiple of ``multiple``) whose compile fits; all reports.

    Two compiles (``start`` and twice it, or halving until one fits) give a line
    memory = a + b·batch; the batch it predicts to fill the chip, and the next multiple, are
    compiled to bracket the answer, and what is left of the bracket is bisected. No batch is
    compiled twice.
    """
    reports: dict[int, dict[str, Any]] = {}

    def fits(batch: int) -> bool:
        if batch not in reports:
            reports[batch] = compile_at(batch)
        return bool(reports[batch]["fits"])

    def bracket() -> tuple[int | None, int | None]:
        good = [b for b in reports if reports[b]["fits"]]
        bad = [b for b in reports if not reports[b]["fits"]]
        return max(good, default=None), min(bad, default=None)

    def round_down(batch: float) -> int:
        return max(multiple, int(batch) // multiple * multiple)

    batch = round_down(start)
    while not fits(batch) and batch > multiple:  # halve until something fits
        batch = round_down(batch // 2)
    lo, hi = bracket()
    if lo is None:
        return None, [reports[b] for b in sorted(reports)]
    if hi is None:
        fits(min(2 * lo, limit))
    for _ in range(3):  # secant steps: a line through the two largest fitting compiles
        sized = sorted(b for b in reports if reports[b]["fits"] and reports[b].get("memory"))
        lo, hi = bracket()
        if len(sized) < 2 or (hi is not None and hi - lo <= multiple):
            break
        b1, b2 = sized[-2], sized[-1]
        m1, m2 = (reports[b]["memory"]["total"] for b in (b1, b2))
        room = reports[b2]["usable_memory"] - reports[b2]["memory"]["generated_code"]
        if m2 <= m1:
            break
        guess = min(round_down(b2 + (room - m2) * (b2 - b1) / (m2 - m1)), limit)
        if guess <= lo or (hi is not None and guess >= hi) or guess in reports:
            break
        fits(guess)
    lo, hi = bracket()
    if hi is None or hi - lo > multiple:
        fits(min(lo + multiple, limit))  # the prediction is usually right: check one above
    lo, hi = bracket()
    step = multiple
    while hi is None and lo < limit:  # still fitting: grow the step until something fails
        step *= 2
        fits(min(lo + step, limit))
        lo, hi = bracket()
    while hi is not None and hi - lo > multiple:
        fits(round_down((lo + hi) // 2))
        lo, hi = bracket()
    return lo, [reports[b] for b in sorted(reports)]


_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "f32": 4, "s32": 4,
          "u32": 4, "f64": 8, "s64": 8}  # fmt: skip


def _result_bytes(result_type: str) -> int:
    total = 0
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", result_type):
        count = 1
        for dim in filter(None, dims.split(",")):
            count *= int(dim)
        total += count * _BYTES.get(dtype, 4)
    return total


def hlo_summary(compiled: Any) -> dict[str, Any]:
    """What a performance engineer checks first in the optimized HLO of a compiled step.

    Convolutions (XLA's, or cuDNN custom calls on GPU) by output dtype anywhere; all-reduces
    with their total bytes; and, in the entry computation (what runs as separate kernels or
    buffers), fusions, copies (and those of an entry parameter: the donated state or the batch)
    and transposes.
    """
    text = compiled.as_text()
    conv_dtypes: dict[str, int] = {}
    reduces, reduce_bytes = 0, 0
    entry: dict[str, int] = {"fusion": 0, "copy": 0, "transpose": 0}
    # Entry parameters (the donated state and the batch) and copies made of them: a copy of a
    # donated buffer is a second buffer of that size the aliasing was meant to avoid.
    parameters: set[str] = set()
    parameter_copies, parameter_copy_bytes = 0, 0
    in_entry = False
    for line in text.splitlines():
        if line.startswith("ENTRY "):
            in_entry = True
        elif line.startswith("}"):
            in_entry = False
        match = re.match(r"\s*(?:ROOT )?%?([\w.-]+) = (.*?) ([a-z][\w-]*)\((.*)", line)
        if not match:
            continue
        name, result_type, op, rest = match.groups()
        if in_entry and op == "parameter":
            parameters.add(name)
        if in_entry and op == "copy":
            operand = re.search(r"%?([\w.-]+)\)", rest)
            if operand and operand.group(1) in parameters:
                parameter_copies += 1
                parameter_copy_bytes += _result_bytes(result_type)
        if op == "convolution" or (op == "custom-call" and "cudnn$conv" in line):
            dtype = re.match(r"\(?(\w+)\[", result_type)
            if dtype:
                conv_dtypes[dtype.group(1)] = conv_dtypes.get(dtype.group(1), 0) + 1
        if op in ("all-reduce", "all-reduce-start"):
            reduces += 1
            reduce_bytes += _result_bytes(result_type)
        if in_entry:
            for name in entry:
                if op in (name, f"{name}-start"):
                    entry[name] += 1
    return {
        "convolutions_by_output_dtype": conv_dtypes,
        "all_reduces": reduces,
        "all_reduce_bytes": reduce_bytes,
        "entry_fusions": entry["fusion"],
        "entry_copies": entry["copy"],
        "entry_parameter_copies": parameter_copies,
        "entry_parameter_copy_bytes": parameter_copy_bytes,
        "entry_transposes": entry["transpose"],
    }


def run(
    config: ml_collections.ConfigDict,
    target_spec: str,
    *,
    step: str = "train",
    find_max_batch: bool = False,
    batch_multiple: int = 8,
    fast: bool = False,
    num_classes: int = DEFAULT_NUM_CLASSES,
    hlo: bool = False,
    dump_hlo: str | None = None,
    on_report: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Reports (one per compile) for ``config`` on ``target_spec``; the last answers the call.

    With ``find_max_batch`` each compile's report also goes to ``on_report`` as it completes.
    """
    if step not in STEPS:
        raise PreflightError(f"step {step!r} is invalid: one of {list(STEPS)}")
    target = accelerators.parse_target(target_spec)
    global_batch = int(
        {
            "train": config.batch_size,
            "linear_eval": config.evals.linear.batch_size,
            "embed": config.data.eval_batch_size * max(1, target.devices // _chips_per_host()),
            "knn": config.evals.knn.get("chunk_size", 1024),
        }[step]
    )
    if step == "train" and global_batch % target.devices:
        raise PreflightError(
            f"batch_size {global_batch} does not divide over the {target.devices} devices of "
            f"{target.spec}; use a multiple of {target.devices}"
        )
    per_chip = max(1, global_batch // target.devices)
    devices = accelerators.topology_devices(target)

    def compile_at(batch: int) -> dict[str, Any]:
        report = compile_once(
            config, target, devices, batch, step=step, fast=fast, num_classes=num_classes
        )
        if on_report is not None and find_max_batch:
            on_report(_printable(report))  # a search takes many compiles: show each one
        return report

    if not find_max_batch:
        report = compile_at(per_chip)
        if report.get("compiled") is not None:
            if hlo:
                report["hlo"] = hlo_summary(report["compiled"])
            if dump_hlo:
                with open(dump_hlo, "w") as f:
                    f.write(report["compiled"].as_text())
        return [_printable(report)]
    best, reports = max_batch(compile_at, per_chip, batch_multiple)
    summary = {
        "target": target.spec,
        "step": step,
        "encoder": config.model.encoder,
        "width": config.model.width,
        "dtype": str(jnp.dtype(config.model.dtype)),
        "max_per_chip_batch": best,
        "batch_multiple": batch_multiple,
        "compiles": len(reports),
        "compiled_batches": {r["per_chip_batch"]: r["memory_gib"] for r in reports if r["memory"]},
    }
    return [_printable(r) for r in reports] + [summary]


def main(argv: list[str]) -> None:
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # The host only traces and compiles; never let JAX start (or probe for) a local accelerator.
    jax.config.update("jax_platforms", "cpu")
    flags_ = _flags()
    try:
        reports = run(
            flags_["config"].value,
            flags_["target"].value,
            step=flags_["step"].value,
            find_max_batch=flags_["max_batch"].value,
            batch_multiple=flags_["batch_multiple"].value,
            fast=flags_["fast"].value,
            num_classes=flags_["num_classes"].value,
            hlo=flags_["hlo"].value,
            dump_hlo=flags_["dump_hlo"].value,
            on_report=lambda report: print(json.dumps(report), flush=True),
        )
    except (PreflightError, accelerators.TargetError) as e:
        raise SystemExit(f"error: {e}") from None
    # A search has printed its compiles already; the summary (or the single compile) is last.
    print(json.dumps(reports[-1]), flush=True)


_FLAG_HOLDERS: dict[str, Any] = {}


def _flags() -> dict[str, Any]:
    """Define the command-line flags once (only when run as a program)."""
    if not _FLAG_HOLDERS:
        from absl import flags
        from ml_collections import config_flags

        holders = _FLAG_HOLDERS
        holders["config"] = config_flags.DEFINE_config_file(
            "config", None, "Experiment config file, optionally with ':arg'."
        )
        holders["target"] = flags.DEFINE_string(
            "target", None, f"Accelerator to compile for: {accelerators.allowed_targets()}."
        )
        holders["step"] = flags.DEFINE_enum(
            "step", "train", list(STEPS), "Which mapped step to compile (module docstring)."
        )
        holders["max_batch"] = flags.DEFINE_bool(
            "max_batch",
            False,
            "Find the largest per-chip batch that fits: a linear memory fit from two compiles "
            "seeds a bisection over further compiles.",
        )
        holders["batch_multiple"] = flags.DEFINE_integer(
            "batch_multiple", 8, "--max_batch reports a multiple of this."
        )
        holders["fast"] = flags.DEFINE_bool(
            "fast",
            False,
            f"Compile with {FAST_OPTIONS} (about 2x faster, same memory figures; FLOPs and "
            "fusions may differ).",
        )
        holders["num_classes"] = flags.DEFINE_integer(
            "num_classes", DEFAULT_NUM_CLASSES, "Classes of the online probe / linear head."
        )
        holders["hlo"] = flags.DEFINE_bool(
            "hlo", False, "Add counts from the optimized HLO (conv dtypes, all-reduces, copies)."
        )
        holders["dump_hlo"] = flags.DEFINE_string(
            "dump_hlo", None, "Write the optimized HLO text of the compiled step to this file."
        )
        flags.mark_flags_as_required(["config", "target"])
    return _FLAG_HOLDERS


if __name__ == "__main__":
    from absl import app

    _flags()
    app.run(main)
