"""Evaluation of a pretraining state on a labelled split (inference-mode encoder)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import features, parallel
from byol_jax.train_state import TrainState


def eval_views(images: jax.Array, *, image_size: int, crop_fraction: float, mean, std) -> jax.Array:
    """Deterministic centre crop + resize + normalization of a uint8 batch."""
    view = features.View(image_size, crop_fraction, tuple(mean), tuple(std))
    return features.eval_views(images, view)


def _probe_counts(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    online_net: nn.Module,
    probe: nn.Module,
    image_size: int,
    crop_fraction: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> dict[str, jax.Array]:
    views = eval_views(
        batch["image"], image_size=image_size, crop_fraction=crop_fraction, mean=mean, std=std
    )
    variables = {"params": state.online_params, "batch_stats": state.online_batch_stats}
    embedding = online_net.apply(variables, views, train=False)["embedding"]
    logits = probe.apply({"params": state.probe_params}, embedding)
    valid = batch["mask"] & (batch["label"] >= 0)
    correct = (jnp.argmax(logits, -1) == batch["label"]) & valid
    return parallel.sum_over_devices({"correct": jnp.sum(correct), "count": jnp.sum(valid)})


def probe_accuracy(
    state: TrainState,
    batches: Iterable[dict[str, np.ndarray]],
    *,
    online_net: nn.Module,
    probe: nn.Module,
    image_size: int,
    crop_fraction: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> dict[str, float]:
    """Top-1 accuracy of the online linear probe on every example of ``batches`` exactly once.

    ``state`` is replicated; ``batches`` yields host batches with image/label/mask.
    """
    count_fn = parallel.map_function(
        functools.partial(
            _probe_counts,
            online_net=online_net,
            probe=probe,
            image_size=image_size,
            crop_fraction=crop_fraction,
            mean=mean,
            std=std,
        )
    )
    correct = count = 0
    for batch in batches:
        counts = parallel.fetch(count_fn(state, parallel.shard_batch(batch)))
        correct += int(counts["correct"])
        count += int(counts["count"])
    return {"probe_accuracy": correct / max(count, 1), "eval_examples": count}
