"""Shared helpers for benchmark scripts: environment record and JSON writing."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_tag() -> str:
    """Short lower-case GPU name for result file names (``h100``, ``h200``, ...; else the full name)."""
    import re

    name = torch.cuda.get_device_name()
    m = re.search(r"(H100|H200|A100|L40S|L4|A10G|B200|RTX \w+)", name)
    return (m.group(1) if m else name).replace(" ", "_").lower()


def environment() -> dict:
    """Device, versions, thread count, the exact command that produced a result and the date (UTC) it ran."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "command": shlex.join([Path(sys.executable).name] + sys.argv),  # quoted as typed: it can be re-run
    }
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    else:
        env["device"] = f"cpu ({os.cpu_count()} cores)"
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    import mambaseg

    env["mambaseg"] = mambaseg.__version__
    return env


def cuda_event_times(fn, warmup: int, reps: int) -> list[float]:
    """Milliseconds of each of ``reps`` calls of ``fn`` measured with CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def training_summary(res) -> dict:
    """Shared fields of a GPU training result: schedule actually run, speed, and val metrics of the best checkpoint.

    ``res`` is the result of :func:`mambaseg.engine.train` (its ``metrics`` hold ``pooled``/``per_case``).
    """
    m = res.metrics
    return {
        "amp": m["train"]["amp"],
        "epochs_run": res.epochs,
        "stop_reason": m["train"]["stop_reason"],
        "steps": res.steps,
        "wall_seconds": round(res.seconds, 1),
        "train_images_per_second": round(res.images_per_second, 1),
        "best_epoch": res.best_epoch,
        "val_pooled_dsc": m["pooled"]["dsc"],
        "val_pooled_iou": m["pooled"]["iou"],
        "val_per_case_dsc": m["per_case"]["dsc"],
        "val_per_case_iou": m["per_case"]["iou"],
        "val_pooled": {k: m["pooled"].get(k) for k in ("acc", "sen", "spe", "dsc", "iou")},
        "history": [{k: r.get(k) for k in ("epoch", "train_loss", "lr", "time", "val")} for r in res.history],
    }


def write_json(name: str | Path, payload: dict | list, indent: int = 2) -> Path:
    """Write ``payload`` as JSON atomically; ``name`` is a file name in :data:`RESULTS` or (a ``Path``) any file."""
    path = name if isinstance(name, Path) else RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=indent) + "\n")
    os.replace(tmp, path)
    return path
