"""The pure BYOL training step: augment → online/target forward → loss → LARS → EMA.

``train_step`` is a module-level function; bind its keyword arguments with ``functools.partial``
and compile it with ``parallel.map_step``. All randomness is a function of (seed, step, global
example index), so the new state does not depend on how the global batch is split over devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import optax

from byol_jax import augment, ema, losses, parallel
from byol_jax.train_state import TrainState, target_view


def example_keys(
    seed: int, step: jax.Array, global_index: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-example keys for the two views, derived from (seed, step, global example index)."""
    step_key = jax.random.fold_in(jax.random.key(seed), step)
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(step_key, i)))(global_index)
    return keys[:, 0], keys[:, 1]


def make_views(
    images: jax.Array,
    step: jax.Array,
    *,
    seed: int,
    image_size: int,
    view_params: tuple[augment.ViewParams, augment.ViewParams],
    mean: Sequence[float],
    std: Sequence[float],
    valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Two independently augmented, normalized views of a local uint8 batch.

    ``valid`` (int [B, 2]): each image's (height, width) in the top-left corner of its padded
    source (``input_pipeline.train_batches``); crops are drawn from there only. None: the whole
    array is the image.
    """
    keys_1, keys_2 = example_keys(seed, step, parallel.global_example_index(images.shape[0]))
    view_1 = augment.augment_batch(keys_1, images, image_size, view_params[0], valid)
    view_2 = augment.augment_batch(keys_2, images, image_size, view_params[1], valid)
    return augment.normalize(view_1, mean, std), augment.normalize(view_2, mean, std)


def _apply_twice(
    net: nn.Module, params: Any, batch_stats: Any, view_1: jax.Array, view_2: jax.Array
) -> tuple[dict, dict, Any]:
    """Each view in its own training-mode pass (BN statistics per view), stats threaded through."""
    out_1, updates = net.apply(
        {"params": params, "batch_stats": batch_stats}, view_1, train=True, mutable=["batch_stats"]
    )
    out_2, updates = net.apply(
        {"params": params, "batch_stats": updates["batch_stats"]},
        view_2,
        train=True,
        mutable=["batch_stats"],
    )
    return out_1, out_2, updates["batch_stats"]


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    online_net: nn.Module,
    target_net: nn.Module,
    probe: nn.Module,
    optimizer: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    tau_schedule: Callable[[jax.Array], jax.Array],
    view_params: tuple[augment.ViewParams, augment.ViewParams],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One BYOL update on this device's shard of the global batch (call under ``map_step``)."""
    view_1, view_2 = make_views(
        batch["image"],
        state.step,
        seed=seed,
        image_size=image_size,
        view_params=view_params,
        mean=mean,
        std=std,
        valid=batch.get("valid"),  # None: every image fills its whole array
    )

    # The target needs no gradient; run it outside the differentiated function.
    target_1, target_2, target_stats = _apply_twice(
        target_net, state.target_params, state.target_batch_stats, view_1, view_2
    )

    def loss_fn(trainable: dict[str, Any]) -> tuple[jax.Array, tuple]:
        online_1, online_2, online_stats = _apply_twice(
            online_net, trainable["online"], state.online_batch_stats, view_1, view_2
        )
        byol = losses.byol_loss(
            online_1["prediction"],
            online_2["prediction"],
            target_1["projection"],
            target_2["projection"],
        )
        # The probe sees a stop-gradient embedding, so it never shapes the representation.
        logits = probe.apply(
            {"params": trainable["probe"]}, jax.lax.stop_gradient(online_1["embedding"])
        )
        probe_loss, probe_accuracy = losses.masked_cross_entropy(logits, batch["label"])
        aux = (online_stats, byol, probe_loss, probe_accuracy, online_1["projection"])
        return byol + probe_loss, aux

    grads, aux = jax.grad(loss_fn, has_aux=True)(state.trainable)
    online_stats, byol, probe_loss, probe_accuracy, projection = aux
    grads = parallel.mean_over_devices(grads)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)

    tau = tau_schedule(state.step)
    target_params = ema.ema_update(state.target_params, target_view(trainable["online"]), tau)

    new_state = state.replace(
        step=state.step + 1,
        online_params=trainable["online"],
        online_batch_stats=online_stats,
        target_params=target_params,
        target_batch_stats=target_stats,
        probe_params=trainable["probe"],
        opt_state=opt_state,
    )
    metrics = parallel.mean_over_devices(
        {
            "loss": byol,
            "probe_loss": probe_loss,
            "probe_accuracy": probe_accuracy,
            "projection_std": losses.projection_std(projection),
        }
    )
    metrics.update(
        grad_norm=optax.tree.norm(grads),
        learning_rate=lr_schedule(state.step),
        tau=tau,
    )
    return new_state, metrics
