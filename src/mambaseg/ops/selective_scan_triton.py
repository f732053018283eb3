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
        ``num_warps1`` and ``SEG1_MAX_ROWS`` (the most batch x channels rows for which they are used); and for
        N >= 2 the segment-parallel kernels' ``SEGN_MAX_ROWS`` (the most batch x channels rows for which they are
        used; 0 = never), ``SEGN_PROGRAMS`` (forward programs aimed at when choosing the segment length),
        ``SEGN_MIN`` (fewest positions per segment), ``SEGN_MIN_SEGS`` (fewest segments worth splitting into),
        ``SEGN`` (0 = choose the segment length from the above; > 0 = that many positions, rounded up to whole
        backward sub-segments) and ``CARRY_S`` / ``CARRY_E`` / ``num_warps_carry`` (tile and warps of the kernel
        that carries states across segments).
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
    # N >= 2: the segment-parallel kernels (the tiles above, one program per (channel block, segment)) when
    # batch * channels <= SEGN_MAX_ROWS, i.e. when the kernels above would run at most 128 warps (forward) on the
    # whole GPU, and the sequence splits into at least SEGN_MIN_SEGS segments of at least SEGN_MIN positions
    # (their critical path is about two segments long, against the whole sequence for the kernels above).
    # SEGN_MIN_SEGS = 8: on the H100 (benchmarks/results/scan_gpu_h100_dermomamba.json) the three launches per
    # direction cost more host time than they save below that: at (4, 256, 768) and (4, 48, 512) an eager call took
    # 0.85 / 1.06 ms against 0.70 / 0.55 ms for the kernels above (whose GPU time is longer), and DermoMamba's
    # steps are bound by launches once its long scans are split.
    cfg.update(SEGN_MAX_ROWS=2048 if block_n >= 2 else 0, SEGN_PROGRAMS=4096, SEGN_MIN=128, SEGN_MIN_SEGS=8, SEGN=0,
               CARRY_S=32, CARRY_E=64, num_warps_carry=2)
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
    _PLANS.clear()  # plans hold the tiles they were built with
    try:
        yield
    finally:
        _CONFIG_OVERRIDE.clear()
        _CONFIG_OVERRIDE.update(saved)
        _PLANS.clear()

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


def _launch(kernel: Any, grid: tuple, tensors: tuple, scalars: tuple, *, num_warps: int, **constexprs: Any) -> tuple | None:
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

    Returns the cache entry ``(run, tail)`` (``run(grid3, (*tensors, *scalars, *tail))`` launches again), or None
    when the call produced no compiled kernel (interpreter).
    """
    key = (kernel, scalars, tuple([t.dtype for t in tensors]), tuple(constexprs.values()), num_warps,
           tensors[0].get_device())  # fmt: skip
    entry = _LAUNCH_CACHE.get(key)
    if entry is not None:
        run, tail = entry
        run((*grid, *(1,) * (3 - len(grid))), (*tensors, *scalars, *tail))
        return entry
    compiled = kernel[grid](*tensors, *scalars, num_warps=num_warps, **constexprs)
    if compiled is None or not hasattr(compiled, "__getitem__"):
        return None
    if len(_LAUNCH_CACHE) >= _LAUNCH_CACHE_MAX:
        _LAUNCH_CACHE.clear()
    names = kernel.arg_names[len(tensors) + len(scalars):]
    entry = _LAUNCH_CACHE[key] = (_direct_runner(compiled), tuple(constexprs[name] for name in names))
    return entry


def _config(d_group: int, seqlen: int, d_state: int) -> dict[str, int]:
    """The tile configuration (the cached table entry itself, not a copy: callers only read it)."""
    cfg = pick_config(d_group, seqlen, d_state)
    if _CONFIG_OVERRIDE:
        cfg = {**cfg, **_CONFIG_OVERRIDE}
    return cfg


def _check_inputs(u, delta, A, B, C, D, delta_bias) -> None:
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


class _Step:
    """One kernel launch of a :class:`_Plan`: what is the same on every call (grid, int arguments, compile-time
    arguments, warps) and, once a first call through :func:`_launch` has compiled it, the direct launcher."""

    __slots__ = ("kernel", "grid", "scalars", "constexprs", "num_warps", "entry")

    def __init__(self, kernel: Any, grid: tuple, scalars: tuple, num_warps: int, **constexprs: Any):
        self.kernel, self.grid, self.scalars = kernel, (*grid, *(1,) * (3 - len(grid))), scalars
        self.num_warps, self.constexprs, self.entry = num_warps, constexprs, None


def _fire(step: _Step, tensors: tuple) -> None:
    """Launch ``step`` on ``tensors``: directly once its compiled kernel is known, else through :func:`_launch`."""
    entry = step.entry
    if entry is not None:
        run, tail = entry
        run(step.grid, (*tensors, *step.scalars, *tail))
    else:
        step.entry = _launch(step.kernel, step.grid, tensors, step.scalars, num_warps=step.num_warps,
                             **step.constexprs)  # fmt: skip


def _segn_block_d(block_d: int, d_group: int, block_n: int) -> int:
    """Channels per program of the N >= 2 segment-parallel kernels: ``block_d`` halved while the half still covers
    the group's channels and, with the states, a warp's 32 lanes (no lanes idle on channels that do not exist,
    e.g. 8 channels per group at N = 16: 8, not 16)."""
    while block_d > 1 and block_d // 2 >= d_group and (block_d // 2) * block_n >= 32:
        block_d //= 2
    return block_d


def _segn_length(cfg: dict[str, Any], seqlen: int, row_blocks: int, unit: int) -> int:
    """Positions per segment of the N >= 2 segment-parallel kernels (a multiple of ``unit``): ``SEGN`` when set,
    else the length giving about ``SEGN_PROGRAMS`` forward programs over ``row_blocks`` channel blocks, at least
    ``SEGN_MIN``."""
    want = cfg["SEGN"] or max(cfg["SEGN_MIN"], -(-seqlen // max(1, cfg["SEGN_PROGRAMS"] // row_blocks)))
    return -(-want // unit) * unit


class _Plan:
    """Everything one call needs besides its tensors, worked out once per problem: (shapes, dtypes, flags, device)
    and whether gradients are needed. The kernels are the N = 1 segment-parallel pair (``seg1``), the N >= 2
    segment-parallel triple (``segn``: summary, carry, main) or the channel-per-lane forward and backward kernels;
    ``fwd`` and ``bwd`` are their launches in order, and the backward pass adds dA, dB, dC, dD, dbias into one
    zeroed fp32 buffer of ``buf_numel`` floats (see :func:`_grad_views`)."""

    __slots__ = ("seg1", "segn", "n_seg", "out_dtype", "states_shape", "sums_numel", "scratch_numel", "buf_numel",
                 "fwd", "bwd")  # fmt: skip

    def __init__(self, u, A, B, C, D, bias, softplus: bool, out_dtype: torch.dtype, needs_grad: bool):
        k = _kernels()
        batch, kd, seqlen = u.shape
        n = A.shape[1]
        groups = B.shape[1] if B.dim() == 4 else 1
        d_group = kd // groups
        # int(): under torch.compile with dynamic shapes (fake implementations) the sizes can be symbolic; the tile
        # table is looked up for their current values (a guard: another length or width compiles again)
        cfg = _config(int(d_group), int(seqlen), int(n))
        self.out_dtype = out_dtype
        self.seg1 = n == 1 and bool(cfg.get("SEG1")) and batch * kd <= cfg["SEG1_MAX_ROWS"]
        self.segn = False
        flags = dict(HAS_BIAS=bias is not None, SOFTPLUS=softplus)
        bgnl = batch * groups * n * seqlen  # floats of dB (and of dC) in the gradient buffer
        if self.seg1:
            # segment-parallel N = 1 kernels: a program per (BLOCK_D1 channels, SEG1 positions); the forward pass
            # keeps the state entering every segment (one float per row and segment)
            n_dblocks = -(-d_group // cfg["BLOCK_D1"])
            self.n_seg = n_seg = -(-seqlen // cfg["SEG1"])
            grid = (batch * groups * n_dblocks, n_seg)
            ints = (kd, seqlen, groups, d_group, n_dblocks, n_seg)
            meta = dict(BLOCK_D=cfg["BLOCK_D1"], SEG=cfg["SEG1"], num_warps=cfg["num_warps1"], **flags)
            self.sums_numel = 2 * batch * kd * n_seg
            self.states_shape = (batch * kd * n_seg,) if needs_grad else (self.sums_numel,)  # else: the sums
            self.scratch_numel = 0
            self.fwd = (_Step(k._selective_scan1_fwd_summary_kernel, grid, ints, **meta) if n_seg > 1 else None,
                        _Step(k._selective_scan1_fwd_kernel, grid, ints, HAS_D=D is not None,
                              STORE_STATES=needs_grad, **meta))  # fmt: skip
            self.bwd = (_Step(k._selective_scan1_bwd_summary_kernel, grid, ints, **meta) if n_seg > 1 else None,
                        _Step(k._selective_scan1_bwd_kernel, grid, (*ints, bgnl), HAS_D=D is not None, **meta))
        else:
            # the backward pass works on segments of ``seg_chunks`` chunks of BLOCK_L_BWD positions; the forward
            # pass stores the state at the end of every segment (N/64 of u's size for 64-position segments)
            bl = cfg["BLOCK_L_FWD"]
            seg_chunks = max(1, min(cfg["SEGMENT"] // cfg["BLOCK_L_BWD"], -(-seqlen // cfg["BLOCK_L_BWD"])))
            seg = seg_chunks * cfg["BLOCK_L_BWD"]
            if needs_grad and seg % bl:
                bl = cfg["BLOCK_L_BWD"]
            elif not needs_grad:
                seg = bl
            self.n_seg = n_seg = -(-seqlen // seg)
            self.states_shape = (batch, kd, n_seg, n) if needs_grad else (1,)
            common = dict(N=n, BLOCK_N=cfg["BLOCK_N"], HAS_D=D is not None, num_warps=cfg["num_warps"], **flags)
            # N >= 2 with few rows: the same tiles, one program per (channel block, segment of ``segl`` positions,
            # a whole number of the stored-state segments above)
            bd_f = _segn_block_d(cfg["BLOCK_D_FWD"], d_group, cfg["BLOCK_N"])
            rb_f = batch * groups * -(-d_group // bd_f)
            segl = _segn_length(cfg, seqlen, rb_f, seg)
            n_par = -(-seqlen // segl)
            self.segn = (n >= 2 and 0 < batch * kd <= cfg["SEGN_MAX_ROWS"] and n_par >= cfg["SEGN_MIN_SEGS"]
                         and n_par >= 2)  # fmt: skip
            if self.segn:
                self._segn_steps(k, cfg, batch, kd, seqlen, n, groups, d_group, bl, seg, seg_chunks, segl, n_par,
                                 bgnl, common, flags, needs_grad)  # fmt: skip
            else:
                n_dblocks = -(-d_group // cfg["BLOCK_D_FWD"])
                self.sums_numel = 0
                self.fwd = (_Step(k._selective_scan_fwd_kernel, (batch * groups * n_dblocks,),
                                  (kd, seqlen, groups, d_group, n_dblocks, -(-seqlen // bl), n_seg),
                                  BLOCK_D=cfg["BLOCK_D_FWD"], BLOCK_L=bl, STORE_EVERY=seg // bl,
                                  STORE_STATES=needs_grad, **common),)  # fmt: skip
                bd = cfg["BLOCK_D_BWD"]
                n_dblocks = -(-d_group // bd)
                n_prog = batch * groups * n_dblocks
                self.scratch_numel = n_prog * seg_chunks * cfg["BLOCK_N"] * bd
                self.bwd = (_Step(k._selective_scan_bwd_kernel, (n_prog,),
                                  (kd, seqlen, groups, d_group, n_dblocks, n_seg, seg_chunks, bgnl),
                                  BLOCK_D=bd, BLOCK_L=cfg["BLOCK_L_BWD"], **common),)  # fmt: skip
        self.buf_numel = 2 * bgnl + kd * (n + 2)

    def _segn_steps(self, k, cfg, batch, kd, seqlen, n, groups, d_group, bl, seg, seg_chunks, segl, n_par, bgnl,
                    common, flags, needs_grad) -> None:
        """Launches of the N >= 2 segment-parallel kernels: ``n_par`` segments of ``segl`` positions (a multiple of
        ``seg``, the positions between stored states, itself a multiple of the forward chunk ``bl``). Each pass is
        summary (grid: channel blocks x all segments but one), carry (grid: (row, state) elements / CARRY_E), main
        (channel blocks x segments); ``sums`` (3 x n_par x rows x N fp32) is allocated per pass."""
        rn = batch * kd * n
        self.sums_numel = 3 * n_par * rn
        bn = cfg["BLOCK_N"]
        carry = dict(CARRY_S=cfg["CARRY_S"], CARRY_E=cfg["CARRY_E"], num_warps=cfg["num_warps_carry"])
        carry_grid = (-(-rn // cfg["CARRY_E"]),)
        # forward: the state tiles of the kernel above
        bd = _segn_block_d(cfg["BLOCK_D_FWD"], d_group, bn)
        n_db = -(-d_group // bd)
        rb = batch * groups * n_db
        cps = segl // bl
        tiles = dict(N=n, BLOCK_D=bd, BLOCK_N=bn, BLOCK_L=bl, num_warps=cfg["num_warps"])
        base = (kd, seqlen, groups, d_group, n_db)
        self.fwd = (
            _Step(k._selective_scanN_seg_fwd_summary_kernel, (rb, n_par - 1), (*base, n_par, cps, rn), **tiles,
                  **flags),
            _Step(k._selective_scanN_seg_carry_kernel, carry_grid, (n_par, rn), REVERSE=False, **carry),
            _Step(k._selective_scanN_seg_fwd_kernel, (rb, n_par),
                  (*base, -(-seqlen // bl), self.n_seg, n_par, cps, rn), **tiles, STORE_EVERY=seg // bl,
                  HAS_D=common["HAS_D"], STORE_STATES=needs_grad, **flags),
        )  # fmt: skip
        # backward: the backward tiles; sub-segments of ``seg_chunks`` chunks, ``segl // seg`` per segment
        bd = _segn_block_d(cfg["BLOCK_D_BWD"], d_group, bn)
        n_db = -(-d_group // bd)
        rb = batch * groups * n_db
        blb = cfg["BLOCK_L_BWD"]
        tiles = dict(N=n, BLOCK_D=bd, BLOCK_N=bn, BLOCK_L=blb, num_warps=cfg["num_warps"])
        base = (kd, seqlen, groups, d_group, n_db)
        self.scratch_numel = rb * n_par * seg_chunks * bn * bd
        self.bwd = (
            _Step(k._selective_scanN_seg_bwd_summary_kernel, (rb, n_par - 1), (*base, n_par, segl // blb, rn),
                  **tiles, **flags),
            _Step(k._selective_scanN_seg_carry_kernel, carry_grid, (n_par, rn), REVERSE=True, **carry),
            _Step(k._selective_scanN_seg_bwd_kernel, (rb, n_par),
                  (*base, self.n_seg, n_par, segl // seg, seg_chunks, rn, bgnl), **tiles, HAS_D=common["HAS_D"],
                  **flags),
        )  # fmt: skip


# plans by (shapes, dtypes, flags, device) of CUDA calls; the shape checks ran when a plan was made
_PLANS: dict[tuple, dict[bool, _Plan]] = {}
_PLANS_MAX = 1024


def _plans_for(u, delta, A, B, C, D, bias, softplus: bool, out_dtype: torch.dtype | None) -> dict[bool, _Plan]:
    """The plans of this problem by ``needs_grad`` (built by the forward pass on first use); validates the inputs
    (with :func:`_check_inputs`) the first time a CUDA problem is seen and on every CPU (interpreter) call."""
    key = (u.shape, delta.shape, A.shape, B.shape, C.shape, None if D is None else D.shape,
           None if bias is None else bias.shape, u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype,
           None if D is None else D.dtype, None if bias is None else bias.dtype, softplus, out_dtype,
           u.get_device())  # fmt: skip
    plans = _PLANS.get(key)
    if plans is None:
        _check_inputs(u, delta, A, B, C, D, bias)
        plans = {}
        if u.is_cuda:
            if len(_PLANS) >= _PLANS_MAX:
                _PLANS.clear()
            _PLANS[key] = plans
    return plans


def _plan(plans: dict[bool, _Plan], needs_grad: bool, u, A, B, C, D, bias, softplus: bool,
          out_dtype: torch.dtype | None) -> _Plan:
    """``plans[needs_grad]``, built on first use."""
    plan = plans.get(needs_grad)
    if plan is None:
        plan = plans[needs_grad] = _Plan(u, A, B, C, D, bias, softplus, out_dtype or u.dtype, needs_grad)
    return plan


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the dispatcher round trip when it already has that dtype (backward hot path)."""
    return t if t.dtype == dtype else t.to(dtype)


def _run_forward(plans: dict[bool, _Plan], u, delta, A, B, C, D, bias, softplus: bool, out_dtype: torch.dtype | None,
                 needs_grad: bool) -> tuple:
    """Launch the forward kernels of ``plans[needs_grad]`` (built on first use); returns ``y``, the stored states
    (the backward pass's input), the plan and the inputs as handed to the kernels (contiguous, aligned)."""
    u, delta, A, B, C, D, bias = map(_aligned, (u, delta, A, B, C, D, bias))
    plan = _plan(plans, needs_grad, u, A, B, C, D, bias, softplus, out_dtype)
    dev = u.device
    y = torch.empty(u.shape, device=dev, dtype=plan.out_dtype)
    D_arg = u if D is None else D  # absent optional inputs: ``u`` stands in (never read)
    bias_arg = u if bias is None else bias
    if plan.seg1:
        sums = torch.empty(plan.sums_numel, device=dev, dtype=torch.float32)
        states = torch.empty(plan.states_shape, device=dev, dtype=torch.float32) if needs_grad else sums
        if plan.fwd[0] is not None:
            _fire(plan.fwd[0], (u, delta, A, B, bias_arg, sums))
        _fire(plan.fwd[1], (u, delta, A, B, C, D_arg, bias_arg, y, sums, states))
    elif plan.segn:
        sums = torch.empty(plan.sums_numel, device=dev, dtype=torch.float32)
        states = torch.empty(plan.states_shape, device=dev, dtype=torch.float32)
        _fire(plan.fwd[0], (u, delta, A, B, bias_arg, sums))
        _fire(plan.fwd[1], (sums,))
        _fire(plan.fwd[2], (u, delta, A, B, C, D_arg, bias_arg, y, sums, states))
    else:
        states = torch.empty(plan.states_shape, device=dev, dtype=torch.float32)
        _fire(plan.fwd[0], (u, delta, A, B, C, D_arg, bias_arg, y, states))
    return y, states, plan, (u, delta, A, B, C, D, bias)


def _run_backward(plan: _Plan, u, delta, A, B, C, D, bias, states, dy) -> tuple:
    """Launch the backward kernels of ``plan`` (inputs as :func:`_run_forward` returned them); returns ``du``,
    ``ddelta`` and the fp32 buffer ``[dB | dC | dA | dD | dbias]`` the kernels add the other gradients into."""
    dy = _aligned(dy)
    dev = u.device
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    buf = torch.zeros(plan.buf_numel, device=dev, dtype=torch.float32)
    D_arg = u if D is None else D
    bias_arg = u if bias is None else bias
    if plan.seg1:
        sums = torch.empty(plan.sums_numel, device=dev, dtype=torch.float32)
        if plan.bwd[0] is not None:
            _fire(plan.bwd[0], (delta, dy, A, C, bias_arg, sums))
        _fire(plan.bwd[1], (u, delta, A, B, C, D_arg, bias_arg, dy, states, sums, du, ddelta, buf))
    elif plan.segn:
        sums = torch.empty(plan.sums_numel, device=dev, dtype=torch.float32)
        scratch = torch.empty(plan.scratch_numel, device=dev, dtype=torch.float32)
        _fire(plan.bwd[0], (delta, dy, A, C, bias_arg, sums))
        _fire(plan.bwd[1], (sums,))
        _fire(plan.bwd[2], (u, delta, A, B, C, D_arg, bias_arg, dy, states, sums, scratch, du, ddelta, buf))
    else:
        scratch = torch.empty(plan.scratch_numel, device=dev, dtype=torch.float32)
        _fire(plan.bwd[0], (u, delta, A, B, C, D_arg, bias_arg, dy, states, scratch, du, ddelta, buf))
    return du, ddelta, buf


def _grad_views(buf: torch.Tensor, A, B, C, D, bias) -> tuple:
    """(dA, dB, dC, dD, dbias) from the gradient buffer ``[dB | dC | dA | dD | dbias]`` (dB, dC of B's size, dA of
    A's, dD and dbias of KD floats): views where the input is fp32, else converted to the input's dtype."""
    bgnl = B.numel()
    kd, n = A.shape
    return (
        _as(buf.as_strided((kd, n), (n, 1), 2 * bgnl), A.dtype),
        _as(buf.narrow(0, 0, bgnl).view(B.shape), B.dtype),
        _as(buf.narrow(0, bgnl, bgnl).view(C.shape), C.dtype),
        None if D is None else _as(buf.as_strided((kd,), (1,), 2 * bgnl + kd * n), D.dtype),
        None if bias is None else _as(buf.as_strided((kd,), (1,), 2 * bgnl + kd * (n + 1)), bias.dtype),
    )


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype, plans):
        needs_grad = any(ctx.needs_input_grad[:7])
        y, states, plan, inputs = _run_forward(plans, u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype,
                                               needs_grad)  # fmt: skip
        if needs_grad:
            ctx.save_for_backward(*inputs, states)
            ctx.plan = plan
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, bias, states = ctx.saved_tensors
        du, ddelta, buf = _run_backward(ctx.plan, u, delta, A, B, C, D, bias, states, dy)
        return (du, ddelta, *_grad_views(buf, A, B, C, D, bias), None, None, None)


# ---- the same computation as two custom operators, for torch.compile -------------------------------------------
# Dynamo cannot trace the launches above: it would break the graph at every scan (and re-trace the code after each
# break for every distinct module constant, e.g. each block's drop-path rate). As opaque operators with fake
# (shape-only) implementations and a registered backward, the scans sit inside one compiled graph.


def _on_device(t: torch.Tensor) -> Any:
    """Context making ``t``'s GPU the current device when it is not: kernels launch on the current device (Triton's
    rule), and the launch cache keys on the tensors' device."""
    if t.is_cuda and t.get_device() != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@torch.library.custom_op("mambaseg::selective_scan_triton_fwd", mutates_args=())
def _op_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool, out_dtype: torch.dtype,
            needs_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(y, states): the forward pass; ``states`` is the backward pass's input (unused without ``needs_grad``)."""
    plans = _plans_for(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype)
    with _on_device(u):
        y, states, _, _ = _run_forward(plans, u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype, needs_grad)
    return y, states


@_op_fwd.register_fake
def _op_fwd_fake(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype, needs_grad):
    _check_inputs(u, delta, A, B, C, D, delta_bias)
    plan = _Plan(u, A, B, C, D, delta_bias, delta_softplus, out_dtype, needs_grad)
    return u.new_empty(u.shape, dtype=out_dtype), u.new_empty(plan.states_shape, dtype=torch.float32)


@torch.library.custom_op("mambaseg::selective_scan_triton_bwd", mutates_args=())
def _op_bwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: torch.Tensor | None, delta_bias: torch.Tensor | None, states: torch.Tensor, dy: torch.Tensor,
            delta_softplus: bool, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(du, ddelta, gradient buffer ``[dB | dC | dA | dD | dbias]``)."""
    plans = _plans_for(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype)
    plan = _plan(plans, True, u, A, B, C, D, delta_bias, delta_softplus, out_dtype)
    u, delta, A, B, C, D, delta_bias, states = map(_aligned, (u, delta, A, B, C, D, delta_bias, states))
    with _on_device(u):
        return _run_backward(plan, u, delta, A, B, C, D, delta_bias, states, dy)


@_op_bwd.register_fake
def _op_bwd_fake(u, delta, A, B, C, D, delta_bias, states, dy, delta_softplus, out_dtype):
    plan = _Plan(u, A, B, C, D, delta_bias, delta_softplus, out_dtype, True)
    return torch.empty_like(u), torch.empty_like(delta), u.new_empty((plan.buf_numel,), dtype=torch.float32)


def _op_setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, bias, softplus, out_dtype, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, bias, output[1])
    ctx.softplus, ctx.out_dtype = softplus, out_dtype


def _op_backward(ctx, dy, _dstates):
    u, delta, A, B, C, D, bias, states = ctx.saved_tensors
    du, ddelta, buf = _op_bwd(u, delta, A, B, C, D, bias, states, dy, ctx.softplus, ctx.out_dtype)
    return (du, ddelta, *_grad_views(buf, A, B, C, D, bias), None, None, None)


_op_fwd.register_autograd(_op_backward, setup_context=_op_setup_context)


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
    softplus = bool(delta_softplus)
    if torch.compiler.is_compiling():  # traced by torch.compile: the custom operators (one graph, no breaks)
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias)
        )
        return _op_fwd(u, delta, A, B, C, D, delta_bias, softplus, out_dtype or u.dtype, needs_grad)[0]
    plans = _plans_for(u, delta, A, B, C, D, delta_bias, softplus, out_dtype)
    with _on_device(u):
        return _SelectiveScanTriton.apply(u, delta, A, B, C, D, delta_bias, softplus, out_dtype, plans)
