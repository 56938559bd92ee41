"""The target network's exponential moving average and its cosine τ schedule."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def tau_schedule(base_tau: float, total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """τ_k = 1 − (1 − τ_base)·(cos(π·k/K) + 1)/2 for 0-based step k, clamped at k = K.

    k counts optimizer steps (never micro-batches), so τ reaches 1 exactly at the last step.
    """
    if not 0.0 <= base_tau <= 1.0:
        raise ValueError(f"base_tau must be in [0, 1], got {base_tau}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")

    def schedule(step: jax.Array) -> jax.Array:
        progress = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps) / total_steps
        return 1.0 - (1.0 - base_tau) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0

    return schedule


def ema_update(target: optax.Params, online: optax.Params, tau: jax.Array) -> optax.Params:
    """ξ ← τ·ξ + (1 − τ)·θ, leaf by leaf; ``online`` must have the target's tree structure."""
    return jax.tree.map(lambda t, o: tau * t + (1.0 - tau) * o, target, online)
