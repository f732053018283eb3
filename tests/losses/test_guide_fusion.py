"""DermoMamba's Guide Fusion Loss: attention map, both modes against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mambaseg.losses import create_loss, list_losses
from mambaseg.losses.guide_fusion import GuideFusionLoss, boundary_attention_map


def _masks() -> torch.Tensor:
    m = torch.zeros(2, 8, 10, dtype=torch.long)
    m[0, 2:5, 3:6] = 1
    m[1, 1:7, 1:9] = 1
    return m


def test_registered():
    assert "guide_fusion" in list_losses()
    assert isinstance(create_loss("guide_fusion", mode="official"), GuideFusionLoss)


def test_attention_map_on_hand_made_mask():
    a = boundary_attention_map(_masks())[0]
    assert a[2, 3] == pytest.approx(0.5) and a[1, 3] == pytest.approx(0.5)  # both sides of the boundary
    assert a[3, 4] == pytest.approx(1 / 3)  # lesion centre, 2 px from the background
    assert a[7, 9] == pytest.approx(1 / (1 + math.sqrt(9 + 16)))  # corner -> lesion corner (4, 5)
    assert a.max() <= 0.5 and a.min() > 0


def test_attention_map_is_per_image():
    """Image 0's map must not see image 1's pixels (the release ran one EDT across the batch axis)."""
    m = _masks()
    a_batch = boundary_attention_map(m)
    a_single = boundary_attention_map(m[:1])
    assert torch.equal(a_batch[:1], a_single)


def _hand_terms(z: torch.Tensor, m: torch.Tensor):
    p = torch.sigmoid(z[:, 0])
    g = m.double()
    a = boundary_attention_map(m).double()
    bce = F.binary_cross_entropy(p, g)
    return p, g, a, bce


def test_intent_value_by_hand():
    m = _masks()
    z = torch.randn(2, 1, 8, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p, g, a, bce = _hand_terms(z, m)
    s = 1e-3
    dice = [(2 * (a[i] * p[i] * g[i]).sum() + s) / ((a[i] * p[i]).sum() + (a[i] * g[i]).sum() + s) for i in range(2)]
    expected = bce + (2 - dice[0] - dice[1]) / 2
    assert GuideFusionLoss()(z, m).item() == pytest.approx(expected.item(), rel=1e-9)


def test_official_value_by_hand():
    m = _masks()
    z = torch.randn(2, 1, 8, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p, g, a, bce = _hand_terms(z, m)
    s = 1e-3
    dice = (2 * (p * g).sum() + s) / (p.sum() + g.sum() + s)
    expected = (bce + (1 - dice) * a).mean()
    assert GuideFusionLoss(mode="official")(z, m).item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("mode", ["intent", "official"])
def test_single_sigmoid(mode):
    """A confident, correct prediction gives ~0 (a second sigmoid would leave BCE >= 0.31)."""
    m = _masks()
    z = (m.double() * 2 - 1).unsqueeze(1) * 30
    assert GuideFusionLoss(mode=mode)(z, m).item() < 1e-6


def test_boundary_errors_cost_more_than_far_errors_in_intent_mode():
    m = torch.zeros(1, 32, 32, dtype=torch.long)
    m[0, 8:24, 8:24] = 1
    base = (m.double() * 2 - 1).unsqueeze(1) * 8
    near, far = base.clone(), base.clone()
    near[0, 0, 8, 8:24] = -8  # flip the first lesion row (on the boundary)
    far[0, 0, 31, 0:16] = 8  # flip 16 background pixels far from the lesion
    loss = GuideFusionLoss()
    assert loss(near, m) > loss(far, m)


def test_empty_and_full_masks_are_finite():
    m = torch.zeros(2, 6, 6, dtype=torch.long)
    m[1] = 1
    z = torch.randn(2, 1, 6, 6, requires_grad=True)
    for mode in ("intent", "official"):
        for smooth in (1e-3, 0.0):
            v = GuideFusionLoss(mode=mode, smooth=smooth)(z, m)
            assert torch.isfinite(v)
            v.backward()
            assert torch.isfinite(z.grad).all()
            z.grad = None
    # without a boundary only the BCE term remains
    v = GuideFusionLoss()(z, m)
    assert v.item() == pytest.approx(F.binary_cross_entropy_with_logits(z[:, 0], m.float()).item(), rel=1e-6)


def test_gradient_matches_finite_differences():
    m = _masks()
    z = torch.randn(2, 1, 8, 10, dtype=torch.float64, requires_grad=True)
    for mode in ("intent", "official"):
        loss = GuideFusionLoss(mode=mode)
        assert torch.autograd.gradcheck(lambda t: loss(t, m), (z,))


def test_backends_agree_and_bad_inputs():
    m = _masks()
    z = torch.randn(2, 1, 8, 10)
    a = GuideFusionLoss(edt_backend="scipy")(z, m)
    b = GuideFusionLoss(edt_backend="torch")(z, m)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    with pytest.raises(ValueError, match="mode"):
        GuideFusionLoss(mode="paper")
    # float masks of hard 0/1 labels are taken as the integer ones; soft labels are refused (distance maps)
    assert GuideFusionLoss()(z, m.float()).item() == pytest.approx(a.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"hard labels 0 or 1 .*\(target > 0\.5\)\.long\(\)"):
        GuideFusionLoss()(z, m.float() * 0.5)
