"""The run-directory lock: one training run per output folder, and the clean-up of a killed run's leftovers.

:class:`RunLock` holds an exclusive ``flock`` on ``RUN/.mambaseg.lock`` for the life of a run. The operating
system drops the lock when the process ends in any way (exit, exception, ``kill -9``), so a lock file left by a
dead process is recognised as stale, named and taken over; a lock held by a living process makes a second run in
the same folder fail at once, naming the process that holds it. The file records ``pid``, host and start time
for that message.

:func:`remove_stale_temporaries` deletes the temporary files of :class:`~mambaseg.utils.files.atomic_path`
(``.<name>.<random>.tmp``) that a process killed in the middle of a write left behind. It is only called while
the lock is held, when no other writer can own them.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "remove_stale_temporaries"]

LOCK_NAME = ".mambaseg.lock"
# tempfile.mkstemp(prefix=".<name>.", suffix=".tmp"): 8 characters of [a-z0-9_]
_TMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


class RunLockedError(RuntimeError):
    """Another living process is running in this run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _describe(info: dict[str, Any]) -> str:
    parts = [f"pid {info.get('pid', '?')}"]
    if info.get("host"):
        parts.append(f"on {info['host']}")
    if info.get("started"):
        parts.append(f"started {info['started']}")
    if info.get("command"):
        parts.append(f"running {info['command']}")
    return ", ".join(parts)


class RunLock:
    """Exclusive lock on a run directory (context manager or :meth:`acquire` / :meth:`release`).

    Args:
        run_dir: the run directory (created if missing).
        command: what holds the lock, shown to a second process (e.g. ``"mambaseg train"``).

    Attributes:
        stale: description of a stale lock taken over from a dead process (``None`` if there was none).

    Raises:
        RunLockedError: on :meth:`acquire`, when a living process holds the lock (the message names it).
    """

    def __init__(self, run_dir: str | os.PathLike[str], command: str = "training") -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command = command
        self.stale: str | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _read(self, fd: int) -> dict[str, Any]:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            raw = os.read(fd, 4096).decode("utf-8", "replace").strip()
            info = json.loads(raw) if raw else {}
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # no flock (Windows): an exclusive-create file with a liveness check
            return self._acquire_excl()
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                info = self._read(fd)
                os.close(fd)
                raise RunLockedError(
                    f"run directory {str(self.run_dir)!r} is in use by another run ({_describe(info)}); its "
                    f"checkpoints and metrics would be overwritten: wait for it to end or choose another --out"
                ) from None
            try:  # the file may have been removed and recreated by its previous holder meanwhile: lock the current
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            prev = self._read(fd)
            if prev.get("pid") is not None:
                self.stale = _describe(prev)
            self._write(fd)
            self._fd = fd
            return self
        raise RunLockedError(f"cannot lock run directory {str(self.run_dir)!r}: its lock file keeps changing")

    def _acquire_excl(self) -> RunLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    info = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    info = {}
                pid = info.get("pid") if isinstance(info, dict) else None
                if isinstance(pid, int) and not _pid_alive(pid):
                    self.stale = _describe(info)
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunLockedError(
                    f"run directory {str(self.run_dir)!r} is in use by another run ({_describe(info or {})}); wait "
                    f"for it to end or choose another --out (delete {self.path} if no run is using it)"
                ) from None
            self._write(fd)
            self._fd = fd
            return self
        raise RunLockedError(f"cannot lock run directory {str(self.run_dir)!r}")

    def _write(self, fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": _dt.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode())

    def release(self) -> None:
        """Drop the lock and remove the lock file (a no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)  # while still locked: a waiting process then re-checks the inode
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:  # pragma: no cover - safety net
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


def remove_stale_temporaries(*folders: str | os.PathLike[str]) -> list[Path]:
    """Delete ``atomic_path`` temporaries (``.<name>.<random>.tmp``) in ``folders`` (not recursive).

    Call it only while holding the folder's :class:`RunLock`: a temporary file there then belongs to a writer
    that was killed mid-write. Returns the removed paths.
    """
    removed: list[Path] = []
    for folder in folders:
        d = Path(folder)
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.is_file() and _TMP_RE.match(p.name):
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:
                    pass
    return removed
