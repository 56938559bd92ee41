"""The pretraining loop: the only module besides ``launch.py`` that reads the config.

It turns the config into explicit objects (networks, optimizer, schedules, the bound step),
restores or initializes the state, feeds device-prefetched batches to the compiled step, and
writes checkpoints, ``metrics.jsonl``, TensorBoard events and a console progress line.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from byol_jax import (
    augment,
    checkpoint,
    cpu_autotune,
    ema,
    export,
    features,
    input_pipeline,
    metrics_io,
    models,
    optim,
    parallel,
    preemption,
    report,
    train_state,
)
from byol_jax.evaluators import baselines, registry
from byol_jax.evaluators.base import EvalData, EvaluatorError
from byol_jax.train_step import train_step


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN/Inf; the last good checkpoint is kept untouched."""


class ReplicaMismatchError(RuntimeError):
    """Processes of a multi-process run hold different train states (a silent desync)."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything the loop, evaluators and benchmark need, built from one config."""

    online_net: nn.Module
    target_net: nn.Module
    probe: nn.Module
    optimizer: optax.GradientTransformation
    lr_schedule: optax.Schedule
    tau_schedule: Callable[[jax.Array], jax.Array]
    step_fn: Callable  # unmapped train_step with everything but (state, batch) bound
    total_steps: int
    image_shape: tuple[int, int, int]


def resolve_conv_impl(conv_impl: str, backend: str | None = None) -> str:
    """ "auto" → the explicit-matmul convolution on CPU, XLA's native one elsewhere.

    ``backend`` (default: JAX's default backend) is the platform the step is compiled for; the
    preflight passes its target's ("tpu", "gpu") while running on a CPU host.
    """
    if conv_impl != "auto":
        return conv_impl
    return "matmul" if (backend or jax.default_backend()) == "cpu" else "native"


def cpu_tune_spec(config: ml_collections.ConfigDict) -> cpu_autotune.TuneSpec | None:
    """What ``cpu_autotune`` measures for ``config``; None when nothing is left to tune.

    An explicit ``model.conv_impl``, user-set ``XLA_FLAGS`` or ``cpu_autotune=False`` keep the
    untuned behaviour.
    """
    if (
        not config.get("cpu_autotune", False)
        or config.model.conv_impl != "auto"
        or cpu_autotune.user_xla_flags() is not None
    ):
        return None
    model = config.model
    return cpu_autotune.TuneSpec(
        encoder=model.encoder,
        width=int(model.width),
        base_width=int(model.base_width) if model.base_width else None,
        stem=model.stem,
        dtype=str(model.dtype),
        image_size=int(config.data.image_size),
        batch_size=int(config.batch_size),
    )


def total_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    if config.num_steps > 0:
        return int(config.num_steps)
    return max(1, int(config.num_epochs * num_train_examples // config.batch_size))


def build_experiment(
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    num_train_examples: int,
    backend: str | None = None,
    conv_plan: models.ConvPlan = (),
) -> Experiment:
    """Networks, optimizer, schedules and the bound (unmapped) step for ``config``.

    ``backend``: the platform the step will be compiled for (default: JAX's default backend).

    ``conv_plan`` (``cpu_autotune.Plan.convs``) picks, per convolution shape, the implementation
    of the CPU path; it only applies where ``conv_impl`` resolves to "matmul".
    """
    model = config.model
    dtype = jnp.dtype(model.dtype)
    encoder = functools.partial(
        models.build_encoder,
        model.encoder,
        width=model.width,
        base_width=model.base_width or None,
        stem=model.stem,
        zero_init_last_bn=model.zero_init_last_bn,
        padding=model.padding,
        projection_shortcuts=model.projection_shortcuts,
        axis_name=parallel.AXIS_NAME,
        dtype=dtype,
        conv_impl=resolve_conv_impl(model.conv_impl, backend),
        conv_plan=conv_plan,
    )
    network = functools.partial(
        models.BYOLNetwork,
        projector_hidden_dim=model.projector_hidden_dim,
        projector_dim=model.projector_dim,
        predictor_hidden_dim=model.predictor_hidden_dim,
        axis_name=parallel.AXIS_NAME,
        dtype=dtype,
    )
    online_net = network(encoder(), with_predictor=True)
    target_net = network(encoder(), with_predictor=False)
    # Datasets without labels still get a (never-trained) 1-way probe, keeping one state layout.
    probe = nn.Dense(max(num_classes, 1), name="probe")

    steps = total_steps(config, num_train_examples)
    steps_per_epoch = max(1, num_train_examples // config.batch_size)
    # Short runs (num_steps override) keep at least 90% of their steps out of warmup.
    warmup = min(int(config.warmup_epochs * steps_per_epoch), steps // 10)
    lr_schedule = optim.learning_rate_schedule(
        config.optimizer.base_lr, config.batch_size, steps, warmup
    )
    optimizer = optim.lars(
        lr_schedule,
        weight_decay=config.optimizer.weight_decay,
        momentum=config.optimizer.momentum,
        trust_coefficient=config.optimizer.trust_coefficient,
    )
    tau_schedule = ema.tau_schedule(config.base_tau, steps)
    view_params = tuple(
        dataclasses.replace(
            view,
            crop_area_range=(config.augment.crop_area_min, 1.0),
            blur_prob=config.augment.blur_prob[i],
            solarize_prob=config.augment.solarize_prob[i],
        )
        for i, view in enumerate(augment.byol_view_params())
    )
    step_fn = functools.partial(
        train_step,
        online_net=online_net,
        target_net=target_net,
        probe=probe,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        tau_schedule=tau_schedule,
        view_params=view_params,
        image_size=config.data.image_size,
        mean=tuple(config.data.mean),
        std=tuple(config.data.std),
        seed=config.seed,
    )
    size = config.data.image_size
    return Experiment(
        online_net=online_net,
        target_net=target_net,
        probe=probe,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        tau_schedule=tau_schedule,
        step_fn=step_fn,
        total_steps=steps,
        image_shape=(size, size, 3),
    )


def initial_state(experiment: Experiment, seed: int) -> train_state.TrainState:
    return train_state.create_train_state(
        jax.random.key(seed),
        experiment.online_net,
        experiment.target_net,
        experiment.probe,
        experiment.optimizer,
        experiment.image_shape,
    )


def state_digest(host_state: Any) -> str:
    """A short hash of every array in a host state: equal digests mean bitwise-equal states."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(host_state):
        array = np.ascontiguousarray(leaf)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _digests_of_all_processes(host_state: Any, step: int) -> list[str]:
    """Every process's state digest; raises if they differ (they must stay in lockstep)."""
    mine = np.frombuffer(bytes.fromhex(state_digest(host_state)), np.uint8)
    digests = [bytes(row).hex() for row in parallel.gather_from_processes(mine)]
    if len(set(digests)) > 1:
        raise ReplicaMismatchError(
            f"processes hold different train states at step {step} (digests {digests}); "
            "not saved. Check that every process runs the same code, config and data."
        )
    return digests


def train_dataset_info(config: ml_collections.ConfigDict) -> input_pipeline.DatasetInfo:
    """Size and classes of the training split named by ``config.data``."""
    data = config.data
    return input_pipeline.dataset_info(
        data.dataset,
        data.train_split,
        data_dir=data.data_dir,
        source_size=data.source_size,
        idx_dir=data.idx_dir,
    )


def host_train_batches(
    config: ml_collections.ConfigDict, start_step: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of the global training batches from ``start_step`` on."""
    data = config.data
    return input_pipeline.train_batches(
        data.dataset,
        data.train_split,
        data_dir=data.data_dir,
        batch_size=config.batch_size // jax.process_count(),
        source_size=data.train_source_size or data.source_size,
        seed=config.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        idx_dir=data.idx_dir,
        shuffle_buffer=data.shuffle_buffer,
        stream_shards=stream_shards(data.stream_shards, config.batch_size, jax.process_count()),
        max_bad_records=data.max_bad_records,
    )


def train_source_shape(config: ml_collections.ConfigDict) -> tuple[int, bool]:
    """(host image size, whether batches carry per-image ``valid`` sizes) of training.

    Whole-image training (``data.train_source_size`` set, e.g. ImageNet) sends non-square images
    padded to a square with their valid sizes; square datasets send the whole array. Synthetic
    batches (bench, preflight) follow this so they drive the step training compiles.
    """
    data = config.data
    return int(data.train_source_size or data.source_size), bool(data.train_source_size)


MAX_AUTO_STREAM_SHARDS = 64


def stream_shards(requested: int, global_batch: int, process_count: int) -> int:
    """``requested`` if set (> 0); else the largest count <= 64 that divides the global batch
    and is a multiple of the process count (only streamed tfds data uses it).

    The automatic count depends on the batch, not on the process count, wherever possible, so
    the data order stays the same when a run moves between process counts.
    """
    if requested > 0:
        return requested
    for count in range(min(global_batch, MAX_AUTO_STREAM_SHARDS), 0, -1):
        if global_batch % count == 0 and count % process_count == 0:
            return count
    return process_count  # validation guarantees process_count divides the batch


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# Config sections that must not change under an existing run's checkpoints.
_FIXED_KEYS = ("model", "data.dataset", "data.image_size", "data.source_size", "seed")
# Keys added after runs were saved without them: a missing key meant this (the old behaviour).
_ADDED_KEY_DEFAULTS = {"model.padding": "symmetric", "model.projection_shortcuts": False}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_and_save_config(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> None:
    """Write ``workdir/config.json``; refuse a run whose model/data differ from the saved one."""
    path = os.path.join(workdir, "config.json")
    new = json.loads(config.to_json_best_effort())
    has_checkpoints = os.path.isdir(checkpoint.checkpoint_dir(workdir)) and any(
        name.isdigit() for name in os.listdir(checkpoint.checkpoint_dir(workdir))
    )
    if os.path.exists(path) and has_checkpoints and not allow_config_change:
        _refuse_changes(path, new, workdir)
    with open(path + ".tmp", "w") as f:
        json.dump(new, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)  # atomic: a crash never leaves a half-written config
    write_encoder_spec(config, workdir)


def _refuse_changes(path: str, new: dict[str, Any], workdir: str) -> None:
    with open(path) as f:
        old = _flatten(json.load(f))
    flat_new = _flatten(new)
    changed = sorted(
        key
        for key in set(old) | set(flat_new)
        if key.startswith(_FIXED_KEYS)
        and old.get(key, _ADDED_KEY_DEFAULTS.get(key)) != flat_new.get(key)
    )
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {flat_new.get(k)!r}" for k in changed[:5])
        raise ConfigConflictError(
            f"{workdir} holds checkpoints of a different run ({diffs}). Use a new --workdir, "
            "or pass --allow_config_change to resume anyway."
        )


def encoder_spec(config: ml_collections.ConfigDict) -> features.EncoderSpec:
    """The encoder's architecture and input convention (``workdir/encoder.json``)."""
    model, data = config.model, config.data
    return features.EncoderSpec(
        encoder=model.encoder,
        width=int(model.width),
        base_width=int(model.base_width) or None,  # 0 keeps the variant's default
        stem=model.stem,
        dtype=model.dtype,
        image_size=int(data.image_size),
        source_size=int(data.source_size),
        crop_fraction=float(data.eval_crop_fraction),
        mean=tuple(data.mean),
        std=tuple(data.std),
        padding=model.padding,
        projection_shortcuts=bool(model.projection_shortcuts),
    )


def write_encoder_spec(config: ml_collections.ConfigDict, workdir: str) -> None:
    """``workdir/encoder.json``: what evaluation and export read instead of the config."""
    path = os.path.join(workdir, export.SPEC_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(encoder_spec(config).to_json(), f, indent=2)
    os.replace(path + ".tmp", path)


def ensure_encoder_spec(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Workdirs of earlier versions lack ``encoder.json``: write it from ``config`` after checking
    that the config's model and data match the workdir's ``config.json``."""
    if os.path.exists(os.path.join(workdir, export.SPEC_FILE)):
        return
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return  # not a workdir: export.read_encoder explains
    _refuse_changes(path, json.loads(config.to_json_best_effort()), workdir)
    write_encoder_spec(config, workdir)


class ConfigConflictError(ValueError):
    """The config differs from the one that wrote the checkpoints in the workdir."""


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    allow_config_change: bool = False,
    conv_plan: models.ConvPlan = (),
) -> dict[str, Any]:
    """Pretrain (resuming from ``workdir`` when it has checkpoints), then evaluate the probe.

    ``conv_plan``: measured convolution choices of the CPU path (``cpu_autotune``; same numbers,
    different speed).

    Returns the final summary that is also written to ``workdir/summary.json``. On SIGTERM or
    SIGINT it checkpoints the current step and returns early with ``preempted=True``.
    """
    for name, entry in _entries(config).items():  # before anything is written
        registry.check_entry(name, entry)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise checkpoint.CheckpointError(f"cannot create workdir {workdir}: {error}") from error
    is_chief = jax.process_index() == 0
    info = train_dataset_info(config)
    experiment = build_experiment(
        config,
        num_classes=info.num_classes,
        num_train_examples=info.num_examples,
        conv_plan=conv_plan,
    )
    if is_chief:
        check_and_save_config(config, workdir, allow_config_change=allow_config_change)

    manager = checkpoint.create_manager(workdir, max_to_keep=config.keep_checkpoints)
    host_state, restored_step = checkpoint.restore_latest(
        manager, initial_state(experiment, config.seed), workdir=workdir if is_chief else None
    )
    evals = build_evaluators(config, eval_data(config, num_classes=info.num_classes))
    periodic = [e for e in evals if e.every_steps > 0]
    encoder = experiment.online_net.encoder
    start_step = int(restored_step or 0)
    if is_chief:
        print(_run_summary(config, experiment, info, evals), flush=True)
        if restored_step is None:
            print(f"starting a new run of {experiment.total_steps} steps in {workdir}", flush=True)
        else:
            print(f"resuming from step {start_step} of {experiment.total_steps}", flush=True)
    state = parallel.replicate(host_state)
    del host_state

    batches = host_train_batches(config, start_step)
    device_batches = parallel.prefetch_to_device(batches, size=2)
    p_train_step = parallel.map_step(experiment.step_fn)
    writer = metrics_io.MetricsWriter(workdir, enabled=is_chief, resume_step=restored_step)

    steps = experiment.total_steps
    last_log_time, last_log_step = time.time(), start_step
    last_saved = restored_step
    digests: list[str] = []
    step = start_step
    stopped_by: str | None = None
    with preemption.StopSignal() as stop:
        for step in range(start_step + 1, steps + 1):
            state, metrics = p_train_step(state, next(device_batches))
            if step == start_step + 1:
                # Start the throughput clock after compilation: images/s measures steps only.
                jax.block_until_ready(metrics)
                last_log_time, last_log_step = time.time(), step
            stop_now = parallel.any_process(stop.requested)
            is_last = step == steps or stop_now
            must_save = step % config.checkpoint_every_steps == 0 or is_last
            if step % config.log_every_steps == 0 or must_save:
                values = {k: float(v) for k, v in parallel.fetch(metrics).items()}
                if not all(math.isfinite(v) for v in (values["loss"], values["grad_norm"])):
                    raise NonFiniteLossError(
                        f"non-finite loss or gradient norm at step {step} (loss "
                        f"{values['loss']}, grad norm {values['grad_norm']}); nothing was saved "
                        f"for it. Last good checkpoint: step {last_saved} in "
                        f"{checkpoint.checkpoint_dir(workdir)}."
                    )
            if step % config.log_every_steps == 0 or is_last:
                now = time.time()
                elapsed = max(now - last_log_time, 1e-9)
                values["images_per_sec"] = (
                    max(step - last_log_step, 1) * config.batch_size / elapsed
                )
                last_log_time, last_log_step = now, step
                for scheduled in periodic:
                    if scheduled.due(step, steps):
                        # The encoder's subtree of the replicated state: nothing is copied.
                        variables = features.encoder_variables(state)
                        values.update(scheduled.run(encoder, variables, replicated=True))
                        last_log_time = time.time()  # keep evaluation out of images/s
                writer.write(step, values)
                if is_chief:
                    eta = (steps - step) * config.batch_size / max(values["images_per_sec"], 1e-9)
                    evaluated = "".join(
                        f" | {k} {v:.3f}"
                        for e in periodic
                        for k, v in values.items()
                        if k.startswith(f"{e.name}_") and k.endswith(("accuracy", "top1"))
                    )
                    print(
                        f"step {step}/{steps} | loss {values['loss']:.4f} | probe acc "
                        f"{values['probe_accuracy']:.3f}{evaluated} | "
                        f"{values['images_per_sec']:.0f} img/s | ETA {_format_duration(eta)}",
                        flush=True,
                    )
            if must_save:
                host_state = parallel.fetch(state)
                digests = _digests_of_all_processes(host_state, step)
                try:
                    checkpoint.save(manager, step, host_state)
                except FloatingPointError as error:
                    raise NonFiniteLossError(
                        f"{error}; not saved. Last good checkpoint: step {last_saved} in "
                        f"{checkpoint.checkpoint_dir(workdir)}."
                    ) from error
                del host_state
                last_saved = step
            if stop_now:
                stopped_by = stop.signal_name or "a signal on another process"
                break

    if not digests:  # The loop did not run (resumed a finished run); otherwise it saved last.
        digests = _digests_of_all_processes(parallel.fetch(state), step)
    summary: dict[str, Any] = {"step": int(step), "total_steps": steps, "state_digests": digests}
    if stopped_by is not None:
        writer.close()
        if is_chief:
            print(
                f"stopped by {stopped_by} after step {step}; checkpoint saved. Run the same "
                "command to continue.",
                flush=True,
            )
        return {**summary, "preempted": True}
    # Every process runs the evaluators (features are embedded over all devices of all
    # processes); process 0 prints and writes.
    for scheduled in (e for e in evals if e.at_end):
        variables = features.encoder_variables(state)
        if scheduled.kind == "probe":
            variables = {**variables, "probe": state.probe_params}
        start = time.time()
        metrics = scheduled.run(encoder, variables, replicated=True)
        writer.write(int(step), {f"eval_{k}": v for k, v in metrics.items()})
        if is_chief:
            print(f"{scheduled.describe(metrics)} [{time.time() - start:.0f}s]", flush=True)
            _write_eval_file(workdir, scheduled, metrics, step=int(step))
            if scheduled.kind == "baselines":
                summary["table"] = baselines.unflatten(
                    {k[len(scheduled.name) + 1 :]: v for k, v in metrics.items()}
                )
            else:
                summary.update(metrics)
    writer.close()
    if is_chief:
        summary["report"] = report.write_report(workdir)
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def eval_view(config: ml_collections.ConfigDict) -> features.View:
    """The deterministic evaluation transform of ``config.data``."""
    data = config.data
    return features.View(
        data.image_size, data.eval_crop_fraction, tuple(data.mean), tuple(data.std)
    )


def eval_data(
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    source_size: int | None = None,
    view: features.View | None = None,
) -> EvalData:
    """The data every evaluator draws on: splits of ``config.data`` at the evaluation source
    size, each process reading only its own shards (``features.SplitShards``); shares of at most
    ``features.IN_MEMORY_BYTES`` decoded bytes per process are kept in memory between passes."""
    data = config.data
    size = int(source_size or data.source_size)

    def read(split: str, index: int, count: int, batch_size: int) -> Iterator[dict[str, Any]]:
        return input_pipeline.eval_batches(
            data.dataset,
            split,
            data_dir=data.data_dir,
            batch_size=batch_size,
            source_size=size,
            process_index=index,
            process_count=count,
            idx_dir=data.idx_dir,
        )

    def num_examples(split: str) -> int:
        info = input_pipeline.dataset_info(
            data.dataset, split, data_dir=data.data_dir, source_size=size, idx_dir=data.idx_dir
        )
        return info.num_examples

    batch_size = _eval_batch_size(data.eval_batch_size)
    return EvalData(
        read_shard=read,
        num_examples=num_examples,
        example_bytes=size * size * 3,
        stream_split=lambda split: read(
            split, jax.process_index(), jax.process_count(), batch_size
        ),
        train_split=data.train_split,
        test_split=data.eval_split,
        num_classes=num_classes,
        view=view or eval_view(config),
        seed=config.seed,
        batch_size=batch_size,
    )


def _entries(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
    return {name: dict(entry.to_dict()) for name, entry in config.evals.items()}


def build_evaluators(
    config: ml_collections.ConfigDict, data: EvalData, *, kind: str | None = None
) -> list[registry.Scheduled]:
    """The evaluators of ``config.evals``: the scheduled ones (``every_steps`` or ``at_end``), or
    with ``kind`` every entry of that type (for ``--mode``). None without labels."""
    if not data.num_classes:
        return []
    built = []
    for name, entry in _entries(config).items():
        scheduled = entry.get("every_steps") or entry.get("at_end")
        if (entry.get("type") == kind) if kind else scheduled:
            built.append(registry.build(name, entry, data))
    return built


def _write_eval_file(
    workdir: str, scheduled: registry.Scheduled, metrics: dict[str, float], **info: Any
) -> str:
    """``workdir/eval_<name>.json``: the metrics (and the linear evaluators' settings)."""
    content: dict[str, Any] = {"evaluator": scheduled.name, "type": scheduled.kind, **info}
    content["metrics"] = metrics
    details = getattr(scheduled.evaluator, "last_result", None)
    if details:
        content["details"] = details
    path = os.path.join(workdir, f"eval_{scheduled.name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(content, f, indent=2)
    os.replace(path + ".tmp", path)
    return path


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, kind: str) -> dict[str, Any]:
    """``--mode=knn/linear_eval/fine_tune/baselines``: the ``config.evals`` entries of type
    ``kind``, run on the newest checkpoint's encoder in ``workdir`` (restored alone, not the
    whole TrainState). Writes ``workdir/eval_<name>.json`` per entry."""
    ensure_encoder_spec(config, workdir)
    encoder, variables, spec = export.read_encoder(workdir)
    data = eval_data(
        config,
        num_classes=train_dataset_info(config).num_classes,
        source_size=spec.source_size,
        view=spec.view,
    )
    evals = build_evaluators(config, data, kind=kind)
    if not evals:
        raise EvaluatorError(
            f"config.evals has no entry of type {kind!r} (or the dataset has no labels)"
        )
    results: dict[str, Any] = {"pretraining_step": spec.step}
    for scheduled in evals:
        start = time.time()
        metrics = scheduled.run(encoder, variables)
        if jax.process_index() == 0:
            print(f"{scheduled.describe(metrics)} [{time.time() - start:.0f}s]", flush=True)
            results[scheduled.name] = metrics
            results["written"] = _write_eval_file(
                workdir, scheduled, metrics, pretraining_step=spec.step
            )
    return results


def _run_summary(
    config: ml_collections.ConfigDict,
    experiment: Experiment,
    info: input_pipeline.DatasetInfo,
    evals: list[registry.Scheduled],
) -> str:
    """One line that says what this run is: model, data, batch, devices, evaluators."""
    model, data = config.model, config.data
    width = f" {model.width}x" if model.width != 1 else ""
    schedule = ", ".join(
        f"{e.name} every {e.every_steps} steps" if e.every_steps else f"{e.name} at end"
        for e in evals
    )
    return (
        f"config: {model.encoder}{width} ({model.dtype}) on {data.dataset} "
        f"({info.num_examples} images, {data.image_size} px), batch {config.batch_size} over "
        f"{jax.device_count()} {jax.default_backend()} device(s), {experiment.total_steps} steps; "
        f"evaluators: {schedule or 'none'}"
    )


def _eval_batch_size(requested: int) -> int:
    """Round the eval batch up to a multiple of the local device count."""
    devices = jax.local_device_count()
    return int(np.ceil(requested / devices) * devices)
