"""The fused CPU scan backend ("cpu_fused") against the float64 sequential reference: forward and every gradient.

The kernel compiles on first use; where it cannot be built (no C++ compiler or ninja) these tests skip with the
reason, and the auto rule's fallback to the torch backend is still tested (with a simulated failed build).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import mambaseg.ops.backend as be
from mambaseg.ops import BackendUnavailableError, selective_scan, selective_scan_ref, use_backend
from mambaseg.ops.selective_scan_cpu import is_available


@pytest.fixture(scope="module")
def fused():
    ok, why = is_available()
    if not ok:
        pytest.skip(f"fused CPU kernel unavailable here, the torch backend is used: {why}")
    return True


def _inputs(batch, dim, L, N, gb, gc, seed, dtype=torch.float64, stiff=False):
    """gb / gc: number of B / C groups, 0 = shared (batch, N, L)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, L, generator=g, dtype=dtype)
    delta = torch.randn(batch, dim, L, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(dim, N, generator=g, dtype=dtype) * (200.0 if stiff else 2.0) - 0.1
    B = torch.randn(*((batch, gb, N, L) if gb else (batch, N, L)), generator=g, dtype=dtype)
    C = torch.randn(*((batch, gc, N, L) if gc else (batch, N, L)), generator=g, dtype=dtype)
    D = torch.randn(dim, generator=g, dtype=dtype)
    bias = torch.randn(dim, generator=g, dtype=dtype) * 0.5
    return u, delta, A, B, C, D, bias


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


NAMES = ["u", "delta", "A", "B", "C", "D", "delta_bias"]

# batch, channels, L, N, B groups, C groups (0 = shared), softplus + delta_bias, D
CASES = [
    (2, 32, 300, 16, 4, 4, True, True),  # SS2D layout, 2 full 16-lane blocks per group, partial last time tile
    (1, 12, 1, 16, 4, 4, True, True),  # L = 1, 3 channels per group (partial lane block)
    (2, 8, 63, 1, 2, 2, False, True),  # N = 1 without softplus / bias
    (1, 5, 63, 4, 0, 0, True, False),  # shared B/C, odd channel count, no D
    (2, 8, 130, 1, 0, 0, True, True),  # N = 1, shared B/C
    (1, 36, 97, 16, 4, 0, True, True),  # grouped B with shared C
    (2, 24, 70, 21, 2, 3, True, True),  # N = 21 (state blocks 16 + 4 + 1), B and C grouped differently
    (1, 40, 129, 16, 1, 1, False, False),  # one group of 40 channels (16 + 16 + 8 lanes), plain scan
]


def _run(case, dtype, backend):
    batch, dim, L, N, gb, gc, sp, useD = case
    u, delta, A, B, C, D, bias = _inputs(batch, dim, L, N, gb, gc, seed=L + 7 * N + dim)
    if not sp:
        delta = delta.abs()  # without softplus delta must be >= 0 for a decaying state
    leaves = [t.to(dtype).requires_grad_() for t in (u, delta, A, B, C, D, bias)]
    u, delta, A, B, C, D, bias = leaves
    y = selective_scan(u, delta, A, B, C, D if useD else None, delta_bias=bias if sp else None, delta_softplus=sp,
                       backend=backend)
    used = [(n, t) for n, t in zip(NAMES, leaves) if (n != "D" or useD) and (n != "delta_bias" or sp)]
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    grads = torch.autograd.grad(y, [t for _, t in used], gy)
    return y, dict(zip([n for n, _ in used], grads))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}c{}L{}N{}gb{}gc{}s{}D{}".format(*c))
def test_fused_float32_matches_float64_reference(fused, case):
    y_ref, g_ref = _run(case, torch.float64, "ref")
    y, g = _run(case, torch.float32, "cpu_fused")
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    assert _rel(y, y_ref) < 1e-5
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        assert g[name].shape == g_ref[name].shape, name
        assert _rel(g[name], g_ref[name]) < 1e-5, name


@pytest.mark.parametrize("case", CASES[:3] + CASES[6:7], ids=lambda c: "b{}c{}L{}N{}gb{}gc{}s{}D{}".format(*c))
def test_fused_float64_inputs_run_in_float64(fused, case):
    y_ref, g_ref = _run(case, torch.float64, "ref")
    y, g = _run(case, torch.float64, "cpu_fused")
    assert y.dtype == torch.float64
    assert _rel(y, y_ref) < 1e-10
    for name in g_ref:
        assert _rel(g[name], g_ref[name]) < 1e-10, name


def test_fused_stiff_decay_stays_finite(fused):
    u, delta, A, B, C, D, bias = _inputs(1, 16, 257, 16, 4, 4, seed=3, stiff=True)
    delta = delta.abs() * 50
    y_ref = selective_scan_ref(u, delta, A, B, C, D)
    y = selective_scan(*(t.float() for t in (u, delta, A, B, C, D)), backend="cpu_fused")
    assert torch.isfinite(y).all()
    assert _rel(y, y_ref) < 1e-5


def test_fused_softplus_extremes(fused):
    """softplus of very negative and very positive inputs (exp underflow, identity branch) matches the reference."""
    u, delta, A, B, C, D, bias = _inputs(1, 16, 40, 4, 1, 1, seed=11)
    delta = torch.linspace(-60, 60, 40, dtype=torch.float64).expand(1, 16, 40).contiguous()
    y_ref = selective_scan_ref(u, delta, A * 0.01, B, C, D, delta_softplus=True)
    y = selective_scan(*(t.float() for t in (u, delta, A * 0.01, B, C, D)), delta_softplus=True, backend="cpu_fused")
    assert _rel(y, y_ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_out_dtype_and_low_precision_inputs(fused, dtype):
    u, delta, A, B, C, D, bias = _inputs(1, 8, 20, 4, 4, 4, seed=2, dtype=torch.float32)
    args = (u.to(dtype), delta.to(dtype), A, B.to(dtype), C.to(dtype), D)
    y = selective_scan(*args, delta_bias=bias, delta_softplus=True, backend="cpu_fused")
    assert y.dtype == dtype
    y32 = selective_scan(*args, delta_bias=bias, delta_softplus=True, backend="cpu_fused", out_dtype=torch.float32)
    assert y32.dtype == torch.float32
    y_ref = selective_scan_ref(*(t.double() for t in args), delta_bias=bias.double(), delta_softplus=True)
    assert _rel(y32, y_ref) < 1e-5


def test_fused_empty_sequence(fused):
    u, delta, A, B, C, D, bias = _inputs(1, 8, 0, 4, 4, 4, seed=1, dtype=torch.float32)
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]
    y = selective_scan(*leaves[:6], delta_bias=leaves[6], delta_softplus=True, backend="cpu_fused")
    assert y.shape == (1, 8, 0)
    grads = torch.autograd.grad(y.sum() + 0 * sum(t.sum() for t in leaves), leaves)
    assert all(g.abs().sum() == 0 for g in grads)


def test_fused_shape_errors_are_clear(fused):
    u, delta, A, B, C, D, bias = _inputs(1, 8, 10, 4, 4, 4, seed=1, dtype=torch.float32)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:3], B, C, backend="cpu_fused")
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, delta, A, B[..., :5], C, backend="cpu_fused")


def test_auto_picks_fused_on_cpu(fused, monkeypatch):
    monkeypatch.delenv("MAMBASEG_SCAN_BACKEND", raising=False)
    assert be.resolve_backend(None, is_cuda=False) == "cpu_fused"
    assert be.explain_backend(False).startswith("cpu_fused (auto")
    assert be.resolve_backend(None, is_cuda=False, tracing=True) == "torch"
    with pytest.raises(BackendUnavailableError, match="cannot be traced"):
        be.resolve_backend("cpu_fused", is_cuda=False, tracing=True)
    with pytest.raises(BackendUnavailableError, match="CPU tensors"):
        be.resolve_backend("cpu_fused", is_cuda=True)


def test_failed_build_falls_back_to_torch_with_one_warning(monkeypatch):
    """Without a compiler: auto uses the torch backend with ONE warning naming the fix; explicit use raises."""
    monkeypatch.delenv("MAMBASEG_SCAN_BACKEND", raising=False)
    real = be._check
    monkeypatch.setattr(be, "_check", lambda n: (False, "no C++ compiler") if n == "cpu_fused" else real(n))
    monkeypatch.setattr(be, "_warned_slow_cpu", False)
    with pytest.warns(RuntimeWarning, match="apt-get install g\\+\\+"):
        assert be.resolve_backend(None, is_cuda=False) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert be.resolve_backend(None, is_cuda=False) == "torch"  # second time: silent
    assert "no C++ compiler" in be.explain_backend(False)
    with pytest.raises(BackendUnavailableError, match="C\\+\\+ compiler"):
        be.resolve_backend("cpu_fused", is_cuda=False)


def test_vmunet_tiny_same_output_fused_and_torch(fused):
    import mambaseg

    torch.manual_seed(0)
    model = mambaseg.create_model("vmunet_tiny", num_classes=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        with use_backend("torch"):
            ref = model(x)
        with use_backend("cpu_fused"):
            out = model(x)
    assert (out - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())


def _mirrored_reference(u, delta, A, B, C, D, bias, softplus):
    """The mirrored scan spelled out with flips: second half of the channels scans the flipped sequence."""
    half = u.shape[1]
    u_std = torch.cat([u, u.flip(-1)], 1)
    d_std = torch.cat([delta[:, :half], delta[:, half:].flip(-1)], 1)

    def split(t):
        if t.dim() == 3:  # shared: the reversed half sees it flipped, as a second group
            return torch.stack([t, t.flip(-1)], 1)
        g = t.shape[1] // 2
        return torch.cat([t[:, :g], t[:, g:].flip(-1)], 1)

    y = selective_scan_ref(u_std, d_std, A, split(B), split(C), D, delta_bias=bias, delta_softplus=softplus)
    return torch.cat([y[:, :half], y[:, half:].flip(-1)], 1)


# batch, channels (both halves), L, N, B/C groups (0 = shared), softplus + bias, D
MIRRORED = [
    (2, 32, 100, 16, 4, True, True),  # SS2D: 4 groups, 2 of them reversed
    (1, 12, 67, 1, 4, True, True),  # N = 1, 3 channels per group
    (1, 40, 33, 5, 0, False, False),  # shared B/C, N = 5 (state blocks 4 + 1), plain scan
    (2, 8, 1, 16, 2, True, True),  # L = 1
]


@pytest.mark.parametrize("case", MIRRORED, ids=lambda c: "b{}c{}L{}N{}g{}s{}D{}".format(*c))
def test_fused_mirrored_matches_flipped_reference(fused, case):
    from mambaseg.ops.selective_scan_cpu import selective_scan_cpu

    batch, dim, L, N, g, sp, useD = case
    u, delta, A, B, C, D, bias = _inputs(batch, dim, L, N, g, g, seed=dim + L)
    u = u[:, : dim // 2].contiguous()
    if not sp:
        delta = delta.abs()
    leaves64 = [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]
    leaves32 = [t.detach().float().requires_grad_() for t in leaves64]
    kw = lambda ls: dict(D=ls[5] if useD else None, delta_bias=ls[6] if sp else None, delta_softplus=sp)  # noqa: E731
    y_ref = _mirrored_reference(*leaves64[:5], kw(leaves64)["D"], kw(leaves64)["delta_bias"], sp)
    y = selective_scan_cpu(*leaves32[:5], **kw(leaves32), mirrored=True)
    assert _rel(y, y_ref) < 1e-5
    gy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    used = [i for i, n in enumerate(NAMES) if (n != "D" or useD) and (n != "delta_bias" or sp)]
    g_ref = torch.autograd.grad(y_ref, [leaves64[i] for i in used], gy)
    g32 = torch.autograd.grad(y, [leaves32[i] for i in used], gy.float())
    for i, a, b in zip(used, g32, g_ref):
        assert _rel(a, b) < 1e-5, NAMES[i]


@pytest.mark.parametrize("version", ["v0", "v2"])
def test_ss2d_mirrored_path_matches_torch_backend(fused, version):
    """SS2D on the fused kernel (mirrored raster orders, no flipped copies) equals SS2D on the torch backend, in
    float64: output and every parameter and input gradient."""
    from mambaseg.layers.ss2d import SS2D
    from mambaseg.layers.ss2d_v2 import SS2Dv2

    torch.manual_seed(0)
    make = (lambda: SS2D(8, d_state=4)) if version == "v0" else (lambda: SS2Dv2(8, d_state=1))
    ref = make().double()
    fus = make().double()
    fus.load_state_dict(ref.state_dict())
    x = torch.randn(*((2, 5, 7, 8) if version == "v0" else (2, 8, 5, 7)), dtype=torch.float64)  # v2: channels first
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    with use_backend("torch"):  # the backend is a runtime choice applied around the layer
        yr = ref(xr)
    with use_backend("cpu_fused"):
        yf = fus(xf)
    assert _rel(yf, yr) < 1e-10
    gy = torch.randn_like(yr)
    gr = torch.autograd.grad(yr, [xr, *ref.parameters()], gy)
    gf = torch.autograd.grad(yf, [xf, *fus.parameters()], gy)
    for (name, _), a, b in zip([("x", None), *ref.named_parameters()], gf, gr):
        assert _rel(a, b) < 1e-10, name


def test_kernel_source_is_compiled_from_a_path_independent_of_the_install(tmp_path, monkeypatch):
    # torch writes the source path into build.ninja: two installs of one source sharing a cache must see the same
    # path, or each would rebuild the library (tens of seconds) after the other loaded it
    import mambaseg.ops.selective_scan_cpu as sc

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    name = str(sc.build_info()["name"])
    first = sc._build_source(name)
    assert first.read_bytes() == sc._SOURCE.read_bytes() and tmp_path / "ext" in first.parents
    stamp = first.stat().st_mtime_ns
    other = tmp_path / "elsewhere" / "csrc" / sc._SOURCE.name  # a second install of the same source
    other.parent.mkdir(parents=True)
    other.write_bytes(sc._SOURCE.read_bytes())
    monkeypatch.setattr(sc, "_SOURCE", other)
    assert sc._build_source(name) == first and first.stat().st_mtime_ns == stamp  # not rewritten: no rebuild
    # an extension root that cannot be written: the installed file is compiled
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(blocker))
    assert sc._build_source(name) == other


def _ss2d_reference(x, xdbl, wdt, A, D, bias, softplus):
    """float64 reference of the fused SS2D inference scan, spelled out: cross_scan of the map and of each
    direction's x_proj values, dt_proj, the sequential reference scan, cross_merge."""
    from mambaseg.ops import cross_merge, cross_scan

    b, h, w, d = x.shape
    L, r, n = h * w, wdt.shape[2], A.shape[1]
    xs = cross_scan(x.permute(0, 3, 1, 2))  # (b, 4, d, L)
    per_dir = xdbl.reshape(b, h, w, 4, r + 2 * n).permute(0, 3, 4, 1, 2)  # (b, 4, r + 2n, h, w)
    seq = torch.stack([cross_scan(per_dir[:, k])[:, k] for k in range(4)], 1)  # direction k in its own order
    dts, Bs, Cs = seq.split([r, n, n], 2)
    delta = torch.einsum("bkrl,kdr->bkdl", dts, wdt)
    y = selective_scan_ref(xs.reshape(b, 4 * d, L), delta.reshape(b, 4 * d, L), A, Bs.contiguous(), Cs.contiguous(),
                           D, delta_bias=bias, delta_softplus=softplus)
    return cross_merge(y.view(b, 4, d, L), h, w).view(b, d, h, w).permute(0, 2, 3, 1)


# batch, H, W, D channels, N, dt rank R, softplus + delta_bias, D skip
SS2D_CASES = [
    (2, 5, 7, 20, 16, 3, True, True),  # odd H != W, 16 + 4 lanes
    (1, 9, 4, 16, 1, 2, True, True),  # N = 1
    (1, 3, 11, 40, 21, 5, False, False),  # N = 21 (state blocks 16 + 4 + 1), plain scan, no D
    (1, 1, 1, 3, 4, 1, True, True),  # a single position, 3 channels
    (3, 6, 1, 48, 16, 4, True, False),  # W = 1 (column order = row order), 3 full lane blocks
    (1, 17, 13, 64, 16, 6, True, True),  # enough (batch, channel block) tasks for the merged (non-split) mode
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", SS2D_CASES, ids=lambda c: "b{}h{}w{}d{}N{}R{}s{}D{}".format(*c))
def test_fused_ss2d_inference_matches_float64_reference(fused, case, threads):
    from mambaseg.ops.selective_scan_cpu import ss2d_scan_cpu

    b, h, w, d, n, r, sp, useD = case
    g = torch.Generator().manual_seed(h * w + d + n)
    x = torch.randn(b, h, w, d, generator=g, dtype=torch.float64)
    xdbl = torch.randn(b, h, w, 4 * (r + 2 * n), generator=g, dtype=torch.float64)
    wdt = torch.randn(4, d, r, generator=g, dtype=torch.float64) * 0.3
    A = -torch.rand(4 * d, n, generator=g, dtype=torch.float64) * 2 - 0.1
    D = torch.randn(4 * d, generator=g, dtype=torch.float64) if useD else None
    bias = torch.randn(4 * d, generator=g, dtype=torch.float64) * 0.5 if sp else None
    if not sp:  # without softplus the time steps must be >= 0 for a decaying state
        xdbl.view(b, h, w, 4, r + 2 * n)[..., :r].abs_()
        wdt.abs_()
    y_ref = _ss2d_reference(x, xdbl, wdt, A, D, bias, sp)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y64 = ss2d_scan_cpu(x, xdbl, wdt, A, D, bias, sp)
        args32 = [t.float() if t is not None else None for t in (x, xdbl, wdt, A, D, bias)]
        y32 = ss2d_scan_cpu(*args32, sp)
    finally:
        torch.set_num_threads(old)
    assert y64.dtype == torch.float64 and y64.shape == (b, h, w, d)
    assert _rel(y64, y_ref) < 1e-12
    assert y32.dtype == torch.float32
    assert _rel(y32, y_ref) < 1e-5


def test_fused_ss2d_inference_refuses_grad_and_bad_shapes(fused):
    from mambaseg.ops.selective_scan_cpu import ss2d_scan_cpu

    x, xdbl = torch.randn(1, 4, 4, 8), torch.randn(1, 4, 4, 4 * 10)
    wdt, A = torch.randn(4, 8, 2), -torch.rand(32, 4)
    with pytest.raises(RuntimeError, match="forward-only"):
        ss2d_scan_cpu(x.requires_grad_(), xdbl, wdt, A)
    with torch.no_grad():
        assert ss2d_scan_cpu(x, xdbl, wdt, A).shape == (1, 4, 4, 8)
        with pytest.raises(ValueError, match="xdbl must be"):
            ss2d_scan_cpu(x, xdbl[..., :-1], wdt, A)
        with pytest.raises(ValueError, match="A must be"):
            ss2d_scan_cpu(x, xdbl, wdt, A[:16])


@pytest.mark.parametrize("version", ["v0", "v2"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ss2d_fused_inference_path_matches_torch_backend(fused, version, dtype):
    """SS2D / SS2Dv2 under inference mode on the fused backend (channels-last kernel, no cross-scan copies) equals
    the same layer on the torch backend; with grad enabled the layer takes the differentiable path instead."""
    from mambaseg.layers.ss2d import SS2D
    from mambaseg.layers.ss2d_v2 import SS2Dv2

    torch.manual_seed(0)
    layer = (SS2D(24, d_state=16) if version == "v0" else SS2Dv2(24, d_state=1)).to(dtype).eval()
    with torch.no_grad():  # non-trivial SSM parameters
        layer.A_logs.add_(torch.randn_like(layer.A_logs) * 0.3)
        layer.Ds.add_(torch.randn_like(layer.Ds) * 0.3)
    x = torch.randn(*((2, 7, 5, 24) if version == "v0" else (2, 24, 7, 5)), dtype=dtype)
    calls = []
    real = type(layer).scan_merge_channels_last

    def spy(self, t):
        calls.append(tuple(t.shape))
        return real(self, t)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(layer), "scan_merge_channels_last", spy)
        with torch.inference_mode():
            with use_backend("torch"):
                ref = layer(x)
            with use_backend("cpu_fused"):
                out = layer(x)
        assert len(calls) == 1  # only the fused call took the channels-last path
        with use_backend("cpu_fused"):
            out_grad = layer(x.clone().requires_grad_())
        assert len(calls) == 1 and out_grad.requires_grad  # training: the differentiable mirrored path
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert _rel(out, ref.double()) < tol
    assert _rel(out_grad.detach(), ref.double()) < tol
