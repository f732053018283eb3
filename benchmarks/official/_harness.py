"""Shared pieces of the drivers that run the official VM-UNet and DermoMamba training code (``run_vmunet.py``,
``run_dermomamba.py``): where the fetched code lies, the clock of a run and its per-epoch phases, the import path
of the official selective scan, the stand-ins for packages the GPU machine lacks, and a CPU smoke mode.

Nothing here is official code: the official files are imported at run time from ``.official/`` (fetched, git-ignored,
never committed) through ``sys.path``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
OFFICIAL = REPO / ".official"


def process_start() -> float:
    """``time.time()`` at which this process started (``/proc``), or now where that cannot be read."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


PROCESS_START = process_start()


def sync() -> None:
    """Wait for the GPU (no-op without CUDA), so that a time stamp means "the work so far is done"."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class RunClock:
    """Time stamps of a training run and the per-epoch split into data loading, forward/backward (+ optimizer),
    validation and checkpoint writing. Everything not in those four (logging, scheduler, progress bars, cache
    flushes) is reported as ``time_other``."""

    def __init__(self, t0: float | None) -> None:
        self.t0 = t0 if t0 is not None else PROCESS_START  # the parent's clock at spawn, else our own start
        self.first_step: float | None = None
        self.epochs: list[dict[str, float]] = []
        self.cur: dict[str, float] | None = None
        self.loop_end: float | None = None
        self.final_metrics: float | None = None
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.time())

    def epoch_start(self) -> None:
        now = time.time()
        self.close_epoch(now)
        self.cur = {"start": now, "time_data": 0.0, "time_step": 0.0, "time_val": 0.0, "time_ckpt": 0.0}

    def close_epoch(self, now: float | None = None) -> None:
        if self.cur is not None:
            self.cur["time"] = (now or time.time()) - self.cur["start"]
            self.epochs.append(self.cur)
            self.cur = None

    def add(self, phase: str, seconds: float) -> None:
        if self.cur is not None:
            self.cur[phase] += seconds

    def step_done(self) -> None:
        if self.first_step is None:
            sync()
            self.first_step = time.time()

    def end_loop(self) -> None:
        self.close_epoch()
        self.loop_end = time.time()

    def summary(self) -> dict[str, Any]:
        ep = self.epochs
        total = sum(e["time"] for e in ep)
        shares: dict[str, float | None] = {}
        for k in ("time_data", "time_step", "time_val", "time_ckpt"):
            shares[k.replace("time_", "share_")] = round(sum(e[k] for e in ep) / total, 4) if total > 0 else None
        known = sum(v for v in shares.values() if v is not None)
        shares["share_other"] = round(1.0 - known, 4) if total > 0 else None

        def rel(t: float | None, base: float) -> float | None:
            return None if t is None else round(t - base, 3)

        return {
            "t0_source": "parent time.time() at spawn" if self.t0 != PROCESS_START else "this process's start (/proc)",
            "spawn_to_process_start_s": round(PROCESS_START - self.t0, 3),
            "first_step_s": rel(self.first_step, PROCESS_START),
            "first_step_from_t0_s": rel(self.first_step, self.t0),
            "wall_to_final_metrics_s": rel(self.final_metrics, self.t0),
            "loop_s": round(total, 3),
            "epochs_run": len(ep),
            "epoch_s_median": round(statistics.median(e["time"] for e in ep), 4) if ep else None,
            "epoch_s_first": round(ep[0]["time"], 4) if ep else None,
            **shares,
            "marks_s": {k: rel(v, self.t0) for k, v in self.marks.items()},
            "epochs": [{k: round(v, 4) for k, v in e.items() if k != "start"} for e in ep],
        }


def timed(fn: Callable, clock: RunClock, phase: str, *, sync_after: bool = False) -> Callable:
    """``fn`` with its duration added to ``phase`` of the current epoch."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            if sync_after:
                sync()
            clock.add(phase, time.time() - t)

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


class TimedIter:
    """An iterator over a data loader that adds the time spent waiting for each batch to ``time_data``."""

    def __init__(self, it: Any, clock: RunClock) -> None:
        self.it, self.clock = it, clock

    def __iter__(self) -> "TimedIter":
        return self

    def __next__(self) -> Any:
        t = time.time()
        try:
            return next(self.it)
        finally:
            self.clock.add("time_data", time.time() - t)


def official_path(name: str, *extra: str) -> None:
    """Put ``.official/<name>`` (and sub-folders ``extra``) first on ``sys.path``; fail clearly when absent."""
    root = OFFICIAL / name
    if not root.is_dir():
        raise SystemExit(f"{root} is missing: fetch the official code first (benchmarks/official/README.md)")
    for p in reversed([root, *(root / e for e in extra)]):
        sys.path.insert(0, str(p))


def install_official_scan(build_dir: str | None, cpu_smoke: bool) -> str:
    """Make ``mamba_ssm.ops.selective_scan_interface`` (official file) importable with a working
    ``selective_scan_cuda``: the extension built by ``build_selective_scan.py`` in ``build_dir`` or, in CPU smoke
    mode only, a pure-PyTorch stand-in. ``mamba_ssm`` is imported as a namespace package from ``.official/mamba``
    (its ``__init__`` is not fetched: it would import Mamba-2/3 and their Triton kernels, which these models never
    use). Returns a note for the result JSON."""
    official_path("mamba")
    if cpu_smoke:
        sys.modules["selective_scan_cuda"] = _cpu_scan_module()
        note = "CPU smoke: selective_scan_cuda replaced by a pure-PyTorch stand-in (mambaseg's chunked scan)"
    else:
        if not build_dir:
            raise SystemExit("--scan-build DIR (the folder where build_selective_scan.py put selective_scan_cuda) "
                             "is required")
        sys.path.insert(0, str(Path(build_dir).resolve()))
        import torch  # noqa: F401  (the extension needs libtorch loaded first)
        import selective_scan_cuda  # type: ignore[import-not-found]  # noqa: F401

        note = f"selective_scan_cuda: official extension built in {build_dir}"
    import mamba_ssm.ops.selective_scan_interface as ssi  # type: ignore[import-not-found]

    if ssi.selective_scan_cuda is None:
        raise SystemExit("mamba_ssm.ops.selective_scan_interface found no selective_scan_cuda")
    return note


def stub_module(name: str, **attrs: Any) -> types.ModuleType:
    """A module ``name`` in ``sys.modules`` with ``attrs`` (parents created as needed)."""
    import importlib.machinery

    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package="__path__" in attrs)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    if "." in name:
        parent, child = name.rsplit(".", 1)
        setattr(sys.modules.get(parent) or stub_module(parent), child, mod)
    return mod


def have(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------------------------------
# CPU smoke mode: lets the official loops run a few steps on a machine without CUDA (tests of the drivers only; the
# GPU run never uses any of this).


def _cpu_scan_module() -> types.ModuleType:
    """``selective_scan_cuda.fwd/bwd`` in plain PyTorch (z gate not supported), for CPU smoke runs only."""
    import torch

    sys.path.insert(0, str(REPO / "src"))
    from mambaseg.ops.selective_scan_torch import selective_scan_torch

    def fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        assert z is None, "the CPU stand-in has no z gate"
        out = selective_scan_torch(u, delta, A, B, C, D, delta_bias, delta_softplus)
        x = u.new_zeros(u.shape[0], u.shape[1], 1, 2 * A.shape[1])  # only its shape is read (last_state)
        return out, x

    def bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute):
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) if t is not None else None
                      for t in (u, delta, A, B, C, D, delta_bias)]
            y = selective_scan_torch(*leaves[:6], leaves[6], delta_softplus)
            wrt = [t for t in leaves if t is not None]
            grads = iter(torch.autograd.grad(y, wrt, dout))
        return [next(grads) if t is not None else None for t in leaves]

    return stub_module("selective_scan_cuda", fwd=fwd, bwd=bwd)


def cpu_smoke_patches() -> list[str]:
    """Run CUDA-only official code on the CPU: ``.cuda()`` becomes a no-op; missing torchvision/timm pieces that the
    official files import get minimal stand-ins. Returns notes."""
    import torch

    notes = ["CPU smoke: Tensor.cuda / Module.cuda are no-ops"]
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    if not have("timm"):
        import torch.nn as nn

        class DropPath(nn.Module):
            def __init__(self, drop_prob: float = 0.0) -> None:
                super().__init__()
                self.drop_prob = drop_prob

            def forward(self, x):
                if self.drop_prob == 0.0 or not self.training:
                    return x
                keep = 1 - self.drop_prob
                mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
                return x * mask / keep

        def to_2tuple(x):
            return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

        def trunc_normal_(t, mean=0.0, std=1.0, a=-2.0, b=2.0):
            return nn.init.trunc_normal_(t, mean, std, a, b)

        layers = dict(DropPath=DropPath, to_2tuple=to_2tuple, trunc_normal_=trunc_normal_)
        stub_module("timm", __path__=[])
        stub_module("timm.models", __path__=[])
        stub_module("timm.models.layers", **layers)
        notes.append("CPU smoke: timm stand-in (DropPath, to_2tuple, trunc_normal_)")
    if not have("torchvision"):
        if have("pytorch_lightning"):
            import pytorch_lightning  # noqa: F401  (before the stand-in: its optional-package probes see none)
        _torchvision_standin()
        notes.append("CPU smoke: torchvision stand-in (the transforms the official loaders use)")
    return notes


def _torchvision_standin() -> None:
    """The few torchvision transforms the official loaders call, in torch/PIL, for CPU smoke runs only."""
    import random

    import numpy as np
    import torch
    import torch.nn.functional as F

    def resize(t, size, *a, **k):
        if not isinstance(t, torch.Tensor):
            return t.resize((size[1], size[0]))
        x = t.float()[None] if t.ndim == 3 else t.float()
        y = F.interpolate(x, size=list(size), mode="bilinear", align_corners=False)
        return y[0] if t.ndim == 3 else y

    def hflip(t):
        return t.flip(-1)

    def vflip(t):
        return t.flip(-2)

    def rotate(t, angle, *a, **k):
        return t

    def resized_crop(img, i, j, h, w, size, interpolation=None):
        return img.crop((j, i, j + w, i + h)).resize((size[1], size[0]))

    class Compose:
        def __init__(self, ts):
            self.ts = ts

        def __call__(self, x):
            for t in self.ts:
                x = t(x)
            return x

    class ToTensor:
        def __call__(self, pic):
            a = np.asarray(pic, dtype=np.float32) / 255.0
            return torch.from_numpy(a.transpose(2, 0, 1).copy() if a.ndim == 3 else a[None].copy())

    class RandomResizedCrop:
        def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=None):
            self.size, self.scale, self.ratio, self.interpolation = size, scale, ratio, interpolation

        @staticmethod
        def get_params(img, scale, ratio):
            w, h = img.size
            s = random.uniform(*scale)
            ch, cw = max(1, int(h * s ** 0.5)), max(1, int(w * s ** 0.5))
            return random.randint(0, h - ch), random.randint(0, w - cw), ch, cw

    fn = dict(resize=resize, hflip=hflip, vflip=vflip, rotate=rotate, resized_crop=resized_crop)
    stub_module("torchvision", __path__=[])
    functional = stub_module("torchvision.transforms.functional", **fn)
    stub_module("torchvision.transforms", __path__=[], Compose=Compose, ToTensor=ToTensor,
                RandomResizedCrop=RandomResizedCrop, functional=functional)


def write_result(result: dict[str, Any], path: str | None) -> None:
    """One JSON line on stdout (prefixed ``RESULT ``) and, if given, the same object in ``path``."""
    line = json.dumps(result)
    print("RESULT " + line, flush=True)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, path)
