"""SIGTERM as an exception while a CLI command runs.

A batch scheduler's preemption or time limit (Slurm, Kubernetes) and ``kill`` send SIGTERM, which by default ends
Python at once: no message, queued checkpoint writes dropped. The CLI (not the library: importing mambaseg changes
no signal handler) turns it into :class:`Terminated` for the duration of a command, so a training run unwinds as on
Ctrl-C (finishes its queued writes, says which epoch ``--resume`` continues from) and the command exits with 143.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["Terminated", "sigterm_raises"]


class Terminated(KeyboardInterrupt):
    """SIGTERM received during a CLI command (a ``KeyboardInterrupt``, so it unwinds where Ctrl-C does; DataLoader
    workers, which ignore ``KeyboardInterrupt``, leave it to the main process)."""

    exit_code = 128 + signal.SIGTERM

    def __init__(self, *args: object) -> None:  # *args: pickling (a process-pool worker's) passes the message
        super().__init__(*(args or ("terminated by SIGTERM",)))


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread; the previous handler comes back
    after it. Outside the main thread (where Python cannot set handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        # a second SIGTERM (a scheduler signals again, or the whole process group) must not cut the unwinding
        # (queued checkpoint writes); the scheduler's SIGKILL stays the hard stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        # None: the previous handler was not installed from Python; the default is what it can be restored to
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
