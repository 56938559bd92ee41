"""Graceful stop on SIGTERM/SIGINT: finish the current step, checkpoint it, exit cleanly.

Cloud TPU VMs and spot GPU instances get SIGTERM shortly before they disappear; a user presses
Ctrl-C. Either way the training loop sees ``requested`` at the next step boundary instead of
dying mid-step. A second SIGINT interrupts immediately.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopSignal:
    """Context manager that turns SIGTERM/SIGINT into a flag polled by the training loop."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user really wants out now
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopSignal:
        # Handlers can only be installed from the main thread (e.g. not inside some test runners).
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
