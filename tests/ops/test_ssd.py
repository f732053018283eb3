from __future__ import annotations

import pytest
import torch

from mambaseg.ops.ssd import ssd_scan, ssd_scan_ref


def _inputs(b=2, L=23, h=4, p=3, g=2, n=5, dtype=torch.float64, requires_grad=False):
    g_ = torch.Generator().manual_seed(7)
    x = torch.randn(b, L, h, p, generator=g_, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(b, L, h, generator=g_, dtype=dtype))
    A = -torch.rand(h, generator=g_, dtype=dtype) * 2 - 0.1
    B = torch.randn(b, L, g, n, generator=g_, dtype=dtype)
    C = torch.randn(b, L, g, n, generator=g_, dtype=dtype)
    D = torch.randn(h, generator=g_, dtype=dtype)
    ts = [x, dt, A, B, C, D]
    if requires_grad:
        for t in ts:
            t.requires_grad_(True)
    return ts


@pytest.mark.parametrize("mode", ["causal", "noncausal", "bidirectional"])
@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_forward_matches_reference(mode, chunk):
    x, dt, A, B, C, D = _inputs()
    y = ssd_scan(x, dt, A, B, C, D, mode=mode, chunk_size=chunk)
    y_ref = ssd_scan_ref(x, dt, A, B, C, D, mode=mode)
    assert y.shape == x.shape and y.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["causal", "noncausal", "bidirectional"])
def test_gradients_match_reference(mode):
    ins = _inputs(L=13, requires_grad=True)
    y = ssd_scan(*ins, mode=mode, chunk_size=4)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), ins)
    ins_ref = [t.detach().clone().requires_grad_(True) for t in ins]
    y_ref = ssd_scan_ref(*ins_ref, mode=mode)
    grads_ref = torch.autograd.grad((y_ref * w).sum(), ins_ref)
    for name, a, r in zip(["x", "dt", "A", "B", "C", "D"], grads, grads_ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9, msg=f"grad of {name}")


def test_gradcheck_chunked_causal():
    ins = _inputs(b=1, L=6, h=2, p=2, g=1, n=3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: ssd_scan(*t, mode="causal", chunk_size=4), ins)


def test_causal_is_causal_and_noncausal_is_global():
    x, dt, A, B, C, D = _inputs(L=10)
    y = ssd_scan(x, dt, A, B, C, D, mode="causal", chunk_size=3)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    y2 = ssd_scan(x2, dt, A, B, C, D, mode="causal", chunk_size=3)
    torch.testing.assert_close(y[:, :6], y2[:, :6])
    assert not torch.allclose(y[:, 6:], y2[:, 6:])
    # non-causal output is invariant to a joint permutation of the tokens
    perm = torch.randperm(10)
    yn = ssd_scan(x, dt, A, B, C, D, mode="noncausal")
    ynp = ssd_scan(x[:, perm], dt[:, perm], A, B[:, perm], C[:, perm], D, mode="noncausal")
    torch.testing.assert_close(yn[:, perm], ynp)


def test_float32_close_to_float64():
    ins = _inputs(L=40)
    y64 = ssd_scan(*ins, mode="causal", chunk_size=16)
    y32 = ssd_scan(*[t.float() for t in ins], mode="causal", chunk_size=16)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)


def test_bad_inputs_raise():
    x, dt, A, B, C, D = _inputs()
    with pytest.raises(ValueError, match="mode"):
        ssd_scan(x, dt, A, B, C, D, mode="sideways")
    with pytest.raises(ValueError, match="dt"):
        ssd_scan(x, dt[:, :-1], A, B, C, D)
    with pytest.raises(ValueError, match="divisible"):
        ssd_scan(x, dt, A, B.repeat(1, 1, 3, 1)[:, :, :3], C.repeat(1, 1, 3, 1)[:, :, :3], D)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_scan(x, dt, A, B, C, D, chunk_size=0)
