"""VMB-UNet distance-map loss and the per-image distance maps it uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mambaseg.losses import create_loss, list_losses
from mambaseg.losses.boundary import BoundaryDistanceLoss, boundary_weight_map
from mambaseg.losses.distance_maps import boundary_distance, edt_torch


def _brute_distance(mask: np.ndarray) -> np.ndarray:
    """float64 distance of every pixel to the nearest pixel of the other class, by enumeration."""
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            other = mask != mask[i, j]
            if other.any():
                out[i, j] = np.sqrt(((yy[other] - i) ** 2 + (xx[other] - j) ** 2).min())
    return out


def _square_mask() -> torch.Tensor:
    m = torch.zeros(1, 7, 9, dtype=torch.long)
    m[0, 2:5, 3:6] = 1  # 3x3 lesion, centre (3, 4)
    return m


def test_registered():
    assert "boundary" in list_losses()
    assert isinstance(create_loss("boundary"), BoundaryDistanceLoss)


@pytest.mark.parametrize("backend", ["scipy", "torch"])
def test_distance_on_hand_made_mask(backend):
    dist, has = boundary_distance(_square_mask(), backend=backend)
    d = dist[0]
    assert has.tolist() == [True]
    assert d[3, 4] == 2.0  # lesion centre: 2 px to the nearest background pixel
    assert d[2, 3] == 1.0 and d[1, 4] == 1.0  # both sides of the boundary
    assert d[0, 0] == pytest.approx(math.sqrt(2**2 + 3**2))  # corner -> lesion corner (2, 3)
    assert d[3, 8] == 3.0  # right border -> lesion column 5


@pytest.mark.parametrize("backend", ["scipy", "torch"])
def test_distance_matches_brute_force(backend):
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(3, 11, 13, generator=g) > 0.6).long()
    dist, _ = boundary_distance(masks, backend=backend)
    for i in range(3):
        np.testing.assert_allclose(dist[i].numpy(), _brute_distance(masks[i].numpy()), atol=1e-5)


def test_edt_torch_chunking_is_exact():
    g = torch.Generator().manual_seed(2)
    t = torch.rand(2, 9, 17, generator=g) > 0.8
    assert torch.equal(edt_torch(t, max_elements=17 * 17), edt_torch(t, max_elements=1 << 20))


def test_single_class_images_have_no_boundary():
    m = torch.zeros(3, 6, 6, dtype=torch.long)
    m[1] = 1
    m[2, 2, 2] = 1
    for backend in ("scipy", "torch"):
        dist, has = boundary_distance(m, backend=backend)
        assert has.tolist() == [False, False, True]
        assert dist[:2].abs().sum() == 0
        for mode in ("boundary", "official"):
            w = boundary_weight_map(m, mode=mode, backend=backend)
            assert w[:2].abs().sum() == 0 and w[2].sum() > 0


def test_weight_maps_on_hand_made_mask():
    m = _square_mask()
    dmax = math.sqrt(13)  # the farthest pixels are the four corners
    official = boundary_weight_map(m, mode="official")[0]
    default = boundary_weight_map(m, mode="boundary")[0]
    # official: normalised distance, small at the boundary, 1 at the farthest pixel
    assert official[2, 3] == pytest.approx(1 / dmax, rel=1e-6)
    assert official[0, 0] == pytest.approx(1.0)
    assert official[3, 4] == pytest.approx(2 / dmax, rel=1e-6)
    # default: 1 at the boundary, decreasing with the distance, 1/max(d) at the farthest pixel
    assert default[2, 3] == pytest.approx(1.0) and default[1, 4] == pytest.approx(1.0)
    assert default[3, 4] == pytest.approx(1 - 1 / dmax, rel=1e-6)
    assert default[0, 0] == pytest.approx(1 / dmax, rel=1e-6)
    assert default[3, 8] == pytest.approx(1 - 2 / dmax, rel=1e-6)
    # near-boundary pixels weigh more than far ones in the default, less in the official map
    assert default[2, 3] > default[0, 0] and official[2, 3] < official[0, 0]


def test_loss_value_by_hand():
    m = _square_mask()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 1, 7, 9, generator=g, dtype=torch.float64)
    for mode in ("boundary", "official"):
        loss = BoundaryDistanceLoss(alpha=0.7, beta=0.3, mode=mode)
        p = torch.sigmoid(z[0, 0])
        y = m[0].double()
        bce = F.binary_cross_entropy(p, y)
        dice = (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        d = torch.from_numpy(_brute_distance(m[0].numpy()))
        wmap = d / d.max() if mode == "official" else 1 - (d - 1) / d.max()
        expected = 0.7 * (bce + 1 - dice) + 0.3 * (wmap * (p - y) ** 2).mean()
        assert loss(z, m).item() == pytest.approx(expected.item(), rel=1e-6)


def test_penalty_is_per_sample_not_batch_broadcast():
    """Each sample is weighted by its own map (the release mixed the maps of a batch)."""
    g = torch.Generator().manual_seed(4)
    masks = torch.zeros(2, 16, 16, dtype=torch.long)
    masks[0, 2:6, 2:6] = 1
    masks[1, 6:15, 3:14] = 1
    z = torch.randn(2, 1, 16, 16, generator=g)
    loss = BoundaryDistanceLoss(alpha=0.0, beta=1.0)
    both = loss(z, masks)
    single = [loss(z[i : i + 1], masks[i : i + 1]) for i in range(2)]
    assert both.item() == pytest.approx((single[0].item() + single[1].item()) / 2, rel=1e-6)


def test_penalty_uses_one_sigmoid():
    """A confident, correct prediction costs (almost) nothing; a double sigmoid would leave a large penalty."""
    m = _square_mask()
    z = (m.double() * 2 - 1).unsqueeze(1) * 30
    loss = BoundaryDistanceLoss(alpha=0.0, beta=1.0, mode="official")
    assert loss(z, m).item() < 1e-12


def test_gradient_matches_finite_differences():
    m = _square_mask()
    z = torch.randn(1, 1, 7, 9, dtype=torch.float64, requires_grad=True)
    loss = BoundaryDistanceLoss(beta=0.5)
    assert torch.autograd.gradcheck(lambda t: loss(t, m), (z,))


def test_torch_and_scipy_backends_agree():
    g = torch.Generator().manual_seed(5)
    masks = (torch.rand(2, 20, 24, generator=g) > 0.5).long()
    z = torch.randn(2, 1, 20, 24, generator=g)
    a = BoundaryDistanceLoss(edt_backend="scipy")(z, masks)
    b = BoundaryDistanceLoss(edt_backend="torch")(z, masks)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_bad_inputs_are_clear_errors():
    loss = BoundaryDistanceLoss()
    with pytest.raises(ValueError, match="mode"):
        BoundaryDistanceLoss(mode="far")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"in \{0, 1\}, got values in \[2, 2\]"):
        loss(torch.zeros(1, 1, 4, 4), torch.full((1, 4, 4), 2, dtype=torch.long))
    with pytest.raises(ValueError, match="target must be"):
        loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="backend"):
        boundary_distance(torch.zeros(1, 4, 4), backend="gpu")
