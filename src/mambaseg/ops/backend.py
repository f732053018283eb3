"""Selective-scan backend selection: explicit, inspectable, never a silent fallback.

Resolution order for ``backend=None``:

1. the ``backend=`` argument of :func:`mambaseg.ops.selective_scan` (or of a layer),
2. the innermost :func:`use_backend` context,
3. the environment variable ``MAMBASEG_SCAN_BACKEND`` (read, never written, by the library),
4. the auto rule: on CUDA tensors ``"triton"`` if Triton is importable, else ``"mamba_ssm"`` if installed, else
   ``"torch"`` with one warning that says how to get a fast kernel; on CPU ``"cpu_fused"`` (the fused C++ kernel,
   compiled on first use) if it builds here, else ``"torch"`` with one warning that says why and how to fix it.
   While torch.compile / torch.export / ONNX export trace the model, auto is always ``"torch"`` (traceable).

An explicitly requested backend that is unavailable raises :class:`BackendUnavailableError` naming the fix.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

from mambaseg.ops.errors import BackendUnavailableError

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "BackendUnavailableError",
    "BackendStatus",
    "available_backends",
    "use_backend",
    "get_backend",
    "resolve_backend",
    "explain_backend",
    "requested_backend_problem",
]

ENV_VAR = "MAMBASEG_SCAN_BACKEND"
BACKENDS = ("ref", "torch", "cpu_fused", "triton", "mamba_ssm")

_FIX = {
    "triton": "pip install 'triton>=3.0' (ships with CUDA builds of torch on Linux) and run on a CUDA GPU",
    "mamba_ssm": "pip install mamba-ssm (needs a CUDA toolchain matching your torch build)",
    "cpu_fused": "install a C++ compiler and ninja (e.g. apt-get install g++ ninja-build, or pip install ninja); "
    "the kernel then compiles on first use",
}

_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("mambaseg_scan_backend", default=None)
_warned_slow_gpu = False
_warned_slow_cpu = False


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str
    cuda_only: bool


@functools.lru_cache(maxsize=None)
def _installed(package: str) -> bool:
    """Whether ``package`` is importable (looked up once per process: the scan dispatch calls this on every call)."""
    return importlib.util.find_spec(package) is not None


def _check(name: str) -> tuple[bool, str]:
    if name in ("ref", "torch"):
        return True, "pure PyTorch, always available"
    if name == "triton":
        if not _installed("triton"):
            return False, "triton is not installed"
        try:
            mod = importlib.import_module("mambaseg.ops.selective_scan_triton")
        except ImportError as exc:  # the kernel module itself failed to import: report why
            return False, f"mambaseg.ops.selective_scan_triton failed to import: {exc}"
        return mod.is_available()
    if name == "mamba_ssm":
        if not _installed("mamba_ssm"):
            return False, "mamba_ssm is not installed"
        return True, "mamba_ssm selective_scan_fn importable"
    if name == "cpu_fused":
        from mambaseg.ops.selective_scan_cpu import is_available

        return is_available()  # compiles the kernel the first time in a process (cached on disk)
    raise ValueError(f"unknown scan backend {name!r}; valid: {', '.join(BACKENDS)}")


def available_backends() -> dict[str, BackendStatus]:
    """Every known backend with whether it can run here and why (CUDA-only backends need a CUDA tensor too)."""
    out = {}
    for name in BACKENDS:
        ok, why = _check(name)
        out[name] = BackendStatus(name, ok, why, cuda_only=name in ("triton", "mamba_ssm"))
    return out


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Context manager selecting the scan backend for code run inside it (``None`` = auto)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; valid: {', '.join(BACKENDS)}")
    token = _context.set(name)
    try:
        yield
    finally:
        _context.reset(token)


def get_backend() -> str | None:
    """The backend requested by context or environment (``None`` = auto), without resolving it."""
    ctx = _context.get()
    if ctx is not None:
        return ctx
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env and env != "auto":
        if env not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={env!r} is not a scan backend; valid: {', '.join(BACKENDS)} or 'auto'")
        return env
    return None


def _auto(is_cuda: bool, tracing: bool = False) -> tuple[str, str]:
    if tracing:
        return "torch", "the model is being traced (torch.compile / export): the traceable PyTorch scan"
    if not is_cuda:
        ok, why = _check("cpu_fused")
        if ok:
            return "cpu_fused", f"CPU tensors and the fused CPU kernel runs: {why}"
        return "torch", f"CPU tensors, fused CPU kernel unavailable: {why}"
    ok, why = _check("triton")
    if ok:
        return "triton", "CUDA tensors and Triton importable"
    ok2, why2 = _check("mamba_ssm")
    if ok2:
        return "mamba_ssm", f"CUDA tensors, Triton unavailable ({why}), mamba_ssm installed"
    return "torch", f"CUDA tensors but no fast kernel: triton: {why}; mamba_ssm: {why2}"


def resolve_backend(name: str | None, is_cuda: bool, tracing: bool = False) -> str:
    """Resolve a requested backend (or ``None``) to a concrete, runnable backend name.

    ``tracing``: the call is being traced by torch.compile / torch.export / ONNX export; auto then picks the
    traceable ``"torch"`` backend and an explicit ``"cpu_fused"`` is refused.
    """
    global _warned_slow_gpu, _warned_slow_cpu
    requested = name if name is not None else get_backend()
    if requested is None or requested == "auto":
        chosen, why = _auto(is_cuda, tracing)
        if not is_cuda and not tracing and chosen == "torch" and not _warned_slow_cpu:
            _warned_slow_cpu = True
            warnings.warn(
                f"mambaseg: selective scan on CPU uses the slower PyTorch path ({why}). "
                f"Fix: {_FIX['cpu_fused']}. Set {ENV_VAR}=torch to choose it explicitly.",
                RuntimeWarning,
                stacklevel=3,
            )
        if is_cuda and chosen == "torch" and not _warned_slow_gpu:
            _warned_slow_gpu = True
            warnings.warn(
                f"mambaseg: selective scan on CUDA falls back to the slow PyTorch path ({why}). "
                f"Fix: {_FIX['triton']}. Set {ENV_VAR}=torch to choose it explicitly.",
                RuntimeWarning,
                stacklevel=3,
            )
        return chosen
    if requested not in BACKENDS:
        raise ValueError(f"unknown scan backend {requested!r}; valid: {', '.join(BACKENDS)}")
    ok, why = _check(requested)
    if not ok:
        raise BackendUnavailableError(f"scan backend {requested!r} is unavailable: {why}. Fix: {_FIX.get(requested, '')}")
    if requested in ("triton", "mamba_ssm") and not is_cuda:
        # the Triton interpreter (TRITON_INTERPRET=1) runs kernels on CPU tensors; allow it for tests
        if not (requested == "triton" and os.environ.get("TRITON_INTERPRET") == "1"):
            raise BackendUnavailableError(
                f"scan backend {requested!r} needs CUDA tensors; use backend='torch' on CPU"
            )
    if requested == "cpu_fused":
        if is_cuda:
            raise BackendUnavailableError("scan backend 'cpu_fused' needs CPU tensors; use 'triton' on CUDA")
        if tracing:
            raise BackendUnavailableError(
                "scan backend 'cpu_fused' cannot be traced (torch.compile / export); use backend='torch' or auto"
            )
    return requested


def requested_backend_problem(is_cuda: bool) -> str | None:
    """Why the backend requested by context or environment cannot run on CPU (``is_cuda=False``) or CUDA tensors
    here (the error every scan call would raise), or ``None`` when it can or none is requested."""
    req = get_backend()
    if req is None:
        return None
    try:
        resolve_backend(req, is_cuda)
    except BackendUnavailableError as e:
        return str(e)
    return None


def explain_backend(is_cuda: bool | None = None) -> str:
    """Human-readable account of which backend ``backend=None`` resolves to, and why (used by ``mambaseg doctor``)."""
    if is_cuda is None:
        import torch

        is_cuda = torch.cuda.is_available()
    req = get_backend()
    if req is not None:
        src = "use_backend() context" if _context.get() is not None else f"environment {ENV_VAR}"
        problem = requested_backend_problem(is_cuda)
        if problem:
            return f"{req} (requested by {src}) CANNOT RUN: {problem}"
        return f"{req} (requested by {src})"
    chosen, why = _auto(is_cuda)
    return f"{chosen} (auto: {why})"


def load_backend_fn(name: str) -> Callable:
    """Import and return the scan function of a concrete backend."""
    if name == "ref":
        from mambaseg.ops.selective_scan_ref import selective_scan_ref

        return selective_scan_ref
    if name == "torch":
        from mambaseg.ops.selective_scan_torch import selective_scan_torch

        return selective_scan_torch
    if name == "cpu_fused":
        from mambaseg.ops.selective_scan_cpu import selective_scan_cpu

        return selective_scan_cpu
    if name == "triton":
        from mambaseg.ops.selective_scan_triton import selective_scan_triton

        return selective_scan_triton
    if name == "mamba_ssm":
        from mambaseg.ops.selective_scan_mamba_ssm import selective_scan_mamba_ssm

        return selective_scan_mamba_ssm
    raise ValueError(f"unknown scan backend {name!r}; valid: {', '.join(BACKENDS)}")
