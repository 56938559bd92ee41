"""A profiler window: a ``jax.profiler`` trace of a few training steps, for TensorBoard.

``--config.profile_steps=(first,last)`` traces steps ``first`` to ``last`` (inclusive) on every
process into ``WORKDIR/profile`` (``plugins/profile/<run>/<host>.xplane.pb``, one file per
host); open it with TensorBoard's profile plugin (``tensorboard --logdir WORKDIR/profile``,
with ``tensorboard-plugin-profile`` installed). Skip the first step: it includes compilation.
"""

from __future__ import annotations

from typing import Any

import jax

from byol_jax import storage

FOLDER = "profile"


class Window:
    """Starts a trace before step ``first`` and stops it after step ``last`` has finished."""

    def __init__(self, steps: tuple[int, ...], folder: storage.PathLike):
        if steps and (len(steps) != 2 or not 1 <= steps[0] <= steps[1]):
            raise ValueError(
                f"profile_steps must be () or (first, last) with 1 <= first <= last, got {steps}"
            )
        self._first, self._last = steps if steps else (0, -1)
        self._folder = str(folder)
        self._active = False

    def before_step(self, step: int) -> None:
        if step == self._first:
            jax.profiler.start_trace(self._folder)
            self._active = True

    def after_step(self, step: int, outputs: Any) -> None:
        if self._active and step == self._last:
            jax.block_until_ready(outputs)  # the trace covers the steps' device work
            self.close()

    def close(self) -> None:
        """Stop a trace still running (a run stopped inside the window)."""
        if self._active:
            jax.profiler.stop_trace()
            self._active = False
