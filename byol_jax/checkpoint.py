"""Orbax checkpoints of the train state: periodic, keep-last-N, atomic, resume-or-init.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-save (even with kill -9) never leaves a checkpoint that ``latest_step`` would pick up. A
checkpoint that is on disk but unreadable (truncated or garbled files) is skipped in favour of the
newest readable one and moved to ``WORKDIR/corrupt_checkpoints`` (never deleted).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
    """A checkpoint cannot be restored or written; the message says what to do."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(
    workdir: str, *, max_to_keep: int = 3, asynchronous: bool = False
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


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
    """Save a host (unreplicated) state pytree at ``step``; returns whether it was written.

    Refuses non-finite values, so a diverged run never overwrites good checkpoints with NaNs.
    """
    bad = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
        if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.all(np.isfinite(leaf))
    ]
    if bad:
        more = "..." if len(bad) > 3 else ""
        raise FloatingPointError(f"state at step {step} has non-finite values in {bad[:3]}{more}")
    try:
        saved = manager.save(step, args=ocp.args.StandardSave(state), force=force)
        manager.wait_until_finished()
    except OSError as error:
        raise CheckpointError(
            f"could not write the checkpoint of step {step} to {manager.directory}: {error}. "
            f"Earlier checkpoints are intact (newest: step {manager.latest_step()})."
        ) from error
    return saved


def _quarantine(workdir: str, step: int) -> str:
    target_dir = os.path.join(os.path.abspath(workdir), "corrupt_checkpoints")
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, str(step))
    suffix = 1
    while os.path.exists(target):
        target, suffix = os.path.join(target_dir, f"{step}.{suffix}"), suffix + 1
    shutil.move(os.path.join(checkpoint_dir(workdir), str(step)), target)
    return target


def restore_latest(
    manager: ocp.CheckpointManager, template: Any, *, workdir: str | None = None
) -> tuple[Any, int | None]:
    """Restore the newest readable checkpoint into the structure of ``template``.

    Returns ``(template, None)`` when there is no checkpoint. Unreadable newer checkpoints are
    moved aside (when ``workdir`` is given) and reported; if none is readable, raises
    ``CheckpointError`` and touches nothing rather than silently starting from scratch.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return template, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    failures: list[tuple[int, str]] = []
    for step in steps:
        try:
            restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as error:  # Orbax/TensorStore raise many types for bad files.
            failures.append((step, f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"))
            continue
        for bad_step, reason in failures:
            where = _quarantine(workdir, bad_step) if workdir else "left in place"
            message = f"checkpoint step {bad_step} is unreadable ({reason}); moved to {where}"
            logging.warning(message)
            print(f"warning: {message}; resuming from step {step} instead", flush=True)
        if failures and workdir:
            manager.reload()
        return restored, step
    details = "; ".join(f"step {s}: {r}" for s, r in failures)
    raise CheckpointError(
        f"none of the checkpoints in {manager.directory} can be restored ({details}). If the "
        "model or optimizer changed, use a new --workdir; otherwise move the damaged "
        "checkpoints away to start over."
    )
