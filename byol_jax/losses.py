"""BYOL's symmetric normalized-MSE loss and the online probe's classification loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def normalized_mse(prediction: jax.Array, target: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Per-example ‖p/‖p‖ − z/‖z‖‖² = 2 − 2·cos(p, z); shape [B]. Range [0, 4]."""

    def l2_normalize(x: jax.Array) -> jax.Array:
        # eps bounds the squared norm, so an all-zero vector maps to zero instead of NaN.
        return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))

    diff = l2_normalize(prediction) - l2_normalize(target)
    return jnp.sum(diff * diff, axis=-1)


def byol_loss(
    prediction_1: jax.Array,
    prediction_2: jax.Array,
    target_projection_1: jax.Array,
    target_projection_2: jax.Array,
) -> jax.Array:
    """Symmetric BYOL loss: both directions **summed**, averaged over the batch; range [0, 8].

    ``prediction_i`` is the online prediction of view i, ``target_projection_i`` the target
    projection of view i. Each online view is matched to the target of the other view, and no
    gradient flows into the target.
    """
    z1 = jax.lax.stop_gradient(target_projection_1)
    z2 = jax.lax.stop_gradient(target_projection_2)
    per_example = normalized_mse(prediction_1, z2) + normalized_mse(prediction_2, z1)
    return jnp.mean(per_example)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy and top-1 accuracy over examples with a label >= 0.

    Unlabelled examples (label -1, e.g. STL-10's unlabelled split) are ignored; with none labelled
    both values are 0.
    """
    valid = labels >= 0
    safe_labels = jnp.where(valid, labels, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), safe_labels
    )
    count = jnp.maximum(jnp.sum(valid), 1)
    loss = jnp.sum(jnp.where(valid, losses, 0.0)) / count
    correct = (jnp.argmax(logits, axis=-1) == safe_labels) & valid
    return loss, jnp.sum(correct) / count


def projection_std(projection: jax.Array) -> jax.Array:
    """Collapse signal: per-dimension std of the L2-normalized projections, averaged.

    About 1/sqrt(dim) for well-spread outputs, 0 when every example maps to the same direction.
    """
    normed = projection * jax.lax.rsqrt(
        jnp.maximum(jnp.sum(projection**2, axis=-1, keepdims=True), 1e-12)
    )
    return jnp.mean(jnp.std(normed, axis=0))
