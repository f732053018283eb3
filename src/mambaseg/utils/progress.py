"""Progress of long loops for a console: a rich bar on a terminal, plain lines everywhere else.

Under ``nohup``, SLURM, CI or a pipe, a rich live bar draws nothing until it stops, so a long evaluation looks
frozen. :class:`ProgressReporter` draws the bar only when the console is a terminal; otherwise it prints one line
at the first update, then at most one every ``every_s`` seconds, and one at the end::

    evaluating test: 12/40 (30%), 41 s elapsed, about 95 s left

An instance is also a ``(done, total)`` callable, the progress hook of the evaluators and of
``Predictor.predict_path``.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ProgressReporter", "PLAIN_EVERY_S", "is_terminal"]

#: seconds between two plain progress lines
PLAIN_EVERY_S = 30.0


def is_terminal(console: Any) -> bool:
    return bool(getattr(console, "is_terminal", False)) and not bool(getattr(console, "is_dumb_terminal", False))


def _secs(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class ProgressReporter:
    """Progress of one loop of known (or unknown) length.

    Args:
        console: a ``rich.console.Console`` (``None`` = silent).
        description: what is progressing (``"evaluating test"``).
        total: number of items, if known (``update`` may give it later).
        enabled: ``False`` = silent.
        every_s: seconds between two plain lines (non-terminal consoles).
        transient: remove the rich bar when done (terminal only).
    """

    def __init__(self, console: Any, description: str, *, total: int | None = None, enabled: bool = True,
                 every_s: float = PLAIN_EVERY_S, transient: bool = True) -> None:
        self.console = console if enabled else None
        self.description = description
        self.total = total
        self.every_s = float(every_s)
        self.transient = transient
        self.done = 0
        self._bar: Any = None
        self._task: Any = None
        self._t0 = time.perf_counter()
        self._last_line: float | None = None
        self._last_done = -1
        self.plain = self.console is not None and not is_terminal(self.console)

    def __enter__(self) -> ProgressReporter:
        self._t0 = time.perf_counter()
        if self.console is not None and not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=self.transient)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.plain and exc[0] is None and self.done != self._last_done and self.done > 0:
            self._line("")

    def __call__(self, done: int, total: int | None = None) -> None:
        self.update(done, total)

    def update(self, done: int, total: int | None = None, info: str = "") -> None:
        """``done`` items of ``total`` finished (``info``: a short text such as the running loss)."""
        self.done = int(done)
        if total is not None:
            self.total = int(total)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, total=self.total, info=info)
            return
        if not self.plain:
            return
        now = time.perf_counter()
        final = self.total is not None and self.done >= self.total
        if self._last_line is None or final or now - self._last_line >= self.every_s:
            self._line(info)

    def advance(self, n: int = 1, info: str = "") -> None:
        self.update(self.done + n, None, info)

    def print(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg, highlight=False)

    def _line(self, info: str) -> None:
        self._last_line = time.perf_counter()
        self._last_done = self.done
        elapsed = self._last_line - self._t0
        if self.total:
            pct = f" ({100.0 * self.done / self.total:.0f}%)"
            left = ""
            if 0 < self.done < self.total:
                left = f", about {_secs(elapsed / self.done * (self.total - self.done))} left"
            count = f"{self.done}/{self.total}{pct}"
        else:
            count, left = str(self.done), ""
        self.console.print(f"{self.description}: {count}, {_secs(elapsed)} elapsed{left}"
                           + (f", {info}" if info else ""), highlight=False, soft_wrap=True)
