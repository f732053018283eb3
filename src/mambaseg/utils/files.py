"""The one atomic writer: write to a temporary file in the same folder, then ``os.replace`` it into place.

Every file the library writes (checkpoints, caches, JSON, plots) goes through :class:`atomic_path`;
:func:`atomic_write_json` is its JSON shorthand.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_json"]


class atomic_path:
    """Context manager yielding a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left untouched (a reader never sees a
    half-written file, and a crash during a save keeps the previous version).

    Example:
        >>> with atomic_path("ckpt.pt") as tmp:  # doctest: +SKIP
        ...     torch.save(obj, tmp)
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            try:
                self.tmp.unlink()
            except FileNotFoundError:
                pass


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` through :class:`atomic_path` (flushed and synced first)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    return Path(path)
