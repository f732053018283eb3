"""Shared CLI helpers: the error policy, consoles, option parsers."""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console

from mambaseg.utils.signals import Terminated, sigterm_raises

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _State:
    debug: bool = False


state = _State()
console = Console()
err_console = Console(stderr=True)


class CLIError(Exception):
    """An error with a message meant for the user as is."""


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Show the warnings raised inside as ``warning: <message>`` lines on stderr, in the CLI's style, instead of
    Python's ``file:line: Category: message`` plus a source line. Nothing is hidden: every warning the filters in
    force let through is printed, also when the body fails."""
    with warnings.catch_warnings(record=True) as caught:  # the filters in force stay as they are
        try:
            yield
        finally:
            for w in caught:
                err_console.print(f"warning: {w.message}", style="yellow", highlight=False, markup=False)


#: help of ``--fold-checkpoint`` (predict, evaluate): which checkpoint of each fold a cross-validation root names
FOLD_CHECKPOINT_HELP = ("The checkpoint of each fold a cross-validation root stands for: last (final weights, what "
                        "evaluate --cv scores) or best (chosen on the fold's own held-out cases).")


#: most lines of one error message the CLI prints; the rest is counted
MAX_ERROR_LINES = 40


def _os_error_text(exc: OSError) -> str:
    """``<path>: <cause>`` of an OS error (disk full, permission denied, read-only file system, ...)."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename is not None else None
    if where is None:
        return cause
    return f"{where}: {cause} ({type(exc).__name__}, errno {exc.errno})"


def _message(exc: BaseException, max_lines: int = MAX_ERROR_LINES) -> str:
    """The whole message of a library error (every problem line; capped at ``max_lines`` with a count)."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        msg = _os_error_text(exc)
    else:
        msg = str(exc).strip()
    if isinstance(exc, KeyError) and msg.startswith(("'", '"')) and msg.endswith(("'", '"')):
        msg = msg[1:-1]
    lines = [ln.rstrip() for ln in msg.splitlines()] if msg else []
    name = type(exc).__name__
    if not lines:
        return name
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [f"... and {len(lines) - max_lines + 1} more line(s)"]
    text = "\n".join(lines)
    if isinstance(exc, (CLIError, ValueError, FileNotFoundError, KeyError, RuntimeError, TypeError, OSError)):
        return text
    return f"{name}: {text}"


def _one_line(exc: BaseException) -> str:
    """First line of :func:`_message` (kept for callers that need a single line)."""
    return _message(exc).splitlines()[0]


def handle_errors(fn: F) -> F:
    """Run a command; print expected failures as ``error: <message>`` and exit 1 (traceback with ``--debug``).

    Ctrl-C exits with 130, SIGTERM (a scheduler's preemption, ``kill``) with 143: during the command SIGTERM
    raises :class:`~mambaseg.utils.signals.Terminated`, so a training run says what it keeps as on Ctrl-C.

    The whole message is printed (a dataset check lists every problem, a checkpoint mismatch every tensor),
    capped at :data:`MAX_ERROR_LINES` lines."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_raises():
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt as exc:
            if state.debug:
                raise
            word, code = ("terminated (SIGTERM)", Terminated.exit_code) if isinstance(exc, Terminated) \
                else ("interrupted", 130)
            err_console.print(f"error: {word}", style="bold red", highlight=False, markup=False)
            raise typer.Exit(code) from None
        except Exception as exc:  # the CLI boundary: every error becomes one message
            if state.debug:
                raise
            err_console.print(f"error: {_message(exc)}", style="bold red", highlight=False, markup=False,
                              soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def given_options(values: dict[str, Any]) -> dict[str, Any]:
    """Config overrides from CLI options: ``{"section.field": value}`` minus the options left unset (``None``)."""
    return {key: value for key, value in values.items() if value is not None}


def parse_image_size(text: str | None) -> list[int] | None:
    """``"256"`` -> [256, 256]; ``"192,256"`` or ``"192x256"`` -> [192, 256] (H, W)."""
    if text is None:
        return None
    parts = [p for p in text.replace("x", ",").replace("X", ",").split(",") if p.strip()]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise CLIError(f"--image-size must be S or H,W with integers, got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) <= 0:
        raise CLIError(f"--image-size must be S or H,W with positive integers, got {text!r}")
    return vals


def read_arch(path: str | None) -> Any:
    """Content of an ``--arch`` JSON file."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--arch file {str(p)!r} does not exist")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CLIError(f"--arch file {str(p)!r} is not valid JSON: {e}") from None
