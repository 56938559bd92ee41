"""LARS with the released BYOL semantics, built from optax pieces, and the LR schedule.

Why not ``optax.lars``: it multiplies by the learning rate *before* the momentum trace, so the
trace accumulates lr-scaled updates. The released BYOL applies momentum to the LR-free update and
scales by the current LR afterwards. The two agree only at constant LR; under warmup and cosine
decay they differ. This module builds the released order exactly:

    g ← g + wd·w                       (masked: kernels only)
    g ← g · η·‖w‖/‖g‖                  (masked trust ratio; ratio 1 where a norm is 0)
    m ← 0.9·m + g                      (trace)
    w ← w − lr_t·m
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax


def decay_mask(params: optax.Params) -> optax.Params:
    """True for leaves that get weight decay and the trust ratio: every ``kernel``.

    Biases and all BatchNorm parameters (``scale``/``bias``, also those in the MLP heads) are
    excluded, as in the paper.
    """

    def is_kernel(path: tuple, _: jax.Array) -> bool:
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return name == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def learning_rate_schedule(
    base_lr: float, batch_size: int, total_steps: int, warmup_steps: int
) -> optax.Schedule:
    """LR = base_lr·batch/256, linear warmup from 0, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")
    peak = base_lr * batch_size / 256.0
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=0.0,
    )


def lars(
    learning_rate: float | optax.Schedule,
    weight_decay: float,
    momentum: float = 0.9,
    trust_coefficient: float = 1e-3,
    mask: Callable[[optax.Params], optax.Params] = decay_mask,
) -> optax.GradientTransformation:
    """LARS in the released BYOL order (see module docstring)."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient), mask),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_learning_rate(learning_rate),
    )
