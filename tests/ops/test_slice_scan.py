from __future__ import annotations

import pytest
import torch

from mambaseg.ops.slice_scan import (
    SLICE_CHOICES,
    SliceScan,
    slice_merge,
    slice_order,
    slice_scan,
    slice_scan_indices,
)


def test_hand_checked_4x4_m2_n2():
    # pixel value = its row-major index i*4+j
    x = torch.arange(16.0).view(1, 1, 4, 4)
    seqs = slice_scan(x, 2, 2)[0, :, 0].long().tolist()
    # horizontal strips of 2 rows, read column by column, top->bottom inside a column
    horiz = [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
    # vertical strips of 2 columns, read row by row, left->right inside a row
    vert = [0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15]
    assert seqs[0] == horiz
    assert seqs[1] == horiz[::-1]
    assert seqs[2] == vert
    assert seqs[3] == vert[::-1]


def test_hand_checked_non_square_2x8_m2_n4():
    x = torch.arange(16.0).view(1, 1, 2, 8)
    seqs = slice_scan(x, 2, 4)[0, :, 0].long().tolist()
    assert seqs[0] == [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]
    assert seqs[2] == [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15]


@pytest.mark.parametrize("m,n", SLICE_CHOICES)
@pytest.mark.parametrize("h,w", [(8, 8), (8, 16), (12, 4)])
def test_matches_spec_index_formulas(m, n, h, w):
    x = torch.arange(float(h * w)).view(1, 1, h, w)
    seqs = slice_scan(x, m, n)[0, :, 0].long()
    for i in range(h):
        for j in range(w):
            p = i * w + j
            th = (i // m) * (m * w) + j * m + (i % m)
            tv = (j // n) * (h * n) + i * n + (j % n)
            assert seqs[0, th] == p and seqs[2, tv] == p
            assert seqs[1, h * w - 1 - th] == p and seqs[3, h * w - 1 - tv] == p
    assert torch.equal(slice_order(h, w, m, "horizontal")[2 % h, 3 % w],
                       torch.tensor((2 % h // m) * m * w + (3 % w) * m + (2 % h) % m))


def test_hand_checked_3x3_drop_padding():
    # strips are formed on the padded 4x4 grid; the padded positions are dropped: the last strip is shorter
    x = torch.arange(9.0).view(1, 1, 3, 3)
    seqs = slice_scan(x, 2, 2)[0, :, 0].long().tolist()
    assert seqs[0] == [0, 3, 1, 4, 2, 5, 6, 7, 8]
    assert seqs[2] == [0, 1, 3, 4, 6, 7, 2, 5, 8]
    assert seqs[1] == seqs[0][::-1] and seqs[3] == seqs[2][::-1]


def test_zero_padding_mode_keeps_padded_tokens():
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    seqs = slice_scan(x, 2, 2, pad_mode="zeros")[0, :, 0].long().tolist()
    # padded 4x4 grid, pixel value v = i*3+j+1, 0 = padding
    assert seqs[0] == [1, 4, 2, 5, 3, 6, 0, 0, 7, 0, 8, 0, 9, 0, 0, 0]
    assert seqs[2] == [1, 2, 4, 5, 7, 8, 0, 0, 3, 0, 6, 0, 9, 0, 0, 0]


@pytest.mark.parametrize("pad_mode", ["drop", "zeros"])
@pytest.mark.parametrize("m,n", SLICE_CHOICES)
@pytest.mark.parametrize("h,w", [(8, 8), (6, 10), (7, 7), (14, 14), (5, 3), (1, 1)])
def test_merge_of_scan_is_identity_times_four(m, n, h, w, pad_mode):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    sc = SliceScan(m, n, pad_mode=pad_mode)
    xs = sc.scan(x)
    hp, wp = -(-h // m) * m, -(-w // n) * n
    length = h * w if pad_mode == "drop" else hp * wp
    assert xs.shape == (2, 4, 3, length) and sc.seq_len(h, w) == length
    assert torch.equal(sc.merge(xs, h, w), 4 * x.flatten(2))
    # each sequence holds every pixel exactly once (plus padding markers in "zeros" mode)
    g, _ = slice_scan_indices(h, w, m, n, pad_mode=pad_mode)
    for k in range(4):
        real = g[k][g[k] < h * w]
        assert torch.equal(real.sort().values, torch.arange(h * w))
        assert int((g[k] == h * w).sum()) == length - h * w
        if length == h * w:  # each sequence is a permutation of the pixels
            assert torch.equal(xs[:, k].sort(-1).values, x.flatten(2).sort(-1).values)


def test_drop_mode_is_zero_mode_without_the_padding():
    x = torch.randn(1, 2, 7, 10)
    for m, n in SLICE_CHOICES:
        z = slice_scan(x, m, n, pad_mode="zeros")
        g, _ = slice_scan_indices(7, 10, m, n, pad_mode="zeros")
        d = slice_scan(x, m, n, pad_mode="drop")
        for k in range(4):
            assert torch.equal(z[:, k][..., g[k] < 70], d[:, k])


@pytest.mark.parametrize("pad_mode", ["drop", "zeros"])
@pytest.mark.parametrize("h,w,m,n", [(8, 8, 2, 4), (7, 10, 4, 4), (6, 5, 4, 2)])
def test_merge_is_adjoint_of_scan(h, w, m, n, pad_mode):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    length = SliceScan(m, n, pad_mode=pad_mode).seq_len(h, w)
    y = torch.randn(2, 4, 3, length, dtype=torch.float64)
    lhs = (slice_scan(x, m, n, pad_mode) * y).sum()
    rhs = (x.flatten(2) * slice_merge(y, h, w, m, n, pad_mode)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_padded_positions_are_zero_and_cropped():
    x = torch.ones(1, 1, 7, 7)
    xs = slice_scan(x, 4, 4, pad_mode="zeros")
    assert xs.shape[-1] == 64 and int(xs[0, 0, 0].sum()) == 49
    g, inv = slice_scan_indices(7, 7, 4, 4, pad_mode="zeros")
    assert int((g == 49).sum(1)[0]) == 15
    assert int(g[0, 0]) == 0 and int(g[0, -1]) == 49
    assert slice_scan(x, 4, 4).shape[-1] == 49


def test_gradients_flow_and_gradcheck():
    for pad_mode in ("drop", "zeros"):
        x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
        sc = SliceScan(2, 4, pad_mode=pad_mode)
        torch.autograd.gradcheck(lambda t: sc.merge(sc.scan(t).sin(), 5, 6), (x,))
        y = torch.randn(1, 4, 2, sc.seq_len(5, 6), dtype=torch.float64, requires_grad=True)
        torch.autograd.gradcheck(lambda t: sc.merge(t, 5, 6), (y,))
    z = torch.randn(2, 3, 8, 8, requires_grad=True)
    sc.merge(sc.scan(z), 8, 8).sum().backward()
    torch.testing.assert_close(z.grad, torch.full_like(z, 4.0))


def test_indices_cached():
    a = slice_scan_indices(16, 16, 4, 2)
    b = slice_scan_indices(16, 16, 4, 2)
    assert a[0] is b[0] and a[1] is b[1]
    c = slice_scan_indices(16, 16, 2, 4)
    assert not torch.equal(a[0], c[0])


def test_plugin_interface_and_errors():
    sc = SliceScan.from_choice(1)
    assert (sc.m, sc.n, sc.k) == (2, 4, 4) and sc == SliceScan(2, 4)
    with pytest.raises(ValueError, match="choice"):
        SliceScan.from_choice(4)
    with pytest.raises(ValueError, match="m must"):
        SliceScan(0, 2)
    with pytest.raises(ValueError, match=r"\(B, D, H, W\)"):
        slice_scan(torch.zeros(3, 4, 4), 2, 2)
    with pytest.raises(ValueError, match="sequence length"):
        slice_merge(torch.zeros(1, 4, 2, 10), 4, 4, 2, 2)
    with pytest.raises(ValueError, match="pad_mode"):
        SliceScan(2, 2, pad_mode="reflect")
    with pytest.raises(ValueError, match="direction"):
        slice_order(4, 4, 2, "diagonal")


def test_indices_built_in_inference_mode_are_usable_for_training():
    with torch.inference_mode():
        slice_scan(torch.randn(1, 2, 9, 11), 4, 2)  # first use (builds the cache) under inference mode
    x = torch.randn(1, 2, 9, 11, requires_grad=True)
    slice_merge(slice_scan(x, 4, 2).square(), 9, 11, 4, 2).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("pad_mode", ["drop", "zeros"])
def test_each_sequence_alone_inverts_exactly(pad_mode):
    x = torch.randn(2, 3, 7, 10, dtype=torch.float64)
    for m, n in SLICE_CHOICES:
        xs = slice_scan(x, m, n, pad_mode)
        for k in range(4):
            only = torch.zeros_like(xs)
            only[:, k] = xs[:, k]
            assert torch.equal(slice_merge(only, 7, 10, m, n, pad_mode), x.flatten(2))
