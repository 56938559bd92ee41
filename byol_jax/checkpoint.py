"""Orbax checkpoints of the train state: asynchronous, keep-last-N, atomic, one resume step.

Saves take device arrays: the blocking part of a save is the device-to-host copy, and the write
to the workdir (a local folder or a ``gs://`` bucket) runs in Orbax's background thread while
training goes on. Orbax writes each step aside and commits it when complete (a rename on local
disk, a commit marker on object storage), so a run killed mid-save, even with kill -9, never
leaves a checkpoint that ``latest_step`` would pick up.

On resume, process 0 decides: it restores the newest readable step, and every process restores
that step or fails loudly (``restore_agreed``). Unreadable newer checkpoints are moved to
``WORKDIR/corrupt_checkpoints`` (never deleted), by process 0, after every process has read.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from byol_jax import parallel, storage


class CheckpointError(RuntimeError):
    """A checkpoint cannot be restored or written; the message says what to do."""


def checkpoint_dir(workdir: storage.PathLike) -> epath.Path:
    return storage.path(workdir) / "checkpoints"


def step_dirs(workdir: storage.PathLike) -> list[int]:
    """Steps with a (committed or not) folder in ``workdir/checkpoints``, ascending."""
    directory = checkpoint_dir(workdir)
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def create_manager(
    workdir: storage.PathLike, *, max_to_keep: int = 3, asynchronous: bool = True
) -> ocp.CheckpointManager:
    """A manager for ``workdir/checkpoints`` that keeps the newest ``max_to_keep`` steps."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=asynchronous,
        cleanup_tmp_directories=True,  # leftovers of a save that was killed
    )
    try:
        return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)
    except OSError as error:
        message = f"cannot use {checkpoint_dir(workdir)} for checkpoints: {error}"
        raise CheckpointError(message) from error


@jax.jit
def _finite_leaves(leaves: list[jax.Array]) -> jax.Array:
    flags = [
        jnp.all(jnp.isfinite(leaf)) if jnp.issubdtype(leaf.dtype, jnp.inexact) else jnp.array(True)
        for leaf in leaves
    ]
    return jnp.stack(flags)


def non_finite_leaves(state: Any) -> list[str]:
    """Names of the floating-point leaves of ``state`` holding NaN or Inf.

    Reduced where the arrays live (on device for device arrays): only one flag per leaf comes
    back to the host.
    """
    paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(state)[0], strict=True)
    flags = np.asarray(_finite_leaves(list(leaves)))
    return [jax.tree_util.keystr(path) for path, ok in zip(paths, flags, strict=True) if not ok]


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
    """Start saving ``state`` (device or host arrays) at ``step``; returns whether it will be.

    Returns once the arrays are copied to host memory; the write finishes in the background
    (``manager.wait_until_finished()`` waits for it). Refuses non-finite values, so a diverged
    run never overwrites good checkpoints with NaNs.
    """
    bad = non_finite_leaves(state)
    if bad:
        more = "..." if len(bad) > 3 else ""
        raise FloatingPointError(f"state at step {step} has non-finite values in {bad[:3]}{more}")
    try:
        return manager.save(step, args=ocp.args.StandardSave(state), force=force)
    except OSError as error:
        raise CheckpointError(
            f"could not write the checkpoint of step {step} to {manager.directory}: {error}. "
            f"Earlier checkpoints are intact (newest: step {_newest_finished(manager)})."
        ) from error


def wait(manager: ocp.CheckpointManager) -> None:
    """Block until the pending save (if any) is committed; write errors surface here."""
    try:
        manager.wait_until_finished()
    except OSError as error:
        raise CheckpointError(
            f"could not finish writing a checkpoint to {manager.directory}: {error}. Earlier "
            f"checkpoints are intact (newest: step {_newest_finished(manager)})."
        ) from error


def _newest_finished(manager: ocp.CheckpointManager) -> int | None:
    manager.reload()
    return manager.latest_step()


def _quarantine(workdir: storage.PathLike, step: int) -> epath.Path:
    target_dir = storage.makedirs(storage.path(workdir) / "corrupt_checkpoints")
    target = target_dir / str(step)
    suffix = 1
    while target.exists():
        target, suffix = target_dir / f"{step}.{suffix}", suffix + 1
    (checkpoint_dir(workdir) / str(step)).rename(target)
    return target


def _host_template(template: Any) -> Any:
    # NumPy leaves make Orbax restore NumPy arrays, whatever devices and sharding the saving
    # run had: a checkpoint of 2 processes x 4 devices resumes on 1 x 8 or on 1 CPU.
    return jax.tree.map(
        lambda x: np.zeros(np.shape(x), x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype),
        template,
    )


def restore_step(manager: ocp.CheckpointManager, step: int, template: Any) -> Any:
    """Checkpoint ``step`` as NumPy arrays in the structure of ``template``."""
    return manager.restore(step, args=ocp.args.StandardRestore(_host_template(template)))


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"


def restore_latest(
    manager: ocp.CheckpointManager, template: Any, *, workdir: storage.PathLike | None = None
) -> tuple[Any, int | None]:
    """This process alone: restore the newest readable checkpoint into ``template``'s structure.

    Returns ``(template, None)`` when there is no checkpoint. Unreadable newer checkpoints are
    moved aside (when ``workdir`` is given) and reported; if none is readable, raises
    ``CheckpointError`` and touches nothing rather than silently starting from scratch.
    Multi-process runs use ``restore_agreed``.
    """
    state, step, failures = _newest_readable(manager, template)
    _report_and_quarantine(manager, failures, step, workdir)
    return (template if step is None else state), step


def _newest_readable(
    manager: ocp.CheckpointManager, template: Any
) -> tuple[Any, int | None, list[tuple[int, str]]]:
    steps = sorted(manager.all_steps(), reverse=True)
    failures: list[tuple[int, str]] = []
    for step in steps:
        try:
            return restore_step(manager, step, template), step, failures
        except Exception as error:  # Orbax/TensorStore raise many types for bad files.
            failures.append((step, _reason(error)))
    if failures:
        details = "; ".join(f"step {s}: {r}" for s, r in failures)
        raise CheckpointError(
            f"none of the checkpoints in {manager.directory} can be restored ({details}). If "
            "the model or optimizer changed, use a new --workdir; otherwise move the damaged "
            "checkpoints away to start over."
        )
    return None, None, []


def _report_and_quarantine(
    manager: ocp.CheckpointManager,
    failures: list[tuple[int, str]],
    step: int | None,
    workdir: storage.PathLike | None,
) -> None:
    for bad_step, reason in failures:
        where = str(_quarantine(workdir, bad_step)) if workdir is not None else "left in place"
        message = f"checkpoint step {bad_step} is unreadable ({reason}); moved to {where}"
        logging.warning(message)
        print(f"warning: {message}; resuming from step {step} instead", flush=True)
    if failures and workdir is not None:
        manager.reload()


def restore_agreed(
    manager: ocp.CheckpointManager, template: Any, *, workdir: storage.PathLike
) -> tuple[Any, int | None]:
    """Every process restores the same step: the newest one process 0 can read.

    Process 0 picks it and broadcasts it; the others restore exactly that step or raise
    ``CheckpointError`` (a transient read error or a host that does not see the workdir must
    not resume one process at another step: the first collective would hang). Unreadable newer
    checkpoints are moved aside by process 0 only after every process has restored.
    """
    if jax.process_count() == 1:
        return restore_latest(manager, template, workdir=workdir)
    is_chief = jax.process_index() == 0
    # Orbax's managers restore collectively (all processes, with barriers); reading alone, as
    # process 0 does while choosing, needs a manager over this process only.
    reader = _process_local_reader(workdir)
    state, step, failures, error = None, None, [], None
    if is_chief:
        try:
            state, step, failures = _newest_readable(reader, template)
        except CheckpointError as raised:
            error = raised
    # -2: process 0 could not read any checkpoint; -1: there is none (a new run).
    chosen = parallel.broadcast_from_chief(-2 if error else (-1 if step is None else step))
    if error is not None:
        raise error
    if chosen == -2:
        raise CheckpointError("process 0 could not restore any checkpoint (see its error)")
    if not is_chief and chosen >= 0:
        try:
            state = restore_step(reader, chosen, template)
        except Exception as raised:  # Orbax/TensorStore raise many types for bad files.
            raise CheckpointError(
                f"process {jax.process_index()} cannot read checkpoint step {chosen} of "
                f"{manager.directory}, which process 0 resumes from ({_reason(raised)}). Every "
                "process must see the same workdir (a bucket or a shared filesystem)."
            ) from raised
    reader.close()
    parallel.barrier("checkpoint_restored")
    if is_chief:
        _report_and_quarantine(manager, failures, step, workdir)
    parallel.barrier("checkpoint_quarantined")
    manager.reload()
    return (template if chosen < 0 else state), (None if chosen < 0 else chosen)


def _process_local_reader(workdir: storage.PathLike) -> ocp.CheckpointManager:
    me = jax.process_index()
    options = ocp.CheckpointManagerOptions(
        read_only=True,
        create=False,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}
        ),
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def _odd_weights(n: int) -> jax.Array:
    # Element i is weighted by an odd constant mod 2^32 (invertible): changing any one element
    # changes the sum, so equal fingerprints mean bitwise-equal states but for collisions.
    i = jnp.arange(n, dtype=jnp.uint32)
    return i * jnp.uint32(2654435761) + jnp.uint32(0x9E3779B9) | jnp.uint32(1)


def _leaf_fingerprint(leaf: jax.Array) -> jax.Array:
    flat = jnp.ravel(leaf)
    if flat.dtype.itemsize == 4:
        bits = jax.lax.bitcast_convert_type(flat, jnp.uint32)
    elif flat.dtype.itemsize == 2:
        bits = jax.lax.bitcast_convert_type(flat, jnp.uint16).astype(jnp.uint32)
    else:
        bits = flat.astype(jnp.uint32)
    return jnp.sum(bits * _odd_weights(flat.size), dtype=jnp.uint32)


def fingerprint(state: Any) -> jax.Array:
    """uint32[num_leaves]: a position-weighted sum of each leaf's bits (traceable; on device)."""
    return jnp.stack([_leaf_fingerprint(leaf) for leaf in jax.tree.leaves(state)])
