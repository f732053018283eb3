"""Helpers of the benchmarks that run two commits of the library side by side as child processes (no torch import).

``extract`` unpacks a commit's ``src`` (or other paths, or the whole tree) with ``git archive``; ``src_dirty`` tells
whether the checkout's ``src`` has uncommitted changes (which such a run does not measure); ``child_env`` runs a child
on that copy with the thread variables of this shell cleared (each side then uses its own defaults); ``load`` records
the machine's load average and ``cpu_environment`` the machine, date and command of a result.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATA = Path(os.environ.get("MAMBASEG_DATA", REPO.parent / "shared" / "data"))
CLEARED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")


def load() -> list[float]:
    """1, 5 and 15-minute load averages, rounded."""
    return [round(v, 2) for v in os.getloadavg()]


def extract(commit: str, dest: Path, paths: tuple[str, ...] = ("src",)) -> str:
    """``git archive`` of ``commit``'s ``paths`` (``()``: the whole tree) into ``dest``; returns the full hash."""
    full = subprocess.run(["git", "-C", str(REPO), "rev-parse", commit], capture_output=True, text=True,
                          check=True).stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    arch = subprocess.run(["git", "-C", str(REPO), "archive", full, *paths], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    return full


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_environment() -> dict:
    """Date (UTC), the CPU this process may use, Python, platform, the command and the load average at the start."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"cpu ({cpu_cores()} cores, {platform.processor() or platform.machine()})",
        "python": platform.python_version(), "platform": platform.platform(),
        "command": " ".join(["python"] + sys.argv), "load_average_start": load(),
    }


def child_env(src: Path) -> dict:
    """This process's environment without the thread variables, importing the library from ``src``."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env["PYTHONPATH"] = str(src)
    return env


def src_dirty() -> bool:
    """Whether the checkout's ``src`` has uncommitted changes (a commit's archive does not contain them)."""
    return bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"], capture_output=True,
                               text=True).stdout.strip())
