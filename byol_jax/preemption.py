"""Graceful stop on SIGTERM/SIGINT: finish the current step, checkpoint it, exit cleanly.

Cloud TPU VMs and spot GPU instances get SIGTERM shortly before they disappear; a user presses
Ctrl-C. Either way the training loop sees the request at a step boundary instead of dying
mid-step. A second SIGINT interrupts immediately.

In a run that started JAX's distributed runtime (several processes, or one on a TPU VM),
SIGTERM belongs to the runtime: its preemption notifier (installed by
``jax.distributed.initialize``) hears it on any process and agrees on a stop step with the others
(``parallel.stop_agreed``). This module then leaves SIGTERM alone and turns a Ctrl-C into a
SIGTERM to its own process, so both reach the runtime.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


class StopSignal:
    """Context manager that turns SIGTERM/SIGINT into a flag polled by the training loop.

    ``runtime_owns_sigterm``: runs with JAX's distributed runtime, whose preemption notifier
    handles SIGTERM.
    """

    def __init__(self, *, runtime_owns_sigterm: bool = False) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._runtime_owns_sigterm = runtime_owns_sigterm
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user really wants out now
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if self._runtime_owns_sigterm:
            os.kill(os.getpid(), signal.SIGTERM)  # reaches the runtime's own handler

    def __enter__(self) -> StopSignal:
        # Handlers can only be installed from the main thread (e.g. not inside some test runners).
        if threading.current_thread() is threading.main_thread():
            signals = [signal.SIGINT]
            if not self._runtime_owns_sigterm:
                signals.append(signal.SIGTERM)
            for signum in signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
