"""HD95 / Dice against an independent brute-force reference (neighbour-check surfaces + cdist)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from mambaseg.metrics import dice_hd95, dice_score, hd95, surface_distances


def _ref_surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with at least one face neighbour (2*ndim of them) in the background or outside."""
    m = np.pad(mask.astype(bool), 1, constant_values=False)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    all_in = np.ones(mask.shape, dtype=bool)
    for ax in range(mask.ndim):
        for step in (-1, 1):
            sl = list(inner)
            sl[ax] = slice(1 + step, m.shape[ax] - 1 + step)
            all_in &= m[tuple(sl)]
    return mask.astype(bool) & ~all_in


def _ref_hd95(a: np.ndarray, b: np.ndarray, spacing=None, q: float = 95.0) -> float:
    sp = np.ones(a.ndim) if spacing is None else np.broadcast_to(np.asarray(spacing, float), (a.ndim,))
    pa = np.argwhere(_ref_surface(a)) * sp
    pb = np.argwhere(_ref_surface(b)) * sp
    d = cdist(pa, pb)
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), q))


def _blobby(rng: np.random.Generator, shape: tuple[int, ...], p: float) -> np.ndarray:
    """Random masks with both speckle and larger structures (several components, holes, border contact)."""
    from scipy import ndimage

    noise = rng.random(shape)
    smooth = ndimage.uniform_filter(noise, size=3)
    m = smooth > np.quantile(smooth, 1 - p)
    m |= rng.random(shape) > 0.995
    return m


@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_reference_2d(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(12, 40, size=2))
    a, b = _blobby(rng, shape, 0.2), _blobby(rng, shape, 0.3)
    assert math.isclose(hd95(a, b), _ref_hd95(a, b), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_reference_3d(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(s) for s in rng.integers(5, 20, size=3))
    a, b = _blobby(rng, shape, 0.15), _blobby(rng, shape, 0.25)
    assert math.isclose(hd95(a, b, spacing=None), _ref_hd95(a, b), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("spacing", [(2.5, 0.7, 1.3), 0.5, (1.0, 1.0, 1.0)])
def test_hd95_spacing_3d(spacing) -> None:
    rng = np.random.default_rng(7)
    a, b = _blobby(rng, (9, 17, 15), 0.2), _blobby(rng, (9, 17, 15), 0.2)
    assert math.isclose(hd95(a, b, spacing=spacing), _ref_hd95(a, b, spacing), rel_tol=1e-9, abs_tol=1e-9)


def test_hd95_small_objects_far_apart_and_percentiles() -> None:
    a = np.zeros((30, 40), bool)
    b = np.zeros((30, 40), bool)
    a[2:5, 2:5] = True
    b[20:28, 30:39] = True
    b[0, 0] = True  # a lone voxel on the array border: it is its own surface
    for q in (50.0, 95.0, 100.0):
        assert math.isclose(hd95(a, b, percentile=q), _ref_hd95(a, b, q=q), rel_tol=1e-12)
    assert hd95(a, a) == 0.0


def test_surface_distances_pooled_not_max_of_directed() -> None:
    rng = np.random.default_rng(3)
    a, b = _blobby(rng, (20, 20, 8), 0.1), _blobby(rng, (20, 20, 8), 0.4)
    d1, d2 = surface_distances(a, b)
    assert d1.size == _ref_surface(a).sum() and d2.size == _ref_surface(b).sum()
    pooled = np.percentile(np.concatenate([d1, d2]), 95)
    assert hd95(a, b) == pytest.approx(pooled)


def test_hd95_empty_and_shape_errors() -> None:
    a = np.zeros((4, 5, 6), bool)
    b = a.copy()
    b[1, 1, 1] = True
    with pytest.raises(ValueError, match="pred mask is empty"):
        hd95(a, b)
    with pytest.raises(ValueError, match="gt mask is empty"):
        hd95(b, a)
    with pytest.raises(ValueError, match="same shape"):
        hd95(b, b[:3])
    with pytest.raises(ValueError, match="spacing"):
        hd95(b, b, spacing=(1.0, 2.0))
    with pytest.raises(ValueError, match="empty_policy"):
        dice_hd95(b, b, empty_policy="monai")


def test_empty_policies() -> None:
    z = np.zeros((3, 6, 6), bool)
    f = z.copy()
    f[1, 2:4, 2:4] = True
    g = z.copy()
    g[1, 2:5, 2:5] = True
    # transunet: pred non-empty & gt empty -> (1, 0); pred empty -> (0, 0) (with or without GT)
    assert dice_hd95(f, z, empty_policy="transunet") == (1.0, 0.0)
    assert dice_hd95(z, f, empty_policy="transunet") == (0.0, 0.0)
    assert dice_hd95(z, z, empty_policy="transunet") == (0.0, 0.0)
    assert dice_hd95(f, z, spacing=(5.0, 5.0, 5.0), empty_policy="transunet") == (1.0, 0.0)
    # nan: nnU-Net Dice + MONAI HD
    d, h = dice_hd95(f, z, empty_policy="nan")
    assert d == 0.0 and math.isinf(h)
    d, h = dice_hd95(z, f, empty_policy="nan")
    assert d == 0.0 and math.isinf(h)
    d, h = dice_hd95(z, z, empty_policy="nan")
    assert math.isnan(d) and math.isnan(h)
    # both non-empty: same numbers under both policies
    for pol in ("transunet", "nan"):
        d, h = dice_hd95(f, g, empty_policy=pol)
        assert d == pytest.approx(2 * 4 / (4 + 9)) and h == pytest.approx(_ref_hd95(f, g))


def test_dice_score_matches_counts() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((7, 8, 9)) > 0.5, rng.random((7, 8, 9)) > 0.4
    assert dice_score(a, b) == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert math.isnan(dice_score(np.zeros(4), np.zeros(4)))


def test_accepts_torch_tensors() -> None:
    import torch

    a = torch.zeros(10, 10, dtype=torch.bool)
    a[2:6, 3:7] = True
    b = torch.roll(a, 2, dims=1)
    assert hd95(a, b) == pytest.approx(_ref_hd95(a.numpy(), b.numpy()))


@pytest.mark.parametrize("seed", range(4))
def test_directed_surface_distances_match_reference_voxelwise(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    shape = tuple(int(s) for s in rng.integers(6, 16, size=3))
    a, b = _blobby(rng, shape, 0.2), _blobby(rng, shape, 0.3)
    sp = (1.5, 0.8, 1.1)
    pa = np.argwhere(_ref_surface(a)) * sp  # argwhere is C order, like boolean indexing
    pb = np.argwhere(_ref_surface(b)) * sp
    d = cdist(pa, pb)
    d1, d2 = surface_distances(a, b, spacing=sp)
    np.testing.assert_allclose(d1, d.min(axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d2, d.min(axis=0), rtol=1e-12, atol=1e-12)
