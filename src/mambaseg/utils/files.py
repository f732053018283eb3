"""The one atomic writer: write to a temporary file in the same folder, then ``os.replace`` it into place.

Every file the library writes (checkpoints, caches, JSON, plots) goes through :class:`atomic_path`;
:func:`atomic_write_json` is its JSON shorthand, which writes strict JSON only (:func:`json_safe`: NaN -> ``null``,
+-inf -> ``"inf"``/``"-inf"``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_json", "check_output_file", "json_safe", "json_text", "same_file"]


class atomic_path:
    """Context manager yielding a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left untouched (a reader never sees a
    half-written file, and a crash during a save keeps the previous version). The file gets the permissions a plain
    ``open(path, "w")`` would give it (``0o666`` minus the umask), not the private ``0o600`` of a temporary file.

    Example:
        >>> with atomic_path("ckpt.pt") as tmp:  # doctest: +SKIP
        ...     torch.save(obj, tmp)
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            raise self._named(exc) from exc
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is None:
            _chmod_as_umask_allows(self.tmp)
            try:
                os.replace(self.tmp, self.path)
            except OSError as err:
                self._discard()
                raise self._named(err) from err
            return
        self._discard()
        if isinstance(exc, OSError) and exc.filename == str(self.tmp):
            raise self._named(exc) from exc  # the target, not the temporary file, is what the user asked for

    def _discard(self) -> None:
        try:
            self.tmp.unlink()
        except OSError:
            pass

    def _named(self, exc: OSError) -> OSError:
        """``exc`` re-addressed to the target path (same class and errno), so a failed write names the file the
        caller asked for rather than the temporary one beside it."""
        return type(exc)(exc.errno, exc.strerror or str(exc), str(self.path))


def _current_umask() -> int:
    """The process umask, read without changing it where the system tells it (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_as_umask_allows(path: Path) -> None:
    """``0o666 & ~umask`` on a file made by ``mkstemp`` (which creates it ``0o600`` whatever the umask)."""
    try:
        os.chmod(path, 0o666 & ~_current_umask())
    except OSError:  # e.g. a file system without POSIX modes: keep what it gave
        pass


def atomic_write_npz(path: str | os.PathLike[str], **arrays: Any) -> Path:
    """Write ``arrays`` as a compressed ``.npz`` to ``path`` through :class:`atomic_path`."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return Path(path)


def json_safe(obj: Any) -> Any:
    """Recursively convert a report to strict JSON: NaN -> ``None``, +-inf -> ``"inf"``/``"-inf"``, numpy -> Python."""
    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if math.isnan(f):
            return None
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    return obj


def json_text(obj: Any) -> str:
    """``obj`` as indented strict JSON text (:func:`json_safe` first): what :func:`atomic_write_json` writes and
    the CLI's ``--json`` prints."""
    return json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented strict JSON to ``path`` through :class:`atomic_path` (flushed and synced first).

    ``obj`` passes through :func:`json_safe` first: an undefined value (NaN) is written as ``null`` and an infinite
    one as ``"inf"``/``"-inf"``, so the file never holds the bare ``NaN``/``Infinity`` tokens that strict JSON
    parsers reject.
    """
    text = json_text(obj)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def same_file(a: Path, b: Path) -> bool:
    """Whether paths ``a`` and ``b`` name one file (the same path resolved, or hard links / one file reached twice)."""
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def check_output_file(out: Path, *, overwrite: bool, kind: str, example: str, source: Path | None = None,
                      option: str = "--out") -> None:
    """Check a file a command is about to write, before any work: refuse it when it is the ``source`` file itself
    (even with ``overwrite``), a folder, already there (unless ``overwrite``), or in a folder that cannot be
    created or written to; then create that folder. The messages name ``option`` (the CLI's name for it) and what was expected.

    Args:
        out: the file to write.
        overwrite: an existing file may be replaced.
        kind: what the file is, for the messages (e.g. ``"an ONNX file"``).
        example: a file name to suggest inside a folder given as ``out`` (e.g. ``"model.onnx"``).
        source: the input the output is made from (it must never be replaced by it).

    Raises:
        ValueError: ``out`` is ``source``. IsADirectoryError / FileExistsError / NotADirectoryError: as above.
    """
    if source is not None and same_file(out, source):
        raise ValueError(f"{option} {str(out)!r} is the input file {str(source)!r}; writing it would replace it: "
                         f"choose another {option}")
    if out.is_dir():
        raise IsADirectoryError(f"{option} {str(out)!r} is a folder; expected {kind} path (e.g. "
                                f"{str(out / example)!r}) in an existing or creatable folder")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{option} {str(out)!r} already exists; pass --overwrite (overwrite=True) to replace "
                              f"it, or choose another {option}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent)  # writable?
    except OSError as exc:
        raise NotADirectoryError(f"{option} {str(out)!r}: cannot write in its folder {str(out.parent)!r} "
                                 f"({exc.strerror or exc}); expected {kind} path in a writable or creatable "
                                 "folder") from None
    os.close(fd)
    os.unlink(probe)
