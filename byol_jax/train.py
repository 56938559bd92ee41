"""The pretraining loop: the only module besides ``launch.py`` that reads the config.

It turns the config into explicit objects (networks, optimizer, schedules, the bound step),
restores or initializes the state, feeds device-prefetched batches to the compiled step, and
writes checkpoints, ``metrics.jsonl``, TensorBoard events and a console progress line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from byol_jax import (
    augment,
    checkpoint,
    ema,
    evaluate,
    input_pipeline,
    metrics_io,
    models,
    optim,
    parallel,
    train_state,
)
from byol_jax.train_step import train_step


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN/Inf; the last good checkpoint is kept untouched."""


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


def resolve_conv_impl(conv_impl: str) -> str:
    """ "auto" → the explicit-matmul convolution on CPU, XLA's native one elsewhere."""
    if conv_impl != "auto":
        return conv_impl
    return "matmul" if jax.default_backend() == "cpu" else "native"


def total_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    if config.num_steps > 0:
        return int(config.num_steps)
    return max(1, int(config.num_epochs * num_train_examples // config.batch_size))


def build_experiment(
    config: ml_collections.ConfigDict, *, num_classes: int, num_train_examples: int
) -> Experiment:
    """Networks, optimizer, schedules and the bound (unmapped) step for ``config``."""
    model = config.model
    dtype = jnp.dtype(model.dtype)
    encoder = functools.partial(
        models.build_encoder,
        model.encoder,
        width=model.width,
        base_width=model.base_width or None,
        stem=model.stem,
        zero_init_last_bn=model.zero_init_last_bn,
        axis_name=parallel.AXIS_NAME,
        dtype=dtype,
        conv_impl=resolve_conv_impl(model.conv_impl),
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
    view_1, view_2 = augment.byol_view_params()
    view_params = (
        dataclasses.replace(
            view_1,
            blur_prob=config.augment.blur_prob[0],
            solarize_prob=config.augment.solarize_prob[0],
        ),
        dataclasses.replace(
            view_2,
            blur_prob=config.augment.blur_prob[1],
            solarize_prob=config.augment.solarize_prob[1],
        ),
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


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Pretrain (resuming from ``workdir`` when it has checkpoints), then evaluate the probe.

    Returns the final summary that is also written to ``workdir/summary.json``.
    """
    os.makedirs(workdir, exist_ok=True)
    is_chief = jax.process_index() == 0
    data = config.data
    info = input_pipeline.dataset_info(
        data.dataset,
        data.train_split,
        data_dir=data.data_dir,
        source_size=data.source_size,
        idx_dir=data.idx_dir,
    )
    experiment = build_experiment(
        config, num_classes=info.num_classes, num_train_examples=info.num_examples
    )
    if is_chief:
        save_config(config, workdir)

    manager = checkpoint.create_manager(workdir, max_to_keep=config.keep_checkpoints)
    host_state, restored_step = checkpoint.restore_latest(
        manager, initial_state(experiment, config.seed)
    )
    start_step = int(restored_step or 0)
    if is_chief:
        if restored_step is None:
            print(f"starting a new run of {experiment.total_steps} steps in {workdir}", flush=True)
        else:
            print(f"resuming from step {start_step} of {experiment.total_steps}", flush=True)
    state = parallel.replicate(host_state)
    del host_state

    process_batch = config.batch_size // jax.process_count()
    batches = input_pipeline.train_batches(
        data.dataset,
        data.train_split,
        data_dir=data.data_dir,
        batch_size=process_batch,
        source_size=data.source_size,
        seed=config.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        idx_dir=data.idx_dir,
        shuffle_buffer=data.shuffle_buffer,
        max_bad_records=data.max_bad_records,
    )
    device_batches = parallel.prefetch_to_device(batches, size=2)
    p_train_step = parallel.map_step(experiment.step_fn)
    writer = metrics_io.MetricsWriter(workdir, enabled=is_chief)

    steps = experiment.total_steps
    last_log_time, last_log_step = time.time(), start_step
    last_saved = restored_step
    step = start_step
    for step in range(start_step + 1, steps + 1):
        state, metrics = p_train_step(state, next(device_batches))
        if step == start_step + 1:
            # Start the throughput clock after compilation, so images/s measures steps only.
            jax.block_until_ready(metrics)
            last_log_time, last_log_step = time.time(), step
        is_last = step == steps
        if step % config.log_every_steps == 0 or is_last:
            values = {k: float(v) for k, v in parallel.fetch(metrics).items()}
            if not all(math.isfinite(v) for v in (values["loss"], values["grad_norm"])):
                raise NonFiniteLossError(
                    f"non-finite loss or gradient norm at step {step} ({values}); nothing was "
                    f"saved for it. Last good checkpoint: step {last_saved} in "
                    f"{checkpoint.checkpoint_dir(workdir)}."
                )
            now = time.time()
            elapsed = max(now - last_log_time, 1e-9)
            values["images_per_sec"] = max(step - last_log_step, 1) * config.batch_size / elapsed
            last_log_time, last_log_step = now, step
            writer.write(step, values)
            if is_chief:
                eta = (steps - step) * config.batch_size / max(values["images_per_sec"], 1e-9)
                print(
                    f"step {step}/{steps} | loss {values['loss']:.4f} | probe acc "
                    f"{values['probe_accuracy']:.3f} | {values['images_per_sec']:.0f} img/s | "
                    f"ETA {_format_duration(eta)}",
                    flush=True,
                )
        if step % config.checkpoint_every_steps == 0 or is_last:
            checkpoint.save(manager, step, parallel.fetch(state))
            last_saved = step

    summary = {"step": int(step), "total_steps": steps}
    eval_batches = input_pipeline.eval_batches(
        data.dataset,
        data.eval_split,
        data_dir=data.data_dir,
        batch_size=_eval_batch_size(data.eval_batch_size),
        source_size=data.source_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        idx_dir=data.idx_dir,
    )
    if info.num_classes:
        summary.update(
            evaluate.probe_accuracy(
                state,
                eval_batches,
                online_net=experiment.online_net,
                probe=experiment.probe,
                image_size=data.image_size,
                crop_fraction=data.eval_crop_fraction,
                mean=tuple(data.mean),
                std=tuple(data.std),
            )
        )
    writer.write(int(step), {f"eval_{k}": v for k, v in summary.items() if "accuracy" in k})
    writer.close()
    if is_chief:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def _eval_batch_size(requested: int) -> int:
    """Round the eval batch up to a multiple of the local device count."""
    devices = jax.local_device_count()
    return int(np.ceil(requested / devices) * devices)
