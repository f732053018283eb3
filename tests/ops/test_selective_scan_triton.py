"""Triton selective-scan kernels vs the float64 sequential reference: run under Triton's interpreter on any machine
and, on a CUDA machine, compiled (the [cuda] cases; the kernels users run).

The kernels run in ONE child process started with ``TRITON_INTERPRET=1`` (the variable must be set before
Triton is first imported: Triton's own ``@jit`` library functions, e.g. ``tl.flip``, are built at import time).
The child imports this file, checks that the kernels really are interpreted, runs every case of ``CASES`` and
reports relative errors as JSON; the tests below assert on them. Shapes are tiny: the interpreter runs every
program instance in Python.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

# name -> (problem, tile overrides); problem keys: batch, groups, d_group, seqlen, n, grouped, has_d, has_bias, softplus
CASES: dict[str, tuple[dict, dict]] = {
    # L=19 is not a multiple of any block: several chunks and segments, partial last chunk
    "grouped_all_options": (
        dict(batch=2, groups=2, d_group=5, seqlen=19, n=3),
        dict(BLOCK_L_FWD=2, BLOCK_L_BWD=4, SEGMENT=8, BLOCK_D_FWD=2, BLOCK_D_BWD=4),
    ),
    "n1_ungrouped_no_options": (
        dict(batch=1, groups=2, d_group=4, seqlen=13, n=1, grouped=False, has_d=False, has_bias=False, softplus=False),
        dict(BLOCK_L_FWD=4, BLOCK_L_BWD=4, SEGMENT=8, SEG1=0),  # SEG1=0: the channel-per-lane kernels at N=1
    ),
    # N=1 segment-parallel kernels: 5 segments (partial last), channel blocks that do not divide d_group
    "n1_segments_all_options": (dict(batch=2, groups=2, d_group=5, seqlen=19, n=1), dict(SEG1=4, BLOCK_D1=4)),
    "n1_segments_ungrouped_no_options": (
        dict(batch=1, groups=2, d_group=4, seqlen=13, n=1, grouped=False, has_d=False, has_bias=False, softplus=False),
        dict(SEG1=4, BLOCK_D1=4),
    ),
    "n1_segments_d_only": (
        dict(batch=1, groups=2, d_group=3, seqlen=21, n=1, has_d=True, has_bias=False, softplus=True),
        dict(SEG1=8, BLOCK_D1=2),
    ),
    # the GPU tile table itself: N=16 (forward chunk 8 inside a multi-chunk backward segment) ...
    "default_tiles_n16": (dict(batch=1, groups=1, d_group=8, seqlen=37, n=16), {}),
    # ... and N=2, whose backward (8 channels x 2 states: 16 of a warp's 32 lanes) splits the positions over lanes:
    # the chunk maps are composed by an order-keeping scan there (compiled with tl.reduce, wrong on an H100)
    "default_tiles_n2": (dict(batch=1, groups=2, d_group=3, seqlen=37, n=2), {}),
    # ... and N=1 (the segment-parallel kernels with their default tiles: one segment)
    "default_tiles_n1": (dict(batch=1, groups=2, d_group=3, seqlen=40, n=1), {}),
    # ... and the channel-per-lane kernels' N=1 tiles (one chunk per segment, three segments, partial last chunk)
    "default_tiles_n1_channel_kernels": (dict(batch=1, groups=2, d_group=3, seqlen=40, n=1), {"SEG1_MAX_ROWS": 0}),
    "three_chunk_segments_n4": (
        dict(batch=1, groups=1, d_group=4, seqlen=30, n=4),
        dict(BLOCK_L_FWD=4, BLOCK_L_BWD=4, SEGMENT=12),
    ),
    "d_only": (
        dict(batch=1, groups=2, d_group=3, seqlen=9, n=2, has_d=True, has_bias=False, softplus=True),
        dict(BLOCK_L_FWD=4, BLOCK_L_BWD=4, SEGMENT=4, BLOCK_D_FWD=4, BLOCK_D_BWD=4),
    ),
    # N >= 2 segment-parallel kernels (forced: SEGN positions per segment, SEGN_MIN_SEGS=2); L not a multiple of
    # the segment, so the last segment is partial and may hold stored-state sub-segments past L
    "segn_n2_grouped_all_options": (  # 3 segments x 2 sub-segments x 2 backward chunks; carry in blocks of 2
        dict(batch=2, groups=2, d_group=3, seqlen=37, n=2),
        dict(SEGN=16, SEGN_MIN_SEGS=2, BLOCK_L_FWD=2, BLOCK_L_BWD=4, SEGMENT=8, BLOCK_D_FWD=2, BLOCK_D_BWD=4,
             CARRY_S=2, CARRY_E=16),
    ),
    "segn_n16_grouped_all_options": (  # 5 segments of one 8-position sub-segment, forward chunk 4
        dict(batch=1, groups=2, d_group=2, seqlen=37, n=16),
        dict(SEGN=8, SEGN_MIN_SEGS=2, BLOCK_L_FWD=4, BLOCK_L_BWD=4, SEGMENT=8, CARRY_S=2, CARRY_E=8),
    ),
    "segn_n16_ungrouped_no_options": (
        dict(batch=1, groups=2, d_group=2, seqlen=29, n=16, grouped=False, has_d=False, has_bias=False,
             softplus=False),
        dict(SEGN=8, SEGN_MIN_SEGS=2, BLOCK_L_FWD=8, BLOCK_L_BWD=4, SEGMENT=8, CARRY_S=4, CARRY_E=16),
    ),
    "segn_n2_d_only": (
        dict(batch=1, groups=2, d_group=3, seqlen=27, n=2, has_d=True, has_bias=False, softplus=True),
        dict(SEGN=8, SEGN_MIN_SEGS=2, BLOCK_L_FWD=4, BLOCK_L_BWD=4, SEGMENT=4, BLOCK_D_FWD=4, BLOCK_D_BWD=4),
    ),
    "segn_n4_bias_only_no_softplus": (
        dict(batch=1, groups=1, d_group=3, seqlen=27, n=4, has_d=False, has_bias=True, softplus=False),
        dict(SEGN=8, SEGN_MIN_SEGS=2, BLOCK_L_FWD=4, BLOCK_L_BWD=4, SEGMENT=8, BLOCK_D_FWD=4, BLOCK_D_BWD=4),
    ),
    # ... and with the GPU tiles (forward chunk 8, backward 8 chunks of 8 per stored state) and the segment length
    # chosen by the plan (SEGN=0): 3 segments of 64 positions, the last partial
    "segn_default_tiles_n16": (
        dict(batch=1, groups=1, d_group=4, seqlen=150, n=16),
        dict(SEGN_MIN=16, SEGN_PROGRAMS=2, SEGN_MIN_SEGS=2),
    ),
    "bias_only_no_softplus": (
        dict(batch=1, groups=2, d_group=3, seqlen=9, n=2, has_d=False, has_bias=True, softplus=False),
        dict(BLOCK_L_FWD=4, BLOCK_L_BWD=4, SEGMENT=4, BLOCK_D_FWD=4, BLOCK_D_BWD=4),
    ),
}


def _inputs(batch, groups, d_group, seqlen, n, *, grouped=True, has_d=True, has_bias=True, seed=0, device="cpu"):
    """Drawn on the CPU (the same values on every machine), then moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    kd = groups * d_group
    u = torch.randn(batch, kd, seqlen, generator=g)
    delta = 0.5 * torch.randn(batch, kd, seqlen, generator=g)
    A = -(0.2 + torch.rand(kd, n, generator=g)) * torch.arange(1, n + 1).float()
    shape_bc = (batch, groups, n, seqlen) if grouped else (batch, n, seqlen)
    B = torch.randn(*shape_bc, generator=g)
    C = torch.randn(*shape_bc, generator=g)
    D = torch.randn(kd, generator=g) if has_d else None
    bias = 0.3 * torch.randn(kd, generator=g) if has_bias else None
    return tuple(None if t is None else t.to(device) for t in (u, delta, A, B, C, D, bias))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _ref64(u, delta, A, B, C, D, bias) -> torch.Tensor:
    """The float64 reference scan (softplus on) of the inputs converted to float64 (float64 ones pass as they are)."""
    from mambaseg.ops.selective_scan_ref import selective_scan_ref

    return selective_scan_ref(u.double(), delta.double(), A.double(), B.double(), C.double(), D.double(),
                              delta_bias=bias.double(), delta_softplus=True)  # fmt: skip


def _run_case(name: str, device: str = "cpu") -> dict[str, float]:
    """Forward and every gradient of the Triton backend vs the float64 reference (in the interpreter child on the
    CPU, or compiled on a CUDA device)."""
    from mambaseg.ops import selective_scan_triton as sst
    from mambaseg.ops.selective_scan_ref import selective_scan_ref

    problem, tiles = CASES[name]
    problem = dict(problem)
    softplus = problem.pop("softplus", True)
    u, delta, A, B, C, D, bias = _inputs(**problem, device=device)
    names = ["u", "delta", "A", "B", "C"] + (["D"] if D is not None else []) + (["delta_bias"] if bias is not None else [])
    leaves = [t.clone().requires_grad_(True) for t in (u, delta, A, B, C, D, bias) if t is not None]
    leaves64 = [t.detach().double().requires_grad_(True) for t in leaves]

    def call(fn, ts):
        kw = dict(zip(names, ts))
        return fn(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw.get("D"), delta_bias=kw.get("delta_bias"),
                  delta_softplus=softplus)  # fmt: skip

    with sst.tile_override(tiles):
        y = call(sst.selective_scan_triton, leaves)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device)
        grads = torch.autograd.grad(y, leaves, gy)
    y_ref = call(selective_scan_ref, leaves64)
    grads_ref = torch.autograd.grad(y_ref, leaves64, gy.double())
    out = {"y": _rel(y, y_ref) if torch.isfinite(y).all() and y.dtype == u.dtype else float("inf")}
    for key, gr, gref in zip(names, grads, grads_ref):
        ok = gr.shape == gref.shape and gr.dtype == torch.float32 and bool(torch.isfinite(gr).all())
        out["d" + key] = _rel(gr, gref) if ok else float("inf")
    return out


# the N >= 2 segment-parallel kernels forced onto tiny problems (L = 11: 3 segments of 4 positions)
_SEGN_SMALL = {"SEGN": 4, "SEGN_MIN_SEGS": 2, "BLOCK_L_FWD": 2, "BLOCK_L_BWD": 2, "SEGMENT": 4, "CARRY_S": 2}


def _run_extra(device: str = "cpu") -> dict[str, float]:
    """bf16 inputs and dispatch through ``selective_scan(backend="triton")`` (interpreted or on CUDA)."""
    from mambaseg.ops import selective_scan
    from mambaseg.ops import selective_scan_triton as sst

    out = {}
    u, delta, A, B, C, D, bias = _inputs(1, 2, 4, 11, 4, seed=3, device=device)
    ub, db, Bb, Cb = (t.bfloat16() for t in (u, delta, B, C))
    y = sst.selective_scan_triton(ub, db, A, Bb, Cb, D, delta_bias=bias, delta_softplus=True)
    # the kernel reads bf16 and computes in fp32: compare with the reference on the same bf16-rounded inputs
    y_ref = _ref64(ub, db, A, Bb, Cb, D, bias)
    out["bf16_dtype_ok"] = float(y.dtype == torch.bfloat16)
    out["bf16_rel"] = _rel(y.float(), y_ref)
    ok, _ = sst.is_available()
    out["available"] = float(ok)
    y = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend="triton")
    y_ref = _ref64(u, delta, A, B, C, D, bias)
    out["dispatch_rel"] = _rel(y, y_ref)
    # bf16 inputs with an fp32 output (SS2D v0 under autocast): fp32 math on the bf16 values, gradients in the
    # inputs' dtypes; N=4 (channel-per-lane kernels) and N=1 (segment-parallel kernels, 3 segments)
    for n, tiles in ((4, {}), (1, {"SEG1": 4, "BLOCK_D1": 2}), (16, _SEGN_SMALL)):
        u, delta, A, B, C, D, bias = _inputs(1, 2, 3, 11, n, seed=4, device=device)
        leaves = [t.bfloat16().requires_grad_(True) for t in (u, delta, B, C)]
        with sst.tile_override(tiles):
            y = selective_scan(leaves[0], leaves[1], A, leaves[2], leaves[3], D, delta_bias=bias, delta_softplus=True,
                               backend="triton", out_dtype=torch.float32)  # fmt: skip
            gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(device)
            grads = torch.autograd.grad(y, leaves, gy)
        l64 = [t.detach().double().requires_grad_(True) for t in leaves]
        y_ref = _ref64(l64[0], l64[1], A, l64[2], l64[3], D, bias)
        g_ref = torch.autograd.grad(y_ref, l64, gy.double())
        out[f"f32out_n{n}_dtype_ok"] = float(y.dtype == torch.float32 and all(g.dtype == torch.bfloat16 for g in grads))
        out[f"f32out_n{n}_rel"] = _rel(y, y_ref)
        # gradients are rounded to bf16 on the way out: compare at bf16 precision
        out[f"f32out_n{n}_grad_rel"] = max(_rel(g.float(), r) for g, r in zip(grads, g_ref))
    return out


def _run_compiled(device: str = "cpu") -> dict[str, float]:
    """The torch.compile path (custom operators) under ``fullgraph=True`` (no graph break may occur) vs the float64
    reference, forward and every gradient, for the channel-per-lane kernels (N=4, B and C passed as non-contiguous
    views) and the segment-parallel ones (N=1 and N=2, 3 segments); then ``torch.library.opcheck`` of the forward
    operator (runs in the child)."""
    from mambaseg.ops import selective_scan
    from mambaseg.ops import selective_scan_triton as sst

    def scan(u, delta, A, B, C, D, bias):
        return selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend="triton")

    out = {}
    compiled = torch.compile(scan, backend="aot_eager", fullgraph=True)
    for n, tiles in ((4, {"BLOCK_L_FWD": 4, "BLOCK_L_BWD": 4, "SEGMENT": 8}), (1, {"SEG1": 4, "BLOCK_D1": 2}),
                     (2, _SEGN_SMALL)):
        u, delta, A, B, C, D, bias = _inputs(2, 2, 3, 11, n, seed=5, device=device)
        if n == 4:  # (batch, G, N, L) views with the L axis not innermost in memory
            B, C = (t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (B, C))
        leaves = [t.clone().requires_grad_(True) for t in (u, delta, A, B, C, D, bias)]
        with sst.tile_override(tiles):
            y = compiled(*leaves)
            gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(6)).to(device)
            grads = torch.autograd.grad(y, leaves, gy)
        l64 = [t.detach().double().requires_grad_(True) for t in leaves]
        y_ref = _ref64(*l64)
        g_ref = torch.autograd.grad(y_ref, l64, gy.double())
        out[f"compiled_n{n}_y"] = _rel(y, y_ref)
        out[f"compiled_n{n}_grads"] = max(_rel(g, r) for g, r in zip(grads, g_ref))
    # a second problem size: torch.compile recompiles with dynamic (symbolic) sizes, which the fake
    # implementations must accept
    u, delta, A, B, C, D, bias = _inputs(3, 2, 3, 14, 4, seed=8, device=device)
    leaves = [t.clone().requires_grad_(True) for t in (u, delta, A, B, C, D, bias)]
    y = compiled(*leaves)
    grads = torch.autograd.grad(y, leaves, torch.ones_like(y))
    l64 = [t.detach().double().requires_grad_(True) for t in leaves]
    y_ref = _ref64(*l64)
    g_ref = torch.autograd.grad(y_ref, l64, torch.ones_like(y_ref))
    out["compiled_dynamic_y"] = _rel(y, y_ref)
    out["compiled_dynamic_grads"] = max(_rel(g, r) for g, r in zip(grads, g_ref))
    u, delta, A, B, C, D, bias = _inputs(1, 2, 3, 9, 2, seed=7, device=device)
    args = tuple(t.requires_grad_(True) for t in (u, delta, A, B, C, D, bias)) + (True, torch.float32, True)
    with sst.tile_override({"BLOCK_L_FWD": 4, "BLOCK_L_BWD": 4, "SEGMENT": 4}):
        torch.library.opcheck(sst._op_fwd, args, test_utils=("test_schema", "test_autograd_registration",
                                                            "test_faketensor", "test_aot_dispatch_static"))
    out["opcheck_ok"] = 1.0
    return out


def _interpreter_unusable() -> str | None:
    """None when Triton's interpreter runs a kernel whose loop bound is a runtime argument, else why not (runs in the
    child). Triton 3.6's interpreter turns such a bound into an int through a 1-element array, which NumPy 2.5
    refuses ("only 0-dimensional arrays can be converted to Python scalars"): no kernel of ours could run."""
    import numpy
    import triton
    import triton.language as tl

    @triton.jit
    def probe(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        acc = tl.zeros([BLOCK], tl.float32)
        for _ in range(0, n):
            acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0)
        tl.store(x_ptr + offs, acc, mask=offs < n)

    x = torch.ones(4)
    try:
        probe[(1,)](x, 4, BLOCK=4)
    except Exception as exc:  # noqa: BLE001 - reported, and the interpreted tests are skipped with it
        return f"Triton {triton.__version__} with NumPy {numpy.__version__}: {exc!r}"
    return None if x.tolist() == [4.0] * 4 else f"the probe kernel computed {x.tolist()}, not [4.0] * 4"


def _run_all(device: str, case_done=None) -> dict:
    """Every case of ``CASES``, then :func:`_run_extra` and :func:`_run_compiled`, on ``device`` (in the interpreter
    child on the CPU, or compiled on CUDA); an exception becomes the item's ``error``, which the tests assert on.
    ``case_done(name)`` is called after each case (the child records the kernels it launched)."""
    import traceback

    res: dict = {}
    for name in CASES:
        try:
            res[name] = _run_case(name, device)
        except Exception as exc:  # noqa: BLE001 - asserted on by the tests
            res[name] = {"error": repr(exc)}
        if case_done is not None:
            case_done(name)
    for key, fn in (("extra", _run_extra), ("compiled", _run_compiled)):
        try:
            res[key] = fn(device)
        except Exception:  # noqa: BLE001
            res[key] = {"error": traceback.format_exc()[-3000:]}
    return res


_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("_sst_interp_cases", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
why = mod._interpreter_unusable()
if why:
    print("RESULTS" + json.dumps({"interpreter_unusable": why}))
    sys.exit(0)
from triton.runtime.interpreter import InterpretedFunction
from mambaseg.ops import _triton_scan
from mambaseg.ops import selective_scan_triton as sst
_orig_launch, _bad, _names = sst._launch, [], []
def _checked_launch(kernel, grid, tensors, scalars, *, num_warps, **cx):
    _names.append(kernel.__name__)
    # the fast launch path fills the arguments after the tensors and ints from the keywords by name
    if set(cx) != set(kernel.arg_names[len(tensors) + len(scalars):]):
        _bad.append([kernel.arg_names[0], sorted(cx), kernel.arg_names[len(tensors) + len(scalars):]])
    return _orig_launch(kernel, grid, tensors, scalars, num_warps=num_warps, **cx)
sst._launch = _checked_launch
res = {"interpreted": all(isinstance(f, InterpretedFunction) for f in
                          (_triton_scan._selective_scan_fwd_kernel, _triton_scan._selective_scan_bwd_kernel,
                           _triton_scan._selective_scan1_fwd_kernel, _triton_scan._selective_scan1_bwd_kernel))}
res["kernels"] = {}
def _case_done(name):
    res["kernels"][name] = sorted(set(_names))
    _names.clear()
res.update(mod._run_all("cpu", case_done=_case_done))
res["launch_arg_mismatches"] = _bad
print("RESULTS" + json.dumps(res))
"""


class _FakeCompiled:
    """Stand-in for a Triton ``CompiledKernel`` without its launch attributes: launched through ``[grid]``, each
    launch appended to ``log`` as ``(grid, args)``."""

    def __init__(self, log: list):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args: self.log.append((grid, args))


class _FakeKernel:
    """Stand-in for a Triton ``JITFunction``: ``kernel[grid](*args, num_warps=..., **constexprs)`` counts a
    compilation in ``jit_calls`` and returns a :class:`_FakeCompiled` that logs its launches in ``calls``."""

    def __init__(self, arg_names: list[str]):
        self.arg_names = arg_names
        self.jit_calls = 0
        self.calls: list = []

    def __getitem__(self, grid):
        def run(*args, num_warps, **cx):
            self.jit_calls += 1
            return _FakeCompiled(self.calls)

        return run


@pytest.fixture(scope="module")
def interp() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(Path(__file__).resolve())],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS")), None)
    assert line is not None, f"interpreter child failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}"
    res = json.loads(line[len("RESULTS"):])
    if "interpreter_unusable" in res:
        pytest.skip(f"Triton's interpreter cannot run kernels here ({res['interpreter_unusable']}); on a CUDA "
                    "machine the compiled kernels are checked against the same reference (the [cuda] cases)")
    return res


@pytest.fixture(scope="module")
def on_cuda() -> dict:
    """The interpreter child's results, computed by the compiled kernels on a CUDA device (in this process)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (the compiled kernels)")
    return _run_all("cuda")


@pytest.fixture(scope="module", params=["interpreter", "cuda"])
def scan_results(request) -> dict:
    """The kernels' results against the float64 reference: interpreted (any machine), or compiled on CUDA."""
    return request.getfixturevalue("interp" if request.param == "interpreter" else "on_cuda")


def test_kernels_run_in_the_interpreter(interp):
    assert interp["interpreted"] is True


def test_every_launch_passes_all_remaining_kernel_arguments_by_name(interp):
    assert interp["launch_arg_mismatches"] == []


def test_fast_launch_caches_the_compiled_kernel_per_specialisation(monkeypatch):
    """The launch cache with a stand-in for Triton's JITFunction / CompiledKernel API (an object without the
    CompiledKernel launch attributes is launched through its ``[grid]`` runner)."""
    from mambaseg.ops import selective_scan_triton as sst

    monkeypatch.setattr(sst, "_LAUNCH_CACHE", {})
    kern = _FakeKernel(["x_ptr", "n", "BLOCK", "FLAG"])
    x = torch.zeros(64)
    sst._launch(kern, (3,), (x,), (7,), num_warps=1, BLOCK=16, FLAG=True)  # compiles (normal path) and caches
    sst._launch(kern, (5,), (x,), (7,), num_warps=1, BLOCK=16, FLAG=True)  # cached: direct launch, args in order
    assert kern.jit_calls == 1 and len(sst._LAUNCH_CACHE) == 1
    run, tail = next(iter(sst._LAUNCH_CACHE.values()))
    assert tail == (16, True)  # the constexprs in signature order
    # another int value, dtype, constexpr or num_warps is another specialisation
    sst._launch(kern, (5,), (x,), (8,), num_warps=1, BLOCK=16, FLAG=True)
    sst._launch(kern, (5,), (x.double(),), (7,), num_warps=1, BLOCK=16, FLAG=True)
    sst._launch(kern, (5,), (x,), (7,), num_warps=1, BLOCK=32, FLAG=True)
    sst._launch(kern, (5,), (x,), (7,), num_warps=2, BLOCK=16, FLAG=True)
    assert kern.jit_calls == 5 and len(sst._LAUNCH_CACHE) == 5


def test_direct_runner_launches_in_signature_order_with_a_3d_grid(monkeypatch):
    from mambaseg.ops import selective_scan_triton as sst

    monkeypatch.setattr(sst, "_LAUNCH_CACHE", {})
    kern, x = _FakeKernel(["x_ptr", "y_ptr", "n", "BLOCK"]), torch.zeros(8)
    sst._launch(kern, (2, 3), (x, x), (4,), num_warps=1, BLOCK=8)
    sst._launch(kern, (2, 3), (x, x), (4,), num_warps=1, BLOCK=8)
    assert kern.calls == [((2, 3, 1), (x, x, 4, 8))]


def test_plan_step_launches_directly_after_the_first_call(monkeypatch):
    """A plan's launch goes through ``_launch`` (compile, cache) once, then straight to the kept launcher with the
    grid padded to 3-D and the arguments in signature order."""
    from mambaseg.ops import selective_scan_triton as sst

    monkeypatch.setattr(sst, "_LAUNCH_CACHE", {})
    kern, x = _FakeKernel(["x_ptr", "y_ptr", "n", "m", "BLOCK"]), torch.zeros(8)
    step = sst._Step(kern, (6,), (4, 5), 1, BLOCK=8)
    seen = []
    real = sst._launch
    monkeypatch.setattr(sst, "_launch", lambda *a, **kw: seen.append(a[1]) or real(*a, **kw))
    for _ in range(3):
        sst._fire(step, (x, x))
    assert seen == [(6, 1, 1)] and kern.jit_calls == 1  # only the first call took the slow path
    assert kern.calls == [((6, 1, 1), (x, x, 4, 5, 8))] * 2


def test_tile_override_drops_the_cached_plans():
    from mambaseg.ops import selective_scan_triton as sst

    sst._PLANS[("sentinel",)] = {}
    with sst.tile_override({"BLOCK_L_FWD": 8}):
        assert ("sentinel",) not in sst._PLANS
        sst._PLANS[("inside",)] = {}
    assert ("inside",) not in sst._PLANS  # plans built under an override are not reused after it


def test_misaligned_inputs_are_copied_to_aligned_storage():
    from mambaseg.ops import selective_scan_triton as sst

    base = torch.arange(65, dtype=torch.float32)
    view = base[1:]  # 4 bytes past a 16-byte boundary
    assert view.data_ptr() % 16 != 0
    fixed = sst._aligned(view)
    assert fixed.data_ptr() % 16 == 0 and torch.equal(fixed, view)
    aligned = base[4:]
    assert sst._aligned(aligned) is aligned and sst._aligned(None) is None


@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_vs_float64_reference(scan_results, name):
    res = scan_results[name]
    assert "error" not in res, res.get("error")
    assert res["y"] < 1e-4, f"forward rel err {res['y']:.2e}"
    for key, err in res.items():
        if key != "y":
            assert err < 1e-3, f"{key}: rel err {err:.2e}"


def test_segment_parallel_cases_ran_the_segment_parallel_kernels(interp):
    """The ``segn_*`` cases really ran the N >= 2 segment-parallel kernels (and only those); the others did not."""
    seg = {"_selective_scanN_seg_fwd_summary_kernel", "_selective_scanN_seg_carry_kernel",
           "_selective_scanN_seg_fwd_kernel", "_selective_scanN_seg_bwd_summary_kernel",
           "_selective_scanN_seg_bwd_kernel"}  # fmt: skip
    for name, ran in interp["kernels"].items():
        if name.startswith("segn_"):
            assert set(ran) == seg, (name, ran)
        else:
            assert not seg & set(ran), (name, ran)


def _plan_for(batch, kd, seqlen, n, groups, needs_grad=True):
    """The plan of a problem shaped like an SS2D call (meta tensors: nothing is allocated or launched)."""
    from mambaseg.ops import selective_scan_triton as sst

    u = torch.empty(batch, kd, seqlen, device="meta")
    A = torch.empty(kd, n, device="meta")
    B = torch.empty(batch, groups, n, seqlen, device="meta")
    D = torch.empty(kd, device="meta")
    return sst._Plan(u, A, B, B, D, D, True, torch.float32, needs_grad)


@pytest.mark.parametrize("needs_grad", [True, False])
def test_plan_picks_segment_parallel_kernels_for_few_rows_only(needs_grad):
    """Few rows and a long sequence (DermoMamba's first stage, (4, 32, 49152), N=16; batch-1 VM-UNet) take the N >= 2
    segment-parallel kernels; training batches of VM-UNet, short sequences and N=1 keep their kernels."""
    pytest.importorskip("triton")
    from mambaseg.ops import _triton_scan as k

    for batch, kd, seqlen, n, groups in ((4, 32, 49152, 16, 4), (4, 128, 3072, 16, 4), (1, 768, 4096, 16, 4),
                                         (2, 64, 8192, 2, 4), (4, 32, 49152, 8, 1)):
        plan = _plan_for(batch, kd, seqlen, n, groups, needs_grad)
        assert plan.segn and not plan.seg1, (batch, kd, seqlen, n)
        assert [s.kernel for s in plan.fwd] == [k._selective_scanN_seg_fwd_summary_kernel,
                                               k._selective_scanN_seg_carry_kernel, k._selective_scanN_seg_fwd_kernel]
        assert [s.kernel for s in plan.bwd] == [k._selective_scanN_seg_bwd_summary_kernel,
                                               k._selective_scanN_seg_carry_kernel, k._selective_scanN_seg_bwd_kernel]
        assert plan.fwd[2].grid[1] >= 4 and plan.bwd[2].grid[1] == plan.fwd[2].grid[1]
    plan = _plan_for(4, 32, 49152, 16, 4, needs_grad)
    rows, n_seg = plan.fwd[2].grid[:2]
    assert rows * n_seg >= 2048 and n_seg >= 64  # segments of a few hundred positions, enough programs for an H100
    for batch, kd, seqlen, n, groups in ((32, 768, 4096, 16, 4), (32, 1536, 1024, 16, 4), (32, 3072, 256, 16, 4),
                                         (4, 512, 192, 16, 4), (4, 512, 48, 16, 4), (4, 64, 384, 16, 4),
                                         (4, 256, 768, 16, 4), (4, 48, 512, 16, 4),
                                         (24, 384, 3136, 1, 4), (1, 384, 3136, 1, 4)):
        plan = _plan_for(batch, kd, seqlen, n, groups, needs_grad)
        assert not plan.segn, (batch, kd, seqlen, n)
        if n >= 2:
            assert [s.kernel for s in plan.fwd] == [k._selective_scan_fwd_kernel]
            assert [s.kernel for s in plan.bwd] == [k._selective_scan_bwd_kernel]


def test_bf16_inputs_and_backend_dispatch(scan_results):
    res = scan_results["extra"]
    assert "error" not in res, res.get("error")
    assert res["available"] == 1.0
    assert res["bf16_dtype_ok"] == 1.0
    assert res["bf16_rel"] < 1e-2
    assert res["dispatch_rel"] < 1e-4
    for n in (4, 1, 16):
        assert res[f"f32out_n{n}_dtype_ok"] == 1.0
        assert res[f"f32out_n{n}_rel"] < 1e-5  # fp32 math on exactly the bf16 input values
        assert res[f"f32out_n{n}_grad_rel"] < 1e-2


def test_bad_inputs_raise():
    from mambaseg.ops.selective_scan_triton import selective_scan_triton

    u, delta, A, B, C, _, _ = _inputs(1, 2, 3, 7, 2)
    with pytest.raises(ValueError, match="d_state"):
        selective_scan_triton(u, delta, torch.zeros(6, 17), B, C)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_triton(u, delta, A, B[:, :, :, :5], C)
    with pytest.raises(ValueError, match="delta must"):
        selective_scan_triton(u, delta[:, :, :5], A, B, C)


def test_pick_config_table():
    from mambaseg.ops.selective_scan_triton import pick_config

    for n in (1, 2, 3, 8, 16):
        for seqlen in (1, 7, 64, 4096):
            cfg = pick_config(192, seqlen, n)
            assert cfg["BLOCK_N"] >= n and cfg["BLOCK_N"] & (cfg["BLOCK_N"] - 1) == 0
            for key in ("BLOCK_L_FWD", "BLOCK_L_BWD", "BLOCK_D_FWD", "BLOCK_D_BWD", "SEGMENT"):
                assert cfg[key] >= 1 and cfg[key] & (cfg[key] - 1) == 0, (key, cfg)


def test_torch_compile_path_has_no_graph_break_and_matches_the_reference(scan_results):
    res = scan_results["compiled"]
    assert "error" not in res, res.get("error")
    for case in ("n4", "n1", "n2", "dynamic"):
        assert res[f"compiled_{case}_y"] < 1e-4, res
        assert res[f"compiled_{case}_grads"] < 1e-3, res
    assert res["opcheck_ok"] == 1.0
