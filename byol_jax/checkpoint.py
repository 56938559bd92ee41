"""Orbax checkpoints of the train state: periodic, keep-last-N, atomic, resume-or-init.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-save never leaves a checkpoint that ``latest_step`` would pick up.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
    """A checkpoint directory exists but cannot be restored."""


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
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
    """Save a host (unreplicated) state pytree at ``step``; returns whether it was written."""
    saved = manager.save(step, args=ocp.args.StandardSave(state), force=force)
    manager.wait_until_finished()
    return saved


def restore_latest(manager: ocp.CheckpointManager, template: Any) -> tuple[Any, int | None]:
    """Restore the newest checkpoint into the structure of ``template``.

    Returns ``(template, None)`` when the directory holds no checkpoint yet.
    """
    step = manager.latest_step()
    if step is None:
        return template, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as error:  # Orbax raises many types; report them in one clear way.
        raise CheckpointError(
            f"cannot restore checkpoint step {step} in {manager.directory}: "
            f"{type(error).__name__}: {error}. If the model or optimizer changed, use a new "
            "--workdir."
        ) from error
    logging.info("Restored checkpoint of step %d from %s", step, manager.directory)
    return restored, step
