"""The training state: one pytree holding everything a BYOL step reads and writes."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Step counter, online/target networks (params + BN statistics), probe and optimizer."""

    step: jax.Array
    online_params: Any
    online_batch_stats: Any
    target_params: Any
    target_batch_stats: Any
    probe_params: Any
    opt_state: optax.OptState

    @property
    def trainable(self) -> dict[str, Any]:
        """What the optimizer updates: the online network and the linear probe."""
        return {"online": self.online_params, "probe": self.probe_params}


def target_view(online_params: Any) -> Any:
    """The subtree of the online parameters that the target network mirrors."""
    return {name: online_params[name] for name in ("encoder", "projector")}


def create_train_state(
    key: jax.Array,
    online_net: nn.Module,
    target_net: nn.Module,
    probe: nn.Module,
    optimizer: optax.GradientTransformation,
    image_shape: tuple[int, int, int],
) -> TrainState:
    """Initialize all parameters (unreplicated, compiled once).

    The target starts as a copy of the online encoder and projector (the released code draws it
    from a separate RNG; both are reported to train the same). BN statistics are copied too, but
    are the target's own from then on.
    """
    return jax.jit(
        functools.partial(
            _create,
            online_net=online_net,
            target_net=target_net,
            probe=probe,
            optimizer=optimizer,
            image_shape=image_shape,
        )
    )(key)


def _create(key, *, online_net, target_net, probe, optimizer, image_shape) -> TrainState:
    dummy = jnp.zeros((2, *image_shape), jnp.float32)
    online_key, probe_key = jax.random.split(key)
    online_vars = online_net.init(online_key, dummy, train=False)
    target_vars = jax.eval_shape(lambda: target_net.init(online_key, dummy, train=False))
    target_params = target_view(online_vars["params"])
    target_stats = target_view(online_vars["batch_stats"])
    # Guard against a target architecture that does not mirror the online one.
    jax.tree.map(lambda a, b: None, target_params, dict(target_vars["params"]))

    embedding_shape = online_net.apply(online_vars, dummy, train=False)["embedding"].shape
    probe_params = probe.init(probe_key, jnp.zeros(embedding_shape, jnp.float32))["params"]
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        online_params=online_vars["params"],
        online_batch_stats=online_vars["batch_stats"],
        target_params=target_params,
        target_batch_stats=target_stats,
        probe_params=probe_params,
        opt_state=None,
    )
    return state.replace(opt_state=optimizer.init(state.trainable))
