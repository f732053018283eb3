"""Every CPU scan backend against the sequential reference, forward and all gradients, in float64."""

from __future__ import annotations

import pytest
import torch

from mambaseg.ops import (
    BackendUnavailableError,
    available_backends,
    explain_backend,
    resolve_backend,
    selective_scan,
    selective_scan_torch,
    use_backend,
)

CASES = [
    # batch, K, d, L, N, grouped, softplus+bias, D
    (2, 4, 8, 300, 16, True, True, True),
    (1, 4, 3, 1, 16, True, True, True),
    (2, 2, 4, 63, 1, True, False, True),
    (1, 1, 5, 63, 4, False, True, False),
    (2, 4, 2, 130, 1, False, True, True),
]


def _inputs(batch, K, d, L, N, grouped, stiff=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(1234 + L + N)
    dim = K * d
    u = torch.randn(batch, dim, L, generator=g, dtype=dtype)
    delta = torch.randn(batch, dim, L, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(dim, N, generator=g, dtype=dtype) * (200.0 if stiff else 2.0) - 0.1
    shape = (batch, K, N, L) if grouped else (batch, N, L)
    B = torch.randn(*shape, generator=g, dtype=dtype)
    C = torch.randn(*shape, generator=g, dtype=dtype)
    D = torch.randn(dim, generator=g, dtype=dtype)
    bias = torch.randn(dim, generator=g, dtype=dtype) * 0.5
    return u, delta, A, B, C, D, bias


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}K{}d{}L{}N{}g{}s{}D{}".format(*c))
@pytest.mark.parametrize("backend", ["torch"])
def test_backend_matches_reference_forward_and_grads(case, backend):
    batch, K, d, L, N, grouped, sp, useD = case
    u, delta, A, B, C, D, bias = _inputs(batch, K, d, L, N, grouped)
    if not sp:
        delta = delta.abs()  # without softplus delta must be >= 0 for a decaying state
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]
    kw = dict(delta_bias=bias if sp else None, delta_softplus=sp)
    Dv = D if useD else None
    y_ref = selective_scan(u, delta, A, B, C, Dv, backend="ref", **kw)
    y = selective_scan(u, delta, A, B, C, Dv, backend=backend, **kw)
    assert y.shape == u.shape and y.dtype == torch.float64
    assert _rel(y, y_ref) < 1e-6
    gy = torch.randn_like(y)
    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    used = [t for t, nme in zip(leaves, names) if (nme != "D" or useD) and (nme != "delta_bias" or sp)]
    g_ref = torch.autograd.grad(y_ref, used, gy)
    g = torch.autograd.grad(y, used, gy)
    for a, b, nme in zip(g, g_ref, [n for n in names if (n != "D" or useD) and (n != "delta_bias" or sp)]):
        assert _rel(a, b) < 1e-6, nme


def test_torch_matches_ref_issue_shape_float64():
    """The issue's acceptance shape: B=2, K=4, d=8, L=300, N=16, softplus + delta_bias."""
    u, delta, A, B, C, D, bias = _inputs(2, 4, 8, 300, 16, True)
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]
    y_ref = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend="ref")
    y = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend="torch")
    assert _rel(y, y_ref) < 1e-6
    gy = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(y_ref, leaves, gy)):
        assert _rel(a, b) < 1e-6


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 512])
def test_torch_any_chunk_size(chunk):
    u, delta, A, B, C, D, bias = _inputs(1, 2, 3, 50, 4, True)
    y_ref = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend="ref")
    y = selective_scan_torch(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, chunk_size=chunk)
    assert _rel(y, y_ref) < 1e-10


def test_stiff_decay_stays_finite_and_exact():
    """Very negative A*delta must underflow to zero decay, never overflow (no exp of a positive cumulative sum)."""
    u, delta, A, B, C, D, bias = _inputs(1, 4, 4, 257, 16, True, stiff=True)
    delta = delta.abs() * 50
    y_ref = selective_scan(u, delta, A, B, C, D, backend="ref")
    y32 = selective_scan(u.float(), delta.float(), A.float(), B.float(), C.float(), D.float(), backend="torch")
    assert torch.isfinite(y32).all()
    assert _rel(y32.double(), y_ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_dtype_follows_u(dtype):
    u, delta, A, B, C, D, bias = _inputs(1, 4, 2, 20, 4, True, dtype=torch.float32)
    y = selective_scan(u.to(dtype), delta.to(dtype), A, B.to(dtype), C.to(dtype), D, delta_bias=bias,
                       delta_softplus=True, backend="torch")
    assert y.dtype == dtype
    y_ref = selective_scan(u.to(dtype).double(), delta.to(dtype).double(), A.double(), B.to(dtype).double(),
                           C.to(dtype).double(), D.double(), delta_bias=bias.double(), delta_softplus=True, backend="ref")
    assert _rel(y.double(), y_ref) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_shape_errors_are_clear():
    u, delta, A, B, C, D, bias = _inputs(1, 4, 2, 10, 4, True)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:3], B, C, backend="torch")
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, delta, A, B[..., :5], C, backend="torch")
    with pytest.raises(ValueError, match="delta_bias"):
        selective_scan(u, delta, A, B, C, D, delta_bias=bias[:2], backend="torch")


def test_backend_resolution_order(monkeypatch):
    monkeypatch.delenv("MAMBASEG_SCAN_BACKEND", raising=False)
    cpu_auto = "cpu_fused" if available_backends()["cpu_fused"].available else "torch"
    assert resolve_backend(None, is_cuda=False) == cpu_auto
    assert resolve_backend(None, is_cuda=False, tracing=True) == "torch"  # traced code keeps the traceable scan
    monkeypatch.setenv("MAMBASEG_SCAN_BACKEND", "ref")
    assert resolve_backend(None, is_cuda=False) == "ref"
    with use_backend("torch"):
        assert resolve_backend(None, is_cuda=False) == "torch"  # context beats environment
        assert resolve_backend("ref", is_cuda=False) == "ref"  # argument beats context
        assert "use_backend" in explain_backend(False)
    monkeypatch.setenv("MAMBASEG_SCAN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="MAMBASEG_SCAN_BACKEND"):
        resolve_backend(None, is_cuda=False)
    with pytest.raises(ValueError, match="unknown scan backend"):
        with use_backend("fast"):
            pass


def test_unavailable_backend_raises_with_fix(monkeypatch):
    monkeypatch.delenv("MAMBASEG_SCAN_BACKEND", raising=False)
    status = available_backends()
    assert status["ref"].available and status["torch"].available
    if not status["mamba_ssm"].available:
        with pytest.raises(BackendUnavailableError, match="pip install mamba-ssm"):
            resolve_backend("mamba_ssm", is_cuda=True)
    # a CUDA-only kernel on CPU tensors is refused explicitly, never silently replaced
    if status["triton"].available:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(BackendUnavailableError, match="CUDA"):
            resolve_backend("triton", is_cuda=False)


def test_auto_on_cuda_without_kernels_warns_once(monkeypatch):
    import mambaseg.ops.backend as be

    monkeypatch.delenv("MAMBASEG_SCAN_BACKEND", raising=False)
    monkeypatch.setattr(be, "_check", lambda name: (name in ("ref", "torch"), "not here"))
    monkeypatch.setattr(be, "_warned_slow_gpu", False)
    with pytest.warns(RuntimeWarning, match="slow PyTorch path"):
        assert be.resolve_backend(None, is_cuda=True) == "torch"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert be.resolve_backend(None, is_cuda=True) == "torch"  # second time: no warning


def test_torch_inference_path_matches_training_path():
    """Under no_grad the chunked scan updates its state in place; results must be identical."""
    u, delta, A, B, C, D, bias = _inputs(2, 4, 3, 77, 8, True)
    u.requires_grad_()  # forces the autograd path
    y_grad = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend="torch")
    with torch.no_grad():
        y_inf = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend="torch")
    assert torch.allclose(y_grad, y_inf, rtol=0, atol=1e-12)
    for nc_len in (40 * 64, 5):  # many chunks (mat-vec readout) and a single chunk
        u, delta, A, B, C, D, bias = _inputs(1, 2, 3, nc_len, 4, True)
        ref = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend="ref")
        with torch.no_grad():
            y = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend="torch")
        assert _rel(y, ref) < 1e-10


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_torch_recomputing_backward_any_chunk_size(chunk):
    """The training path's hand-written backward (states recomputed from the chunk-entering ones) is exact for
    any chunking: one chunk, many chunks, padded last chunk, grouped B/C."""
    u, delta, A, B, C, D, bias = _inputs(2, 2, 3, 50, 4, True)
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]
    y_ref = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend="ref")
    y = selective_scan_torch(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, chunk_size=chunk)
    assert _rel(y, y_ref) < 1e-10
    gy = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(y_ref, leaves, gy)):
        assert _rel(a, b) < 1e-10


def test_torch_training_path_saves_no_per_step_states():
    """What the training path keeps for backward grows with L / chunk, not with L (the memory of CPU training)."""
    u, delta, A, B, C, D, bias = _inputs(1, 4, 8, 1024, 16, True, dtype=torch.float32)
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan_torch(*leaves[:6], delta_bias=bias, delta_softplus=True)
    state_bytes = 1 * 32 * 1024 * 16 * 4  # one full (batch, channels, L, N) state tensor
    # autograd through the loops kept several full states' worth; the inputs alone are below one
    assert sum(saved) < state_bytes
