"""Triton selective-scan kernels vs the float64 sequential reference, run under Triton's interpreter.

``TRITON_INTERPRET=1`` is set for this module only (monkeypatched before the kernel module is reloaded, then
restored and reloaded again), so the actual Triton kernels execute on CPU tensors. Shapes are tiny: the
interpreter runs every program instance in Python.
"""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.fixture(scope="module")
def sst():
    """The Triton backend module with its kernels compiled for Triton's interpreter."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")
    from mambaseg.ops import _triton_scan, selective_scan_triton

    kernels = importlib.reload(_triton_scan)
    from triton.runtime.interpreter import InterpretedFunction

    # make sure the real kernels run in the interpreter, not some fallback
    assert isinstance(kernels._selective_scan_fwd_kernel, InterpretedFunction)
    assert isinstance(kernels._selective_scan_bwd_kernel, InterpretedFunction)
    selective_scan_triton._CONFIG_OVERRIDE.clear()
    yield selective_scan_triton
    selective_scan_triton._CONFIG_OVERRIDE.clear()
    mp.undo()
    importlib.reload(_triton_scan)


def _inputs(batch, groups, d_group, seqlen, n, *, grouped, has_d, has_bias, seed=0):
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
    return u, delta, A, B, C, D, bias


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _check(sst, batch, groups, d_group, seqlen, n, *, grouped=True, has_d=True, has_bias=True, softplus=True, seed=0):
    from mambaseg.ops.selective_scan_ref import selective_scan_ref

    u, delta, A, B, C, D, bias = _inputs(
        batch, groups, d_group, seqlen, n, grouped=grouped, has_d=has_d, has_bias=has_bias, seed=seed
    )
    names = ["u", "delta", "A", "B", "C"] + (["D"] if has_d else []) + (["delta_bias"] if has_bias else [])
    leaves = [t.clone().requires_grad_(True) for t in (u, delta, A, B, C, D, bias) if t is not None]
    leaves64 = [t.detach().double().requires_grad_(True) for t in leaves]

    def call(fn, ts):
        kw = dict(zip(names, ts))
        return fn(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw.get("D"), delta_bias=kw.get("delta_bias"),
                  delta_softplus=softplus)  # fmt: skip

    y = call(sst.selective_scan_triton, leaves)
    y_ref = call(selective_scan_ref, leaves64)
    assert y.dtype == u.dtype and y.shape == u.shape
    assert torch.isfinite(y).all()
    assert _rel(y, y_ref) < 1e-4, f"forward rel err {_rel(y, y_ref):.2e}"
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1))
    grads = torch.autograd.grad(y, leaves, gy)
    grads_ref = torch.autograd.grad(y_ref, leaves64, gy.double())
    for name, gr, gref in zip(names, grads, grads_ref):
        assert gr.shape == gref.shape and gr.dtype == torch.float32
        assert _rel(gr, gref) < 1e-3, f"grad of {name}: rel err {_rel(gr, gref):.2e}"


def test_interpreter_grouped_all_options(sst):
    # L=19 is not a multiple of any block; several chunks and segments with a partial last chunk
    sst._CONFIG_OVERRIDE.update(BLOCK_L_FWD=2, BLOCK_L_BWD=4, SEGMENT=8, BLOCK_D_FWD=2, BLOCK_D_BWD=4)
    try:
        _check(sst, batch=2, groups=2, d_group=5, seqlen=19, n=3)
    finally:
        sst._CONFIG_OVERRIDE.clear()


def test_interpreter_n1_ungrouped_no_options(sst):
    sst._CONFIG_OVERRIDE.update(BLOCK_L_FWD=4, BLOCK_L_BWD=4, SEGMENT=8)
    try:
        _check(sst, batch=1, groups=2, d_group=4, seqlen=13, n=1, grouped=False, has_d=False, has_bias=False,
               softplus=False)  # fmt: skip
    finally:
        sst._CONFIG_OVERRIDE.clear()


def test_interpreter_default_tiles_n16(sst):
    # default (GPU) tile table: N=16, forward chunk 8 inside a backward segment of several chunks
    _check(sst, batch=1, groups=1, d_group=8, seqlen=37, n=16)


@pytest.mark.parametrize("has_d,has_bias,softplus", [(True, False, True), (False, True, False)])
def test_interpreter_option_mix(sst, has_d, has_bias, softplus):
    sst._CONFIG_OVERRIDE.update(BLOCK_L_FWD=4, BLOCK_L_BWD=4, SEGMENT=4, BLOCK_D_FWD=4, BLOCK_D_BWD=4)
    try:
        _check(sst, batch=1, groups=2, d_group=3, seqlen=9, n=2, has_d=has_d, has_bias=has_bias, softplus=softplus)
    finally:
        sst._CONFIG_OVERRIDE.clear()


def test_interpreter_bf16_inputs(sst):
    from mambaseg.ops.selective_scan_ref import selective_scan_ref

    u, delta, A, B, C, D, bias = _inputs(1, 2, 4, 11, 4, grouped=True, has_d=True, has_bias=True, seed=3)
    ub, db, Bb, Cb = (t.bfloat16() for t in (u, delta, B, C))
    y = sst.selective_scan_triton(ub, db, A, Bb, Cb, D, delta_bias=bias, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    # the kernel reads bf16 and does fp32 math: compare with the reference on the same bf16-rounded inputs
    y_ref = selective_scan_ref(ub.double(), db.double(), A.double(), Bb.double(), Cb.double(), D.double(),
                               delta_bias=bias.double(), delta_softplus=True)  # fmt: skip
    assert _rel(y.float(), y_ref) < 1e-2


def test_backend_dispatch_uses_triton(sst):
    from mambaseg.ops import selective_scan
    from mambaseg.ops.selective_scan_ref import selective_scan_ref

    ok, why = sst.is_available()
    assert ok, why
    u, delta, A, B, C, D, bias = _inputs(1, 2, 3, 7, 2, grouped=True, has_d=True, has_bias=True, seed=5)
    y = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend="triton")
    y_ref = selective_scan_ref(u.double(), delta.double(), A.double(), B.double(), C.double(), D.double(),
                               delta_bias=bias.double(), delta_softplus=True)  # fmt: skip
    assert _rel(y, y_ref) < 1e-4


def test_bad_inputs_raise(sst):
    u, delta, A, B, C, D, bias = _inputs(1, 2, 3, 7, 2, grouped=True, has_d=True, has_bias=True)
    with pytest.raises(ValueError, match="d_state"):
        sst.selective_scan_triton(u, delta, torch.zeros(6, 17), B, C)
    with pytest.raises(ValueError, match="B must be"):
        sst.selective_scan_triton(u, delta, A, B[:, :, :, :5], C)
    with pytest.raises(ValueError, match="delta must"):
        sst.selective_scan_triton(u, delta[:, :, :5], A, B, C)


def test_pick_config_table():
    from mambaseg.ops.selective_scan_triton import pick_config

    for n in (1, 2, 3, 8, 16):
        for seqlen in (1, 7, 64, 4096):
            cfg = pick_config(192, seqlen, n)
            assert cfg["BLOCK_N"] >= n and cfg["BLOCK_N"] & (cfg["BLOCK_N"] - 1) == 0
            for key in ("BLOCK_L_FWD", "BLOCK_L_BWD", "BLOCK_D_FWD", "BLOCK_D_BWD", "SEGMENT"):
                assert cfg[key] >= 1 and cfg[key] & (cfg[key] - 1) == 0, (key, cfg)
