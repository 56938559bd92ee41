"""Everything that knows about devices: the mapped axis, replication, batch sharding, pmap.

Moving from ``jax.pmap`` to ``jax.shard_map`` should only touch this file: the rest of the code
uses ``AXIS_NAME`` (for cross-replica BatchNorm), ``mean_over_devices`` and
``global_example_index`` inside the step, and ``replicate``/``unreplicate``/``shard_batch``/
``map_step`` outside it.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

AXIS_NAME = "devices"


def local_device_count() -> int:
    return jax.local_device_count()


def global_device_count() -> int:
    return jax.device_count()


def _local_sharding() -> jax.sharding.NamedSharding:
    # The same sharding that pmap gives its outputs: a leading axis over local devices, named
    # like the mapped axis. Matching it avoids a recompilation on the second step.
    devices = np.array(jax.local_devices())
    return jax.sharding.NamedSharding(
        jax.sharding.Mesh(devices, (AXIS_NAME,)), jax.sharding.PartitionSpec(AXIS_NAME)
    )


def replicate(tree: Any) -> Any:
    """Copy a host pytree onto every local device (leading axis = local device)."""
    count = jax.local_device_count()
    sharding = _local_sharding()
    return jax.tree.map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (count, *np.shape(x))), sharding),
        tree,
    )


def unreplicate(tree: Any) -> Any:
    """The first local replica of a replicated pytree, as device arrays."""
    return jax.tree.map(lambda x: x.addressable_shards[0].data[0], tree)


def fetch(tree: Any) -> Any:
    """First replica of a replicated pytree as NumPy (for logging and saving)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data[0]), tree)


def shard_batch(batch: Any) -> Any:
    """Split each host array's leading axis over local devices: [B, ...] → [D, B/D, ...]."""
    count = jax.local_device_count()
    sharding = _local_sharding()

    def put(x: np.ndarray) -> jax.Array:
        if x.shape[0] % count:
            raise ValueError(
                f"host batch of {x.shape[0]} examples does not split over {count} devices"
            )
        return jax.device_put(x.reshape(count, x.shape[0] // count, *x.shape[1:]), sharding)

    return jax.tree.map(put, batch)


def prefetch_to_device(batches: Iterable[Any], size: int = 2) -> Iterator[Any]:
    """Shard host batches onto devices ``size`` steps ahead, so the step never waits on a copy."""
    queue: collections.deque = collections.deque()
    iterator = iter(batches)
    for batch in itertools.islice(iterator, size):
        queue.append(shard_batch(batch))
    while queue:
        yield queue.popleft()
        for batch in itertools.islice(iterator, 1):
            queue.append(shard_batch(batch))


def map_step(
    step_fn: Callable, donate_state: bool = True, devices: Sequence[Any] | None = None
) -> Callable:
    """Compile ``step_fn(state, batch)`` over local devices with the shared axis name.

    The state (argument 0) is donated so its buffers are reused for the new state. ``devices``
    (default: all local ones) lets the preflight compile for a topology it does not have.
    """
    return jax.pmap(
        step_fn,
        axis_name=AXIS_NAME,
        donate_argnums=(0,) if donate_state else (),
        devices=devices,
    )


def map_function(fn: Callable, **kwargs: Any) -> Callable:
    """pmap any per-device function over the shared axis (evaluation, feature extraction).

    ``kwargs`` go to ``jax.pmap`` (``donate_argnums``, ``devices``, ...).
    """
    return jax.pmap(fn, axis_name=AXIS_NAME, **kwargs)


def gather_from_processes(value: np.ndarray) -> np.ndarray:
    """``value`` of every process stacked in process order: [process_count, ...] on all.

    A device collective that the host waits for: for checkpoint steps, never every step.
    """
    if jax.process_count() == 1:
        return np.asarray(value)[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(value)))


def broadcast_from_chief(value: int) -> int:
    """Process 0's ``value`` on every process (a one-off agreement, e.g. the resume step)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def runtime_owns_preemption() -> bool:
    """Whether JAX's distributed runtime hears this process's SIGTERM (its preemption notifier).

    Every run that started the runtime: a pod, a GPU cluster, and a single-host TPU VM too
    (launch.py starts it there), where a notice that arrives before the training loop (while
    compiling or preparing data) is then still honoured at the first step.
    """
    return jax.process_count() > 1 or jax.distributed.is_initialized()


def stop_agreed(step: int, local_request: bool) -> bool:
    """Whether to stop after ``step``: true on every process at the same step.

    Without JAX's distributed runtime: its own signal flag. With it (several processes, or one
    on a TPU VM): the runtime, which hears SIGTERM on any process (its preemption notifier),
    agrees on a step with the others in the background and answers here from host memory: no
    device work and no wait on the devices, so the host keeps dispatching steps ahead. Must be
    called at every step, with the same steps on all.
    """
    if not runtime_owns_preemption():
        return local_request
    from jax.experimental import multihost_utils

    return multihost_utils.reached_preemption_sync_point(step)


def replicated_to_global(tree: Any) -> Any:
    """A pmap-replicated pytree ([local devices, ...] leaves) as global arrays without the
    device axis, replicated over every device of every process: what a checkpoint saves.

    Stays on device (one on-device copy per leaf and device; no host transfer), so Orbax copies
    it to the host itself and only one replica is written.
    """
    sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(jax.devices()), (AXIS_NAME,)), jax.sharding.PartitionSpec()
    )

    def to_global(x: jax.Array) -> jax.Array:
        shape = x.shape[1:]
        shards = [shard.data.reshape(shape) for shard in x.addressable_shards]
        return jax.make_array_from_single_device_arrays(shape, sharding, shards)

    return jax.tree.map(to_global, tree)


# ---- used inside mapped functions -------------------------------------------------------------


def mean_over_devices(tree: Any) -> Any:
    """Mean of a pytree across all devices of all processes (gradients, metrics)."""
    # Over one device the mean is the identity, but XLA:CPU still runs the all-reduce as a copy
    # of every gradient (~10 ms of the setup-A step); the axis size is static, so skip it.
    if jax.lax.axis_size(AXIS_NAME) == 1:
        return tree
    return jax.lax.pmean(tree, axis_name=AXIS_NAME)


def sum_over_devices(tree: Any) -> Any:
    if jax.lax.axis_size(AXIS_NAME) == 1:  # See mean_over_devices.
        return tree
    return jax.lax.psum(tree, axis_name=AXIS_NAME)


def global_example_index(local_batch_size: int) -> jax.Array:
    """Index of each local example in the global batch; independent of the device layout."""
    device = jax.lax.axis_index(AXIS_NAME)
    return device * local_batch_size + jnp.arange(local_batch_size)


# ---- per-process rows of a globally sharded set (evaluation features) -------------------------


def shard_rows(rows: Any, multiple: int = 1) -> Any:
    """This process's rows [n, ...] → [local devices, m, ...] (zero-padded, m % multiple == 0).

    With the pmapped functions below, the rows of all processes together form one global array
    split over every device (process-major, as ``global_example_index`` orders examples); no
    process ever holds the others' rows. Callers mark padding rows themselves (e.g. label -1).
    """
    count = jax.local_device_count()

    def put(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        per_device = -(-x.shape[0] // count)
        per_device = max(multiple, -(-per_device // multiple) * multiple)
        padded = np.zeros((count * per_device, *x.shape[1:]), x.dtype)
        padded[: x.shape[0]] = x
        return shard_batch(padded)

    return jax.tree.map(put, rows)


def unshard_rows(x: jax.Array) -> np.ndarray:
    """[local devices, m, ...] mapped output → host [local devices * m, ...] of this process."""
    x = np.asarray(x)
    return x.reshape(-1, *x.shape[2:])


def max_over_processes(value: int) -> int:
    """The largest ``value`` of any process (e.g. a row count every process must pad to)."""
    return int(np.max(gather_from_processes(np.int64(value))))


def sum_over_processes(value: np.ndarray) -> np.ndarray:
    """Elementwise sum of ``value`` over processes (small host arrays: counts, moments)."""
    return np.sum(gather_from_processes(np.asarray(value)), axis=0)


# ---- used inside mapped functions (collectives over every device of every process) ------------


def device_index() -> jax.Array:
    """This device's position on the mapped axis (process-major across processes)."""
    return jax.lax.axis_index(AXIS_NAME)


def gather_over_devices(x: jax.Array) -> jax.Array:
    """Every device's ``x`` [n, ...] concatenated in device order: [devices * n, ...] on all."""
    if jax.lax.axis_size(AXIS_NAME) == 1:
        return x
    return jax.lax.all_gather(x, AXIS_NAME, tiled=True)


def exchange_over_devices(x: jax.Array) -> jax.Array:
    """All-to-all: block ``j`` of ``x`` [devices, ...] goes to device ``j``; the result's block
    ``i`` is what device ``i`` sent here (e.g. candidates for this device's own queries)."""
    if jax.lax.axis_size(AXIS_NAME) == 1:
        return x
    return jax.lax.all_to_all(x, AXIS_NAME, split_axis=0, concat_axis=0, tiled=True)


# Full-batch objectives whose data is split over devices: ``global_sum`` of per-device partial
# sums gives every device the global value, and ``shared`` marks parameters that are one value
# held on every device. Their gradients are written out (not left to psum's own transpose, which
# under pmap hands each device the cotangent summed over devices): the gradient of
# ``global_sum(f(shared(p)))`` is the sum over devices of each device's own gradient, the same
# on every device, so optimizers that differentiate a value function (line searches) see it too.


@jax.custom_vjp
def global_sum(x: Any) -> Any:
    """Sum of ``x`` over every device of every process; its gradient stays per device."""
    return jax.lax.psum(x, AXIS_NAME)


def _global_sum_fwd(x: Any) -> tuple[Any, None]:
    return global_sum(x), None


def _global_sum_bwd(_: None, g: Any) -> tuple[Any]:
    return (g,)


global_sum.defvjp(_global_sum_fwd, _global_sum_bwd)


@jax.custom_vjp
def shared(tree: Any) -> Any:
    """Identity on parameters held identically on every device; their gradient is summed."""
    return tree


def _shared_fwd(tree: Any) -> tuple[Any, None]:
    return tree, None


def _shared_bwd(_: None, g: Any) -> tuple[Any]:
    return (jax.lax.psum(g, AXIS_NAME),)


shared.defvjp(_shared_fwd, _shared_bwd)
