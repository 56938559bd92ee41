"""The classifier of the linear and fine-tuning protocols: state, compiled steps, counts.

A linear head (zero-initialized, as in the released code) on features of a frozen encoder in
inference mode, on precomputed features, or on a fine-tuned encoder (BatchNorm in training mode
with statistics over all devices); SGD with Nesterov momentum, cosine LR from a traced peak, so
an LR sweep and runs of different lengths share one compilation. ``train_chunk`` scans many
steps inside one call; ``mapped_fns`` maps it and the top-1/top-5 counts over local devices.
What the protocol trains on, and for how long, is ``linear.py``'s business.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from byol_jax import augment, features, parallel

MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class Spec:
    """Static (hashable) description of one evaluator; keys the compilation cache."""

    head: nn.Module
    encoder: nn.Module | None  # None: the inputs are precomputed features
    image_size: int
    crop_fraction: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    fine_tune: bool
    weight_decay: float
    seed: int
    top_k: int


@flax.struct.dataclass
class ClassifierState:
    """Linear head (and, when fine-tuning, encoder) being trained, with its optimizer state."""

    step: jax.Array
    total_steps: jax.Array  # traced, so runs of different lengths share one compilation
    peak_lr: jax.Array  # traced, so an LR sweep compiles once
    head_params: Any
    encoder_params: Any
    batch_stats: Any
    opt_state: Any


def _optimizer(weight_decay: float) -> optax.GradientTransformation:
    # SGD + Nesterov momentum without the LR: the cosine LR is applied in the step, after the
    # momentum trace (as optax.sgd and PyTorch do), from the traced peak LR.
    parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    return optax.chain(*parts, optax.trace(decay=MOMENTUM, nesterov=True))


def _trainable(state: ClassifierState, fine_tune: bool) -> dict[str, Any]:
    trainable = {"head": state.head_params}
    if fine_tune:
        trainable["encoder"] = state.encoder_params
    return trainable


def represent(
    spec: Spec,
    encoder_params: Any,
    batch_stats: Any,
    inputs: jax.Array,
    *,
    train: bool,
    step: jax.Array,
) -> tuple[jax.Array, Any]:
    """Features of a local batch (and the new BN statistics when fine-tuning)."""
    if spec.encoder is None:
        return inputs.astype(jnp.float32), batch_stats
    if train and spec.augment:
        # Per-example keys from (seed, step, global example index): independent of the layout.
        key = jax.random.fold_in(jax.random.key(spec.seed), step)
        index = parallel.global_example_index(inputs.shape[0])
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
        crop = functools.partial(augment.random_crop_flip, out_size=spec.image_size)
        views = augment.normalize(jax.vmap(crop)(keys, inputs), spec.mean, spec.std)
    else:
        view = features.View(spec.image_size, spec.crop_fraction, spec.mean, spec.std)
        views = features.eval_views(inputs, view)
    variables = {"params": encoder_params, "batch_stats": batch_stats}
    if train and spec.fine_tune:
        feats, updates = spec.encoder.apply(variables, views, train=True, mutable=["batch_stats"])
        return feats.astype(jnp.float32), updates.get("batch_stats", batch_stats)
    return spec.encoder.apply(variables, views, train=False).astype(jnp.float32), batch_stats


def _cosine_lr(state: ClassifierState) -> jax.Array:
    progress = jnp.minimum(state.step, state.total_steps) / jnp.maximum(state.total_steps, 1)
    return state.peak_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


def _train_step(
    state: ClassifierState, batch: dict[str, jax.Array], *, spec: Spec
) -> tuple[ClassifierState, jax.Array]:
    def loss_fn(trainable):
        encoder_params = trainable.get("encoder", state.encoder_params)
        feats, new_stats = represent(
            spec, encoder_params, state.batch_stats, batch["inputs"], train=True, step=state.step
        )
        if not spec.fine_tune:
            feats = jax.lax.stop_gradient(feats)  # frozen: no backward pass into it
        logits = spec.head.apply({"params": trainable["head"]}, feats)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, new_stats

    trainable = _trainable(state, spec.fine_tune)
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    # Equal local batches: the mean of local means is the global-batch gradient.
    grads = parallel.mean_over_devices(grads)
    updates, opt_state = _optimizer(spec.weight_decay).update(grads, state.opt_state, trainable)
    lr = _cosine_lr(state)
    trainable = jax.tree.map(lambda p, u: p - lr * u, trainable, updates)
    new_state = state.replace(
        step=state.step + 1,
        head_params=trainable["head"],
        encoder_params=trainable.get("encoder", state.encoder_params),
        batch_stats=new_stats,
        opt_state=opt_state,
    )
    # Padding steps at the end of the last chunk leave the state untouched.
    new_state = jax.tree.map(lambda n, o: jnp.where(batch["valid"], n, o), new_state, state)
    return new_state, parallel.mean_over_devices(loss)


def train_chunk(
    state: ClassifierState, chunk: dict[str, jax.Array], *, spec: Spec
) -> tuple[ClassifierState, jax.Array]:
    return jax.lax.scan(functools.partial(_train_step, spec=spec), state, chunk)


def _eval_counts(
    state: ClassifierState, batch: dict[str, jax.Array], *, spec: Spec
) -> dict[str, jax.Array]:
    feats, _ = represent(
        spec, state.encoder_params, state.batch_stats, batch["inputs"], train=False, step=state.step
    )
    logits = spec.head.apply({"params": state.head_params}, feats)
    labels = batch["label"]
    valid = batch["mask"] & (labels >= 0)
    top = jax.lax.top_k(logits, spec.top_k)[1]
    top1 = (top[:, 0] == labels) & valid
    topk = jnp.any(top == labels[:, None], axis=-1) & valid
    return parallel.sum_over_devices(
        {"top1": jnp.sum(top1), "top5": jnp.sum(topk), "count": jnp.sum(valid)}
    )


@functools.lru_cache(maxsize=16)
def mapped_fns(spec: Spec) -> tuple[Callable, Callable]:
    train = parallel.map_function(functools.partial(train_chunk, spec=spec), donate_argnums=(0,))
    count = parallel.map_function(functools.partial(_eval_counts, spec=spec))
    return train, count


def init_state(
    spec: Spec,
    encoder_variables: Mapping[str, Any],
    dim: int,
    *,
    peak_lr: float,
    total_steps: int,
) -> ClassifierState:
    head_params = spec.head.init(jax.random.key(spec.seed), jnp.zeros((1, dim), jnp.float32))
    state = ClassifierState(
        step=jnp.zeros((), jnp.int32),
        total_steps=jnp.asarray(total_steps, jnp.int32),
        peak_lr=jnp.asarray(peak_lr, jnp.float32),
        head_params=head_params["params"],
        encoder_params=encoder_variables.get("params", {}),
        batch_stats=encoder_variables.get("batch_stats", {}),
        opt_state=None,
    )
    return state.replace(
        opt_state=_optimizer(spec.weight_decay).init(_trainable(state, spec.fine_tune))
    )
