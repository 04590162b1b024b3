"""Graceful interruption: SIGTERM/SIGINT ask the training loop to checkpoint and stop at the next step."""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["StopRequest"]


class StopRequest:
    """Context manager that turns SIGINT/SIGTERM into a flag (:attr:`requested`) polled after each step.

    A second signal raises :class:`KeyboardInterrupt` at once (for a loop stuck e.g. in data loading).
    Handlers are installed only in the main thread (Python forbids it elsewhere) and the previous handlers are
    restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"signal {signum} received twice")
        self.requested = True

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
