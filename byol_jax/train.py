"""The pretraining loop: the only module besides ``launch.py`` that reads the config.

It turns the config into explicit objects (networks, optimizer, schedules, the bound step),
restores or initializes the state, feeds device-prefetched batches to the compiled step, and
writes checkpoints, ``metrics.jsonl``, TensorBoard events and a console progress line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable
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
    features,
    metrics_io,
    models,
    optim,
    parallel,
    preemption,
    profiling,
    report,
    storage,
    train_data,
    train_evals,
    train_state,
    workdir_config,
)
from byol_jax import data as input_pipeline
from byol_jax.evaluators import baselines, registry
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


def warmup_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    """``warmup_epochs`` in steps, at most ``max_warmup_fraction`` of the run: a run cut short
    (``num_steps``, a few epochs) still spends most of its steps past the warmup."""
    steps_per_epoch = max(1, num_train_examples // config.batch_size)
    steps = total_steps(config, num_train_examples)
    return min(int(config.warmup_epochs * steps_per_epoch), int(steps * config.max_warmup_fraction))


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
    warmup = warmup_steps(config, num_train_examples)
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
            crop_aspect_range=tuple(config.augment.crop_aspect_range),
            blur_prob=config.augment.blur_prob[i],
            solarize_prob=config.augment.solarize_prob[i],
            **augment.jitter_params(
                view, config.augment.jitter_prob, config.augment.jitter_strength
            ),
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


def _digests_of_all_processes(
    fingerprints: Callable[[Any], jax.Array], state: Any, step: int
) -> list[str]:
    """Every process's state digest; raises if replicas differ (they must stay in lockstep).

    ``fingerprints``: the mapped ``checkpoint.fingerprint``; the state is reduced on device and
    one small row per local device comes to the host (checkpoint steps only).
    """
    rows = np.asarray(fingerprints(state))
    if any(not np.array_equal(row, rows[0]) for row in rows[1:]):
        raise ReplicaMismatchError(
            f"the devices of process {jax.process_index()} hold different train states at step "
            f"{step}; not saved."
        )
    mine = np.frombuffer(hashlib.sha256(rows[0].tobytes()).digest()[:8], np.uint8)
    digests = [bytes(row).hex() for row in parallel.gather_from_processes(mine)]
    if len(set(digests)) > 1:
        raise ReplicaMismatchError(
            f"processes hold different train states at step {step} (digests {digests}); "
            "not saved. Check that every process runs the same code, config and data."
        )
    return digests


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: storage.PathLike,
    *,
    allow_config_change: bool = False,
    conv_plan: models.ConvPlan = (),
) -> dict[str, Any]:
    """Pretrain (resuming from ``workdir`` when it has checkpoints), then evaluate the probe.

    ``workdir``: a local folder or an object-store URL (``gs://bucket/run``).
    ``conv_plan``: measured convolution choices of the CPU path (``cpu_autotune``; same numbers,
    different speed).

    Returns the final summary that is also written to ``workdir/summary.json``. On SIGTERM or
    SIGINT (on any process) it checkpoints the current step and returns early with
    ``preempted=True``.
    """
    for name, entry in train_evals.entries(config).items():  # before anything is written
        registry.check_entry(name, entry)
    try:
        storage.makedirs(workdir)
    except OSError as error:
        raise checkpoint.CheckpointError(f"cannot create workdir {workdir}: {error}") from error
    is_chief = jax.process_index() == 0
    if is_chief:  # download/prepare, or list a folder into the workdir: once, then a barrier
        ready = input_pipeline.prepare_dataset(
            config.data.dataset, workdir=workdir, **train_data.source_options(config.data)
        )
        if config.data.dataset in input_pipeline.PATH_DATASETS:
            print(ready, flush=True)
    parallel.barrier("dataset_prepared")  # the others then read what the chief prepared
    info = train_data.train_dataset_info(config, workdir)
    experiment = build_experiment(
        config,
        num_classes=info.num_classes,
        num_train_examples=info.num_examples,
        conv_plan=conv_plan,
    )
    workdir_config.refuse_a_shorter_run(workdir, experiment.total_steps)
    if is_chief:
        workdir_config.check_and_save_config(
            config, workdir, allow_config_change=allow_config_change
        )

    manager = checkpoint.create_manager(
        workdir, max_to_keep=config.keep_checkpoints, asynchronous=config.async_checkpoints
    )
    try:
        return _train_then_evaluate(config, workdir, experiment, info, manager)
    finally:
        # A pending save completes (or fails loudly) before the process moves on or exits.
        checkpoint.wait(manager)
        manager.close()


def _train_then_evaluate(
    config: ml_collections.ConfigDict,
    workdir: storage.PathLike,
    experiment: Experiment,
    info: input_pipeline.DatasetInfo,
    manager: Any,
) -> dict[str, Any]:
    is_chief = jax.process_index() == 0
    host_state, restored_step = checkpoint.restore_agreed(
        manager, initial_state(experiment, config.seed), workdir=workdir
    )
    data = train_data.eval_data(config, num_classes=info.num_classes, workdir=str(workdir))
    evals = train_evals.build_evaluators(config, data)
    skipped = train_evals.scheduled_entries(config)
    if is_chief and not info.num_classes and skipped:
        print(train_evals.no_labels_message(config, skipped), flush=True)
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

    batches = train_data.host_train_batches(config, start_step, workdir)
    device_batches = parallel.prefetch_to_device(batches, size=2)
    p_train_step = parallel.map_step(experiment.step_fn)
    p_fingerprints = parallel.map_function(checkpoint.fingerprint)
    writer = metrics_io.MetricsWriter(
        workdir, enabled=is_chief, resume_step=restored_step, tensorboard=config.tensorboard
    )
    profile = profiling.Window(
        tuple(config.profile_steps), storage.path(workdir) / profiling.FOLDER
    )

    steps = experiment.total_steps
    last_log_time, last_log_step = time.time(), start_step
    last_saved = restored_step
    digests: list[str] = []
    step = start_step
    stopped_by: str | None = None
    runtime_owns_sigterm = parallel.runtime_owns_preemption()
    with preemption.StopSignal(runtime_owns_sigterm=runtime_owns_sigterm) as stop:
        for step in range(start_step + 1, steps + 1):
            profile.before_step(step)
            # A step that neither logs nor saves must not wait on the devices: no transfer to
            # the host (the guard raises on one), so the host dispatches steps ahead.
            with _transfer_guard(config.transfer_guard):
                state, metrics = p_train_step(state, next(device_batches))
                stop_now = parallel.stop_agreed(step, stop.requested)
                profile.after_step(step, state)
            if step == start_step + 1:
                # Start the throughput clock after compilation: images/s measures steps only.
                jax.block_until_ready(metrics)
                last_log_time, last_log_step = time.time(), step
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
                    _print_progress(step, steps, values, periodic, config.batch_size)
            if must_save:
                digests = _digests_of_all_processes(p_fingerprints, state, step)
                try:
                    # Returns once the state is copied off the devices; the write goes on in
                    # the background while training continues.
                    checkpoint.save(manager, step, parallel.replicated_to_global(state))
                except FloatingPointError as error:
                    raise NonFiniteLossError(
                        f"{error}; not saved. Last good checkpoint: step {last_saved} in "
                        f"{checkpoint.checkpoint_dir(workdir)}."
                    ) from error
                last_saved = step
            if stop_now:
                stopped_by = (
                    "a preemption notice (SIGTERM or Ctrl-C) on some process"
                    if runtime_owns_sigterm
                    else stop.signal_name
                )
                break
    profile.close()

    if not digests:  # The loop did not run (resumed a finished run); otherwise it saved last.
        digests = _digests_of_all_processes(p_fingerprints, state, step)
    summary: dict[str, Any] = {"step": int(step), "total_steps": steps, "state_digests": digests}
    if stopped_by is not None:
        checkpoint.wait(manager)
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
            train_evals.write_eval_file(workdir, scheduled, metrics, step=int(step))
            if scheduled.kind == "baselines":
                summary["table"] = baselines.unflatten(
                    {k[len(scheduled.name) + 1 :]: v for k, v in metrics.items()}
                )
            else:
                summary.update(metrics)
    writer.close()
    checkpoint.wait(manager)
    if is_chief:
        summary["report"] = report.write_report(workdir)
        storage.write_text(storage.path(workdir) / "summary.json", json.dumps(summary, indent=2))
    return summary


def _transfer_guard(level: str) -> contextlib.AbstractContextManager:
    """``jax.transfer_guard_device_to_host(level)``; "allow" adds nothing."""
    if level == "allow":
        return contextlib.nullcontext()
    return jax.transfer_guard_device_to_host(level)


def _print_progress(
    step: int,
    steps: int,
    values: dict[str, float],
    periodic: list[registry.Scheduled],
    batch_size: int,
) -> None:
    eta = (steps - step) * batch_size / max(values["images_per_sec"], 1e-9)
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
