"""Pre-emption friendly stops: SIGINT, SIGTERM and SIGUSR1 finish the step, save, exit.

Handlers only set a flag; the training loop checks it at optimizer-step
boundaries (collectively across ranks), saves a checkpoint, and exits with
130 (SIGINT), 143 (SIGTERM) or 0 (SIGUSR1: a cluster's "time is nearly up"),
leaving the run pending. A second Ctrl-C while saving is ignored rather than
tearing a checkpoint in half.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGUSR1: 0}


class StopFlag:
    """Which stop signal arrived first (None while none has)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(signal.Signals(self.signum), 1) if self.signum is not None else 0

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


@contextlib.contextmanager
def stop_signals() -> Iterator[StopFlag]:
    """Install the handlers for the block (main thread only), restoring the old ones after."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in EXIT_CODES}
    try:
        for sig in EXIT_CODES:
            signal.signal(sig, flag._handle)
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
