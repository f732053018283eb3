"""Runtime choices applied around a model, never stored in it: device, autocast dtype, selective-scan backend.

Used by both :mod:`mambaseg.engine` (training, evaluation) and :mod:`mambaseg.inference` (prediction), so it sits
below both. Nothing here sets environment variables or picks GPUs on its own: ``cuda`` under ``torchrun`` means
the device ``LOCAL_RANK`` names, read (never written) from the launcher's environment.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

__all__ = [
    "autocast_for",
    "cpu_threads",
    "env_int",
    "resolve_amp",
    "resolve_device",
    "resolve_workers",
    "scan_backend",
    "seconds_since_process_start",
]


def env_int(name: str, default: int) -> int:
    """Integer value of a launcher variable (``LOCAL_RANK``, ``WORLD_SIZE``); ``default`` when unset or invalid."""
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def cpu_threads(spec: str | int | None = "auto") -> int:
    """Number of CPU threads to give PyTorch: ``N`` as given, or for ``auto`` the cores other programs leave free
    (at least 1, at most the cores this process may run on).

    ``auto`` samples how busy this process's cores are right now (``/proc/stat`` over 0.2 s, Linux) and falls back to
    the 1-minute load average elsewhere (which lags: it still counts programs that ended up to a minute ago).

    Why: the selective scan issues thousands of tiny operations per training step; with more threads than free
    cores, every one of them waits at a thread barrier for a core another program holds (a VM-UNet-tiny step on a
    busy 2-core machine: 1.5-2.2 s with one thread, 12.6-29.6 s with two; ``benchmarks/cpu_first_hour.py``), while
    an idle machine is fastest with every core (0.53 s with two, 0.98 s with one). Nothing is changed here; apply
    the answer with ``torch.set_num_threads(cpu_threads())``, as the CLI does.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "auto")):
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = list(range(os.cpu_count() or 1))
        cores = len(cpus)
        busy = _busy_cores(cpus)
        if busy is None:
            try:
                busy = os.getloadavg()[0]
            except (AttributeError, OSError):
                busy = 0.0
        return max(1, min(cores, int(cores - busy + 0.5)))
    try:
        n = int(spec)
    except (TypeError, ValueError):
        raise ValueError(f"threads must be 'auto' or a positive integer, got {spec!r}") from None
    if n < 1:
        raise ValueError(f"threads must be 'auto' or a positive integer, got {spec!r}")
    return n


def _cpu_times(cpus: list[int]) -> tuple[int, int] | None:
    """(total, idle) jiffies summed over ``cpus`` from ``/proc/stat``; ``None`` where it cannot be read."""
    wanted = {f"cpu{i}" for i in cpus}
    total = idle = 0
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in wanted:
                    vals = [int(v) for v in parts[1:9]]
                    total += sum(vals)
                    idle += vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    except (OSError, ValueError):
        return None
    return (total, idle) if total > 0 else None


def _busy_cores(cpus: list[int], interval: float = 0.2) -> float | None:
    """How many of ``cpus`` other programs keep busy now (sampled over ``interval`` seconds); ``None`` if unknown."""
    import time

    first = _cpu_times(cpus)
    if first is None:
        return None
    time.sleep(interval)
    second = _cpu_times(cpus)
    if second is None or second[0] <= first[0]:
        return None
    return len(cpus) * (1.0 - (second[1] - first[1]) / (second[0] - first[0]))


def resolve_device(spec: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """Device for ``spec`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``).

    Under ``torchrun`` with ``cuda``/``auto`` the device is ``cuda:LOCAL_RANK`` (the one the launcher gave this
    process). Raises ``ValueError`` with the fix when CUDA is requested but unavailable.
    """
    s = (spec or "auto").strip().lower()
    if s == "auto":
        s = "cuda" if torch.cuda.is_available() else "cpu"
    if s.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {spec!r} requested but CUDA is not available (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda or 'none'}); use --device cpu or install a CUDA build of torch"
            )
        if s == "cuda":
            index = local_rank if world_size > 1 else torch.cuda.current_device()
        else:
            try:
                index = int(s.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"device {spec!r} is not valid; use cuda or cuda:N") from None
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    if s == "cpu":
        return torch.device("cpu")
    if s == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' requested but MPS is not available; use --device cpu")
        return torch.device("mps")
    raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps")


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use GradScaler)`` for ``train.amp`` on ``device``.

    ``auto`` = bf16 on CUDA devices that support it, off elsewhere; ``fp16`` uses a GradScaler.
    """
    a = (amp or "auto").lower()
    if a == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return None, False
    if a in ("off", "none", "fp32", "false", "no"):
        return None, False
    if a == "bf16":
        return torch.bfloat16, False
    if a == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs a CUDA device; use bf16 or off on CPU")
        return torch.float16, True
    raise ValueError(f"unknown train.amp {amp!r}; valid: auto, bf16, fp16, off")


def autocast_for(device: torch.device, amp_dtype: torch.dtype | None):
    """``torch.autocast`` for ``device`` when ``amp_dtype`` is set, else a null context."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@contextlib.contextmanager
def scan_backend(name: str | None) -> Iterator[None]:
    """Run the enclosed code with the selective-scan backend ``name`` (``None``/``"auto"``: the usual resolution).

    The choice is applied around the model (:func:`mambaseg.ops.use_backend`), so a model trained with one
    backend runs with any other and its checkpoint records none.
    """
    if name in (None, "", "auto"):
        yield
        return
    from mambaseg.ops import use_backend

    with use_backend(name):
        yield


def _boot_time_of_process() -> float | None:
    """Wall-clock time (``time.time()`` scale) at which this process started, read from ``/proc`` (Linux)."""
    import time

    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5): start time in clock ticks after boot
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _first_import_time() -> float:
    import time

    return time.time()


#: when this process started (``/proc`` on Linux; elsewhere the first import of this module)
PROCESS_START = _boot_time_of_process() or _first_import_time()


def seconds_since_process_start() -> float:
    """Seconds since this process started (the clock of "time to first step")."""
    import time

    return time.time() - PROCESS_START


def resolve_workers(num_workers: int | None, device: torch.device) -> int:
    """DataLoader worker processes for ``data.num_workers`` (``None`` = auto).

    Auto: on a GPU, up to 8 workers (one core left to the training process), so augmentation keeps pace with the
    device; on a CPU none, since workers would compete with the compute threads for the same cores.
    """
    if num_workers is not None:
        if int(num_workers) < 0:
            raise ValueError(f"data.num_workers must be >= 0 (or null for auto), got {num_workers}")
        return int(num_workers)
    if device.type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))
