"""Triton backend of :func:`mambaseg.ops.selective_scan`.

The kernels live in :mod:`mambaseg.ops._triton_scan` and are imported on first use, so this
module imports cleanly without Triton; :func:`is_available` says whether the backend can run.

Semantics (identical to the ``"ref"`` backend), with ``K*D`` channels split into ``G`` groups::

    delta' = softplus(delta + delta_bias)            (if delta_softplus, else delta + delta_bias)
    h_t    = exp(delta'_t * A) * h_{t-1} + delta'_t * B_t * u_t      (h_{-1} = 0)
    y_t    = C_t . h_t + D * u_t

State math is fp32 whatever the input dtype; the output has ``u``'s dtype.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["selective_scan_triton", "is_available", "pick_config"]


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def is_available() -> tuple[bool, str]:
    """Whether the Triton backend can run here (cached; see :func:`_availability`).

    Returns:
        ``(True, reason)`` when Triton is importable and a CUDA device is visible (or Triton's interpreter is
        switched on by the caller's ``TRITON_INTERPRET=1``, which runs the kernels on CPU tensors), else
        ``(False, reason)``.
    """
    return _availability(_interpreter_on())


@functools.lru_cache(maxsize=2)
def _availability(interpreter: bool) -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton, or mambaseg[gpu])"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - broken installs only
        return False, f"triton failed to import: {exc!r}"
    if not torch.cuda.is_available():
        if interpreter:
            return True, "Triton interpreter (TRITON_INTERPRET=1): runs on CPU tensors, slowly"
        return False, "no CUDA device visible to torch"
    return True, ""


def _kernels():
    from mambaseg.ops import _triton_scan

    return _triton_scan


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


@functools.lru_cache(maxsize=256)
def pick_config(d_group: int, seqlen: int, d_state: int) -> dict[str, int]:
    """Tile sizes for one problem shape (cached heuristic table, measured on an H100; see docs/triton_kernel.md).

    A program is one warp. Its register tile is (BLOCK_L, BLOCK_N, BLOCK_D): the lanes cover the channels
    first, then the states, so each thread holds ``BLOCK_L`` positions (the scan axis) times a few states
    of one channel. When gradients are needed, the forward kernel stores the state every ``SEGMENT``
    positions (rounded to whole backward chunks) and runs with ``BLOCK_L_FWD`` only if that divides the segment
    (else with ``BLOCK_L_BWD``); the backward kernel re-runs the recurrence inside each segment.

    Args:
        d_group: channels per B/C group.
        seqlen: sequence length L.
        d_state: state size N.

    Returns:
        dict with ``BLOCK_N``, ``BLOCK_D_FWD``, ``BLOCK_L_FWD``, ``BLOCK_D_BWD``, ``BLOCK_L_BWD``, ``SEGMENT``
        (positions between stored states), ``num_warps``; and for N = 1 the segment-parallel kernels' ``SEG1``
        (positions per program, a power of two; 0 = use the kernels above), ``BLOCK_D1`` (channels per program),
        ``num_warps1`` and ``SEG1_MAX_ROWS`` (the most batch x channels rows for which they are used).
    """
    block_n = _next_pow2(d_state)
    # SEGMENT: positions between the states stored by the forward pass (the backward kernel re-runs the
    # recurrence inside a segment); N >= 2: 64 (stored states are N/64 of u's size), N = 1: one chunk (1/16).
    if block_n >= 8:  # lanes: 8 channels x 4 state groups
        cfg = {"BLOCK_D_FWD": 16, "BLOCK_L_FWD": 8, "BLOCK_D_BWD": 8, "BLOCK_L_BWD": 8, "SEGMENT": 64}
    elif block_n >= 2:
        cfg = {"BLOCK_D_FWD": 16, "BLOCK_L_FWD": 16, "BLOCK_D_BWD": 8, "BLOCK_L_BWD": 16, "SEGMENT": 64}
    else:
        cfg = {"BLOCK_D_FWD": 8, "BLOCK_L_FWD": 32, "BLOCK_D_BWD": 4, "BLOCK_L_BWD": 16, "SEGMENT": 16}
    # N = 1: the segment-parallel kernels (positions over the lanes, one program per (16 channels, SEG1 positions))
    # when batch * channels <= SEG1_MAX_ROWS (too few rows to fill the GPU with the channel-per-lane kernels,
    # e.g. batch-1 inference); with a training batch the channel-per-lane kernels were faster on the H100
    # (benchmarks/results/scan_gpu_h100_n1_sweep.json). SEG1 = 0 never uses them.
    cfg.update(SEG1=128 if block_n == 1 else 0, BLOCK_D1=16, num_warps1=4, SEG1_MAX_ROWS=4096)
    cfg["SEG1"] = min(cfg["SEG1"], max(16, _next_pow2(seqlen))) if cfg["SEG1"] else 0
    cfg["BLOCK_L_FWD"] = min(cfg["BLOCK_L_FWD"], max(2, _next_pow2(seqlen)))
    cfg["BLOCK_L_BWD"] = min(cfg["BLOCK_L_BWD"], max(2, _next_pow2(seqlen)))
    cfg.update(BLOCK_N=block_n, num_warps=1)
    return cfg


_CONFIG_OVERRIDE: dict[str, Any] = {}


@contextlib.contextmanager
def tile_override(cfg: dict[str, Any]) -> Iterator[None]:
    """Within the block every call uses the entries of ``cfg`` over :func:`pick_config`'s (tile sweeps, tests);
    the previous override is restored on exit."""
    saved = dict(_CONFIG_OVERRIDE)
    _CONFIG_OVERRIDE.clear()
    _CONFIG_OVERRIDE.update(cfg)
    try:
        yield
    finally:
        _CONFIG_OVERRIDE.clear()
        _CONFIG_OVERRIDE.update(saved)

# launchers of compiled kernels by (kernel, int arguments, tensor dtypes, constexprs, num_warps, device); see _launch
_LAUNCH_CACHE: dict[tuple, tuple] = {}
_LAUNCH_CACHE_MAX = 4096


def _aligned(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` made contiguous, copied if its data does not start on a 16-byte boundary (None stays None).

    Triton compiles a kernel for 16-byte aligned pointers when the first call passes such pointers, and the launch
    cache (:func:`_launch`) keys a compiled kernel on everything but alignment; so every tensor handed to a kernel
    is aligned: fresh allocations are, and user tensors that are not (views at odd offsets) are copied here.
    """
    if t is None:
        return None
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _direct_runner(compiled: Any) -> Any:
    """``run(grid3, args)`` launching ``compiled`` (a Triton ``CompiledKernel``) with the least host work.

    Triton's own runner looks the device and stream up through its driver layer and builds launch metadata for
    profiler hooks on every call; here the launcher, function handle and packed metadata are taken once, the
    stream getter of Triton's driver is bound once, and the hooks (with their metadata) are passed
    only while a profiler has registered one, as Triton does. Objects without that API (other Triton versions)
    are launched through their ``[grid]`` runner.
    """
    needed = ("run", "function", "packed_metadata", "launch_metadata")
    if not all(hasattr(compiled, name) for name in needed):
        return lambda grid, args: compiled[grid](*args)
    from triton import knobs
    from triton.runtime import driver

    active = driver.active
    if not (hasattr(active, "get_current_stream") and hasattr(active, "get_current_device")):
        return lambda grid, args: compiled[grid](*args)
    launcher, function, packed = compiled.run, compiled.function, compiled.packed_metadata
    runtime = knobs.runtime
    raw_stream, current_device = active.get_current_stream, active.get_current_device

    def hook_set(hook: Any) -> bool:
        return hook is not None and bool(getattr(hook, "calls", True))  # an empty HookChain is no hook

    def run(grid: tuple, args: tuple) -> None:
        stream = raw_stream(current_device())
        enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook
        if hook_set(enter) or hook_set(leave):
            launcher(grid[0], grid[1], grid[2], stream, function, packed,
                     compiled.launch_metadata(grid, stream, *args), enter, leave, *args)  # fmt: skip
        else:
            launcher(grid[0], grid[1], grid[2], stream, function, packed, None, None, None, *args)

    return run


def _launch(kernel: Any, grid: tuple, tensors: tuple, scalars: tuple, *, num_warps: int, **constexprs: Any) -> None:
    """``kernel[grid](*tensors, *scalars, num_warps=..., **constexprs)``, minus most of Triton's per-call host work.

    The kernels take their tensor arguments first, then their int arguments, then the compile-time ones.
    Triton's ``JITFunction.run`` binds and specialises every argument and looks the compiled kernel up on each
    call (about 0.1 ms of host time per launch on the H100 machine, as much as the GPU time of a small N = 1 scan).
    The first call for a specialisation goes through it (compiling if needed) and a direct launcher of the returned
    ``CompiledKernel`` is kept (:func:`_direct_runner`); later calls launch it with all arguments in signature order
    (Triton's launcher drops the constexpr ones). The key holds what a compiled kernel depends on: the exact int
    arguments (Triton specialises on ``== 1`` and divisibility by 16), each tensor's dtype, the constexprs,
    ``num_warps`` and the device. Pointer alignment is not in the key: the callers pass 16-byte aligned tensors only
    (:func:`_aligned`). Under Triton's interpreter the ``[grid]`` call returns no compiled kernel and every call
    takes the normal path.
    """
    key = (kernel, scalars, tuple([t.dtype for t in tensors]), tuple(constexprs.values()), num_warps,
           tensors[0].get_device())  # fmt: skip
    entry = _LAUNCH_CACHE.get(key)
    if entry is not None:
        run, tail = entry
        run((*grid, *(1,) * (3 - len(grid))), (*tensors, *scalars, *tail))
        return
    compiled = kernel[grid](*tensors, *scalars, num_warps=num_warps, **constexprs)
    if compiled is not None and hasattr(compiled, "__getitem__"):
        if len(_LAUNCH_CACHE) >= _LAUNCH_CACHE_MAX:
            _LAUNCH_CACHE.clear()
        names = kernel.arg_names[len(tensors) + len(scalars):]
        _LAUNCH_CACHE[key] = (_direct_runner(compiled), tuple(constexprs[name] for name in names))


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the dispatcher round trip when it already has that dtype (backward hot path)."""
    return t if t.dtype == dtype else t.to(dtype)


def _config(d_group: int, seqlen: int, d_state: int) -> dict[str, int]:
    """The tile configuration (the cached table entry itself, not a copy: callers only read it)."""
    cfg = pick_config(d_group, seqlen, d_state)
    if _CONFIG_OVERRIDE:
        cfg = {**cfg, **_CONFIG_OVERRIDE}
    return cfg


# input shapes already validated on CUDA (the checks below cost as much host time as a kernel launch)
_CHECKED: set[tuple] = set()


def _check_inputs(u, delta, A, B, C, D, delta_bias):
    key = (u.shape, delta.shape, A.shape, B.shape, C.shape, D.shape if D is not None else None,
           delta_bias.shape if delta_bias is not None else None)  # fmt: skip
    if u.is_cuda and key in _CHECKED:
        return
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, channels, L), got shape {tuple(u.shape)}")
    batch, kd, seqlen = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != kd:
        raise ValueError(f"A must be (channels={kd}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    if not 1 <= n <= 16:
        raise ValueError(f"the Triton scan supports d_state N in 1..16, got N={n}")
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            ok = t.shape == (batch, n, seqlen)
        elif t.dim() == 4:
            ok = t.shape[0] == batch and t.shape[2:] == (n, seqlen) and t.shape[1] >= 1 and kd % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{name} must be (batch, N, L)=({batch}, {n}, {seqlen}) or (batch, G, N, L) with G dividing "
                f"{kd} channels, got {tuple(t.shape)}"
            )
    if B.dim() != C.dim() or (B.dim() == 4 and B.shape[1] != C.shape[1]):
        raise ValueError(f"B and C must have the same grouping, got {tuple(B.shape)} and {tuple(C.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (kd,):
            raise ValueError(f"{name} must be ({kd},), got {tuple(t.shape)}")
    if not (u.is_cuda or _interpreter_on()):
        raise ValueError(
            "the Triton selective scan needs CUDA tensors (u is on "
            f"{u.device}); use backend='torch' or 'ref' on CPU"
        )
    if u.is_cuda:
        if len(_CHECKED) >= 4096:
            _CHECKED.clear()
        _CHECKED.add(key)


def _split_grads(buf, A, B, C, D, bias, bgnl: int, kd: int, n: int) -> tuple:
    """(dA, dB, dC, dD, dbias) as views of the gradient buffer [dB | dC | dA | dD | dbias] (dB, dC of
    ``bgnl`` = batch * G * N * L floats, dA of KD * N, dD and dbias of KD), in the inputs' dtypes."""
    dB, dC, dA, dD, dbias = buf.split((bgnl, bgnl, kd * n, kd, kd))
    return (
        _as(dA.view(kd, n), A.dtype),
        _as(dB.view(B.shape), B.dtype),
        _as(dC.view(C.shape), C.dtype),
        _as(dD, D.dtype) if D is not None else None,
        _as(dbias, bias.dtype) if bias is not None else None,
    )


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype):
        k = _kernels()
        batch, kd, seqlen = u.shape
        n = A.shape[1]
        grouped = B.dim() == 4
        groups = B.shape[1] if grouped else 1
        d_group = kd // groups
        u_c, delta_c, A_c, B_c, C_c, D_c, bias_c = map(_aligned, (u, delta, A, B, C, D, delta_bias))
        softplus = bool(delta_softplus)

        needs_grad = any(ctx.needs_input_grad[:7])
        cfg = _config(d_group, seqlen, n)
        args = (k, u_c, delta_c, A_c, B_c, C_c, D_c, bias_c, softplus, groups, d_group, cfg, needs_grad,
                out_dtype or u.dtype)  # fmt: skip
        if n == 1 and cfg.get("SEG1") and batch * kd <= cfg["SEG1_MAX_ROWS"]:
            y, states, n_seg = _fwd_seg1(*args)
            seg_chunks = 0  # tells the backward pass to use the segment-parallel kernels
        else:
            y, states, seg_chunks, n_seg = _fwd_chunked(*args)
        if needs_grad:
            ctx.save_for_backward(u_c, delta_c, A_c, B_c, C_c, D_c, bias_c, states)
            ctx.meta = (softplus, groups, d_group, cfg, seg_chunks, n_seg)
        return y

    @staticmethod
    def backward(ctx, dy):
        k = _kernels()
        u, delta, A, B, C, D, bias, states = ctx.saved_tensors
        softplus, groups, d_group, cfg, seg_chunks, n_seg = ctx.meta
        batch, kd, seqlen = u.shape
        n = A.shape[1]
        dy = _aligned(dy)
        bgnl = batch * groups * n * seqlen
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        # one zeroed fp32 buffer for every gradient the kernels add up atomically: [dB | dC | dA | dD | dbias]
        buf = torch.zeros(2 * bgnl + kd * (n + 2), device=u.device, dtype=torch.float32)
        if seg_chunks == 0:  # the N = 1 segment-parallel kernels
            _bwd_seg1(k, u, delta, A, B, C, D, bias, states, dy, du, ddelta, buf, softplus, groups, d_group, cfg,
                      n_seg, bgnl)
        else:
            bl, bd = cfg["BLOCK_L_BWD"], cfg["BLOCK_D_BWD"]
            n_dblocks = -(-d_group // bd)
            n_prog = batch * groups * n_dblocks
            scratch = torch.empty(n_prog * seg_chunks * cfg["BLOCK_N"] * bd, device=u.device, dtype=torch.float32)
            _launch(k._selective_scan_bwd_kernel, (n_prog,),
                (u, delta, A, B, C, D if D is not None else u, bias if bias is not None else u, dy, states, scratch,
                 du, ddelta, buf),
                (kd, seqlen, groups, d_group, n_dblocks, n_seg, seg_chunks, bgnl),
                N=n, BLOCK_D=bd, BLOCK_N=cfg["BLOCK_N"], BLOCK_L=bl,
                HAS_D=D is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus,
                num_warps=cfg["num_warps"],
            )  # fmt: skip
        dA, dB, dC, dD, dbias = _split_grads(buf, A, B, C, D, bias, bgnl, kd, n)
        return du, ddelta, dA, dB, dC, dD, dbias, None, None


def _fwd_chunked(k, u, delta, A, B, C, D, bias, softplus, groups, d_group, cfg, needs_grad, out_dtype):
    """Forward with the channel-per-lane kernel; returns y, the stored states and the backward segmentation."""
    batch, kd, seqlen = u.shape
    n = A.shape[1]
    bl = cfg["BLOCK_L_FWD"]
    # the backward pass works on segments of ``seg_chunks`` chunks of BLOCK_L_BWD positions; the forward
    # pass stores the state at the end of every segment (N/64 of u's size for 64-position segments)
    seg_chunks = max(1, min(cfg["SEGMENT"] // cfg["BLOCK_L_BWD"], -(-seqlen // cfg["BLOCK_L_BWD"])))
    seg = seg_chunks * cfg["BLOCK_L_BWD"]
    if needs_grad and seg % bl:
        bl = cfg["BLOCK_L_BWD"]
    elif not needs_grad:
        seg = bl
    n_chunks = -(-seqlen // bl)
    n_seg = -(-seqlen // seg)
    n_dblocks = -(-d_group // cfg["BLOCK_D_FWD"])
    y = torch.empty_like(u, dtype=out_dtype)
    states = torch.empty((batch, kd, n_seg, n) if needs_grad else (1,), device=u.device, dtype=torch.float32)
    _launch(k._selective_scan_fwd_kernel, (batch * groups * n_dblocks,),
        (u, delta, A, B, C, D if D is not None else u, bias if bias is not None else u, y, states),
        (kd, seqlen, groups, d_group, n_dblocks, n_chunks, n_seg),
        N=n, BLOCK_D=cfg["BLOCK_D_FWD"], BLOCK_N=cfg["BLOCK_N"], BLOCK_L=bl, STORE_EVERY=seg // bl,
        HAS_D=D is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus,
        STORE_STATES=needs_grad, num_warps=cfg["num_warps"],
    )  # fmt: skip
    return y, states, seg_chunks, n_seg


def _seg1_plan(u: torch.Tensor, bias: torch.Tensor | None, softplus: bool, groups: int, d_group: int,
               cfg: dict[str, int]) -> tuple:
    """What the forward and the backward launches of the segment-parallel kernels share: the number of segments,
    the grid, the int and compile-time arguments, the bias argument (``u`` stands in for an absent one) and a
    buffer for the per-segment maps (rows, n_seg, 2)."""
    batch, kd, seqlen = u.shape
    n_dblocks = -(-d_group // cfg["BLOCK_D1"])
    n_seg = -(-seqlen // cfg["SEG1"])
    meta = dict(BLOCK_D=cfg["BLOCK_D1"], SEG=cfg["SEG1"], HAS_BIAS=bias is not None, SOFTPLUS=softplus,
                num_warps=cfg["num_warps1"])
    sums = torch.empty(2 * batch * kd * n_seg, device=u.device, dtype=torch.float32)
    grid = (batch * groups * n_dblocks, n_seg)
    return n_seg, grid, (kd, seqlen, groups, d_group, n_dblocks, n_seg), meta, bias if bias is not None else u, sums


def _fwd_seg1(k, u, delta, A, B, C, D, bias, softplus, groups, d_group, cfg, needs_grad, out_dtype):
    """N = 1 forward with the segment-parallel kernels: segment maps, then every segment from its entering state."""
    n_seg, grid, scalars, meta, bias_arg, sums = _seg1_plan(u, bias, softplus, groups, d_group, cfg)
    y = torch.empty_like(u, dtype=out_dtype)
    states = torch.empty(u.shape[0] * u.shape[1] * n_seg, device=u.device, dtype=torch.float32) if needs_grad else sums
    if n_seg > 1:
        _launch(k._selective_scan1_fwd_summary_kernel, grid, (u, delta, A, B, bias_arg, sums), scalars, **meta)
    _launch(k._selective_scan1_fwd_kernel, grid,
        (u, delta, A, B, C, D if D is not None else u, bias_arg, y, sums, states), scalars,
        HAS_D=D is not None, STORE_STATES=needs_grad, **meta,
    )  # fmt: skip
    return y, states, n_seg


def _bwd_seg1(k, u, delta, A, B, C, D, bias, states, dy, du, ddelta, buf, softplus, groups, d_group, cfg, n_seg,
              bgnl) -> None:
    """N = 1 backward with the segment-parallel kernels into ``du``, ``ddelta`` and the gradient buffer."""
    n_seg_now, grid, scalars, meta, bias_arg, sums = _seg1_plan(u, bias, softplus, groups, d_group, cfg)
    assert n_seg_now == n_seg, "the tile configuration changed between forward and backward"
    if n_seg > 1:
        _launch(k._selective_scan1_bwd_summary_kernel, grid, (delta, dy, A, C, bias_arg, sums), scalars, **meta)
    _launch(k._selective_scan1_bwd_kernel, grid,
        (u, delta, A, B, C, D if D is not None else u, bias_arg, dy, states, sums, du, ddelta, buf),
        (*scalars, bgnl), HAS_D=D is not None, **meta,
    )  # fmt: skip


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Selective scan with Triton kernels (differentiable).

    Args:
        u: (batch, K*D, L) input, fp32 / bf16 / fp16.
        delta: (batch, K*D, L) step sizes before bias / softplus.
        A: (K*D, N) state matrix (diagonal, usually negative), 1 <= N <= 16.
        B: (batch, K, N, L) grouped (channel c uses group c // D) or (batch, N, L).
        C: same layout as ``B``.
        D: optional (K*D,) skip weights.
        delta_bias: optional (K*D,) bias added to ``delta``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        out_dtype: dtype of ``y`` (default ``u``'s); e.g. bf16 inputs with an fp32 output.

    Returns:
        y: (batch, K*D, L) in ``out_dtype``.

    Raises:
        ValueError: on shapes that do not match, N outside 1..16, or non-CUDA tensors (unless Triton's
            interpreter is switched on by the caller's environment).
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias)
    if u.is_cuda and u.get_device() != torch.cuda.current_device():
        # kernels launch on the current device (Triton's rule, and the launch cache keys on the tensors' device)
        with torch.cuda.device(u.device):
            return _SelectiveScanTriton.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype)
    return _SelectiveScanTriton.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype)
