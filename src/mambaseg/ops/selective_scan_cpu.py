"""Fused CPU selective scan: a C++ kernel compiled on first use (``"cpu_fused"`` backend).

The kernel (``ops/csrc/selective_scan_cpu.cpp``, shipped with the package) keeps the SSM state in vector registers,
vectorises over channels, reads u, delta, B, C once per element and runs on torch's intra-op thread pool
(``torch.set_num_threads``). Its backward pass recomputes the states tile by tile from tile-start states, so neither
direction stores anything of size channels x L x N: CPU training memory stays at the size of the inputs.

Building: ``torch.utils.cpp_extension.load`` compiles the source the first time the backend is needed in a process
(tens of seconds) and caches the library in torch's extension directory (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``); later processes load it in well under a second. The cache name holds the instruction
set the kernel was built for (``avx512``, ``avx2`` or ``generic``, from torch's CPU capability) and a hash of the
source and of torch's version, so a changed machine, source or torch never reuses a stale build. torch writes the
source's path into the build files, so the source is compiled from a copy named by its content
(``<extension root>/mambaseg_sources/<name>.cpp``): two installs of the same source sharing one cache (two virtual
environments, a moved checkout, an editable install beside a wheel) reuse one build instead of rebuilding it each
time the other one loads it. ``pip install``
stays compiler-free: without a C++ compiler (or ninja) the build fails once, :func:`is_available` reports why, and
the auto rule uses the ``"torch"`` backend.

Numerics: float32 state math with a vectorised exp/softplus (relative error ~1e-7 each); float64 inputs run the same
kernel in float64 with libm's exp/log1p (for tests).
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from pathlib import Path

import torch

from mambaseg.ops.errors import BackendUnavailableError
from mambaseg.utils.files import atomic_path

__all__ = ["selective_scan_cpu", "ss2d_scan_cpu", "is_available", "load_library", "build_info", "FIX"]

_SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan_cpu.cpp"
FIX = (
    "install a C++ compiler and ninja (e.g. apt-get install g++ ninja-build, or pip install ninja); "
    "the kernel then compiles on first use"
)

_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "ok": False, "reason": "not built yet", "name": None}


def _isa() -> tuple[str, list[str]]:
    """Instruction-set level for the build, from torch's own CPU capability detection, and its compiler flags."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return "generic", []
    cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    if cap.startswith("AVX512"):
        return "avx512", ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mavx2", "-mfma",
                          "-mprefer-vector-width=512"]
    if cap.startswith("AVX2"):
        return "avx2", ["-mavx2", "-mfma"]
    return "generic", []


def build_info() -> dict[str, object]:
    """Name, instruction set and flags the kernel is (or would be) built with."""
    isa, flags = _isa()
    # "copied-source": builds compiled from the installed path (older mambaseg) keep their own cache folders
    digest = hashlib.sha256(_SOURCE.read_bytes() + torch.__version__.encode() + " ".join(flags).encode()
                            + b" copied-source")
    return {
        "name": f"mambaseg_scan_cpu_{isa}_{digest.hexdigest()[:12]}",
        "isa": isa,
        "cflags": ["-O3", "-fopenmp", *flags],
        "source": str(_SOURCE),
    }


def _build_source(name: str) -> Path:
    """The kernel source at a path that does not depend on where mambaseg is installed (see the module docstring);
    the installed file itself when the extension root is not writable."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    dest = root / "mambaseg_sources" / f"{name}.cpp"
    data = _SOURCE.read_bytes()
    try:
        # written once: the name holds the content's hash, and a fresh modification time would make ninja rebuild
        if not dest.is_file() or dest.read_bytes() != data:
            with atomic_path(dest) as tmp:
                tmp.write_bytes(data)
    except OSError:
        return _SOURCE
    return dest


def load_library() -> tuple[bool, str]:
    """Compile (first time) or load the kernel library; returns (ok, reason). Tried once per process."""
    with _lock:
        if _state["tried"]:
            return bool(_state["ok"]), str(_state["reason"])
        _state["tried"] = True
        info = build_info()
        if not _SOURCE.is_file():
            _state["reason"] = f"kernel source {_SOURCE} is missing from the installation"
            return False, str(_state["reason"])
        try:
            from torch.utils import cpp_extension

            cpp_extension.load(
                name=str(info["name"]),
                sources=[str(_build_source(str(info["name"])))],
                extra_cflags=list(info["cflags"]),  # type: ignore[arg-type]
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
                verbose=False,
            )
            lanes = int(torch.ops.mambaseg_scan.lanes())
        except Exception as exc:  # no compiler, no ninja, a failed compile: report it, the torch backend runs
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            _state["reason"] = f"the C++ kernel could not be built ({type(exc).__name__}: {first[:300]})"
            return False, str(_state["reason"])
        _state["ok"] = True
        _state["name"] = info["name"]
        _state["reason"] = f"C++ kernel built for {info['isa']} ({lanes} float lanes), cached as {info['name']}"
        return True, str(_state["reason"])


def is_available() -> tuple[bool, str]:
    """Whether the fused kernel runs in this process (builds it on the first call), and why or why not."""
    return load_library()


def _prepare(u, delta, A, B, C, D, delta_bias):
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32

    def c(t):
        return None if t is None else t.to(cdt).contiguous()

    B4 = B.unsqueeze(1) if B.dim() == 3 else B
    C4 = C.unsqueeze(1) if C.dim() == 3 else C
    return c(u), c(delta), c(A), c(B4), c(C4), c(D), c(delta_bias), cdt


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, mirrored):  # type: ignore[override]
        u_, dl_, A_, B_, C_, D_, bias_, _ = _prepare(u, delta, A, B, C, D, delta_bias)
        y = torch.ops.mambaseg_scan.fwd(u_, dl_, A_, B_, C_, D_, bias_, bool(delta_softplus), bool(mirrored))
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(u_, dl_, A_, B_, C_, D_, bias_)
            ctx.softplus = bool(delta_softplus)
            ctx.mirrored = bool(mirrored)
            ctx.b_shared = B.dim() == 3
            ctx.c_shared = C.dim() == 3
        return y

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        u_, dl_, A_, B_, C_, D_, bias_ = ctx.saved_tensors
        gy = gy.to(u_.dtype).contiguous()
        du, ddelta, dA_p, dD_p, dB_p, dC_p = torch.ops.mambaseg_scan.bwd(
            u_, dl_, A_, B_, C_, D_, bias_, ctx.softplus, ctx.mirrored, gy
        )
        if ctx.mirrored:  # both halves read the same u rows
            half = du.shape[1] // 2
            du = du[:, :half] + du[:, half:]
        batch, nblocks, n, L = dB_p.shape
        gb, gc = B_.shape[1], C_.shape[1]
        # channel blocks are numbered group by group: sum the blocks of each group
        dB = dB_p.view(batch, gb, nblocks // gb, n, L).sum(2)
        dC = dC_p.view(batch, gc, nblocks // gc, n, L).sum(2)
        if ctx.b_shared:
            dB = dB.squeeze(1)
        if ctx.c_shared:
            dC = dC.squeeze(1)
        dA = dA_p.sum(0)
        dD = dD_p.sum(0) if D_ is not None else None
        dbias = ddelta.sum((0, 2)) if bias_ is not None else None
        return du, ddelta, dA, dB, dC, dD, dbias, None, None


def _require_library(t: torch.Tensor) -> None:
    """Raise :class:`~mambaseg.ops.errors.BackendUnavailableError` (with the fix) unless the compiled kernel is
    loaded and ``t`` is a CPU tensor."""
    ok, why = load_library()
    if not ok:
        raise BackendUnavailableError(f"scan backend 'cpu_fused' is unavailable: {why}. Fix: {FIX}")
    if t.is_cuda:
        raise BackendUnavailableError("scan backend 'cpu_fused' runs on CPU tensors; use 'triton' on CUDA")


def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    out_dtype: torch.dtype | None = None,
    mirrored: bool = False,
) -> torch.Tensor:
    """Fused CPU selective scan, differentiable. Shapes as :func:`mambaseg.ops.selective_scan`.

    ``mirrored=True`` (SS2D's raster orders without flipped copies): ``u`` is (batch, channels/2, L); channel c of
    the first half reads u row c and scans positions 0 .. L-1, channel c of the second half reads u row
    c - channels/2 and scans positions L-1 .. 0. delta, B, C (grouped or shared) and y stay in position order.
    Equals the plain scan of ``cat([u, u.flip(-1)])`` with the second half of delta / B / C flipped in and y
    flipped back, without making those copies.
    """
    from mambaseg.ops.selective_scan_ref import check_scan_shapes

    out_dtype = out_dtype or u.dtype
    _require_library(u)
    if mirrored:
        if u.dim() != 3 or delta.dim() != 3 or u.shape[1] * 2 != delta.shape[1] or u.shape[::2] != delta.shape[::2]:
            raise ValueError(f"mirrored scan: u must be (batch, channels/2, L) for delta (batch, channels, L); got u "
                             f"{tuple(u.shape)}, delta {tuple(delta.shape)}")
        check_scan_shapes(delta, delta, A, B, C, D, delta_bias)
    else:
        check_scan_shapes(u, delta, A, B, C, D, delta_bias)
    y = _FusedScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, mirrored)
    return y.to(out_dtype)


def ss2d_scan_cpu(
    x: torch.Tensor,
    xdbl: torch.Tensor,
    dt_weight: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """SS2D's scan for inference on the fused CPU kernel: the 4 raster orders and their merge in one call.

    Equals ``cross_merge(selective_scan(cross_scan(x), delta, A, B, C, D, delta_bias, delta_softplus))`` with
    ``delta = dt_weight[k] @ dts_k`` and ``(dts_k, B_k, C_k)`` read from ``xdbl`` (the per-direction x_proj of each
    position), but the kernel reads every direction straight from the channels-last map by index arithmetic and adds
    the four outputs into one channels-last map: no scanned copies, no (4, D, L) delta or output, no merge.

    Args:
        x: (batch, H, W, D) scan input (after the depthwise conv and SiLU), channels-last.
        xdbl: (batch, H, W, 4, R + 2N) or (batch, H, W, 4 * (R + 2N)): for each position and direction k, the
            low-rank dt inputs (R values), B (N) and C (N); i.e. ``F.linear(x, x_proj_weight.reshape(-1, D))``.
        dt_weight: (4, D, R) dt projection of each direction (SS2D's ``dt_projs_weight``).
        A: (4 * D, N) state matrix; channel ``k * D + c`` is channel c of direction k.
        D: (4 * D,) skip weights or None.
        delta_bias: (4 * D,) or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.

    Returns:
        y (batch, H, W, D), the merged output, in float32 (float64 for float64 inputs). Forward only: the output
        does not require grad, so call it under ``torch.no_grad`` / ``torch.inference_mode`` (training uses
        :func:`selective_scan_cpu`).
    """
    _require_library(x)
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, H, W, D), got {tuple(x.shape)}")
    b, h, w, d = x.shape
    if A.dim() != 2 or A.shape[0] != 4 * d:
        raise ValueError(f"A must be (4 * D, N) = ({4 * d}, N), got {tuple(A.shape)}")
    if dt_weight.dim() != 3 or dt_weight.shape[:2] != (4, d):
        raise ValueError(f"dt_weight must be (4, D, R) = (4, {d}, R), got {tuple(dt_weight.shape)}")
    n, r = A.shape[1], dt_weight.shape[2]
    if xdbl.numel() != b * h * w * 4 * (r + 2 * n) or xdbl.shape[:3] != (b, h, w):
        raise ValueError(f"xdbl must be (batch, H, W, 4, R + 2N) = ({b}, {h}, {w}, 4, {r + 2 * n}), got "
                         f"{tuple(xdbl.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (4 * d,):
            raise ValueError(f"{name} must be (4 * D,) = ({4 * d},), got {tuple(t.shape)}")
    tensors = (x, xdbl, dt_weight, A, D, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError("ss2d_scan_cpu is forward-only and got tensors that require grad with grad mode on: "
                           "call it under torch.no_grad() / torch.inference_mode(), or use selective_scan_cpu")
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32

    def c(t):
        return None if t is None else t.to(cdt).contiguous()

    return torch.ops.mambaseg_scan.ss2d_fwd(
        c(x), c(xdbl).view(b, h * w, 4, r + 2 * n), c(dt_weight.transpose(1, 2)), c(A), c(D), c(delta_bias),
        bool(delta_softplus),
    )
