"""LARS with the released BYOL semantics, built from optax pieces, and the LR schedule.

Why not ``optax.lars``: it multiplies by the learning rate *before* the momentum trace, so the
trace accumulates lr-scaled updates. The released BYOL applies momentum to the LR-free update and
scales by the current LR afterwards. The two agree only at constant LR; under warmup and cosine
decay they differ. This module builds the released order exactly:

    g ← g + wd·w                       (masked: kernels only)
    g ← g · η·‖w‖/‖g‖                  (masked trust ratio; ratio 1 where a norm is 0)
    m ← 0.9·m + g                      (trace)
    w ← w − lr_t·m

``lars`` computes these four steps leaf by leaf in one function (``_lars_chain`` is the same
optimizer as an ``optax.chain``; it defines the state layout and is the reference in tests).
XLA:CPU compiled the chain, with its masked sub-transforms, to more passes over every parameter:
LARS + EMA on the setup-A parameters took ~76 ms as a chain and ~42 ms fused (~8% of the step).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
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


def _is_pair(x: object) -> bool:
    return isinstance(x, tuple)


def _lars_chain(
    learning_rate: float | optax.Schedule,
    weight_decay: float,
    momentum: float,
    trust_coefficient: float,
    mask: Callable[[optax.Params], optax.Params],
) -> optax.GradientTransformation:
    """LARS in the released order as a chain of optax transforms (the reference)."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient), mask),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_learning_rate(learning_rate),
    )


def lars(
    learning_rate: float | optax.Schedule,
    weight_decay: float,
    momentum: float = 0.9,
    trust_coefficient: float = 1e-3,
    mask: Callable[[optax.Params], optax.Params] = decay_mask,
) -> optax.GradientTransformation:
    """LARS in the released BYOL order (see module docstring), fused leaf by leaf.

    Same updates and the same state pytree as ``_lars_chain`` (so checkpoints are
    interchangeable): ``(MaskedState, MaskedState, TraceState(trace), lr state)``, where the LR
    state holds the step count when ``learning_rate`` is a schedule.
    """
    chain = _lars_chain(learning_rate, weight_decay, momentum, trust_coefficient, mask)

    def leaf_update(
        grad: jax.Array, param: jax.Array, trace: jax.Array, decay: bool, lr: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        if decay:
            grad = grad + weight_decay * param
            param_norm = jnp.linalg.norm(param)
            grad_norm = jnp.linalg.norm(grad)
            # As optax.scale_by_trust_ratio: ratio 1 where either norm is 0.
            ratio = jnp.where(
                (param_norm == 0.0) | (grad_norm == 0.0),
                jnp.ones((), param.dtype),
                trust_coefficient * param_norm / grad_norm,
            )
            grad = grad * ratio
        trace = momentum * trace + grad
        return trace, -lr.astype(trace.dtype) * trace

    def update_fn(
        updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.OptState]:
        if params is None:
            raise ValueError("lars needs the parameters (trust ratio and weight decay)")
        decay_state, ratio_state, trace_state, lr_state = state
        if callable(learning_rate):
            lr = jnp.asarray(learning_rate(lr_state.count))
            lr_state = lr_state._replace(count=optax.safe_increment(lr_state.count))
        else:
            lr = jnp.asarray(learning_rate)
        pairs = jax.tree.map(
            lambda g, w, m, d: leaf_update(g, w, m, d, lr),
            updates,
            params,
            trace_state.trace,
            mask(params),
        )
        new_trace = jax.tree.map(lambda pair: pair[0], pairs, is_leaf=_is_pair)
        new_updates = jax.tree.map(lambda pair: pair[1], pairs, is_leaf=_is_pair)
        new_state = (decay_state, ratio_state, trace_state._replace(trace=new_trace), lr_state)
        return new_updates, new_state

    return optax.GradientTransformation(chain.init, update_fn)
