from __future__ import annotations

import math

import pytest
import torch

from mambaseg.losses import BceDiceLoss, CeDiceLoss, DiceLoss, create_loss

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75; softmax([ln 3, 0]) = (0.75, 0.25)


def _binary_example():
    logits = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [1, 1]]])
    return logits, target


def test_bce_dice_hand_computed():
    logits, target = _binary_example()
    # p = 0.5 everywhere: BCE = ln 2; dice_0 = (2*0.5+1)/(2+1+1) = 1/2, dice_1 = (2*2+1)/(2+4+1) = 5/7
    dice_loss = 1 - (0.5 + 5 / 7) / 2
    assert BceDiceLoss()(logits, target).item() == pytest.approx(math.log(2) + dice_loss, abs=1e-6)
    weighted = BceDiceLoss(bce_weight=0.5, dice_weight=2.0)(logits, target).item()
    assert weighted == pytest.approx(0.5 * math.log(2) + 2 * dice_loss, abs=1e-6)
    # one pixel, p = 0.75, y = 1: BCE = -ln 0.75, dice = (1.5 + 1) / (0.75 + 1 + 1)
    one = BceDiceLoss()(torch.full((1, 1, 1, 1), LN3), torch.ones(1, 1, 1, dtype=torch.long)).item()
    assert one == pytest.approx(-math.log(0.75) + 1 - 2.5 / 2.75, abs=1e-6)


def test_bce_dice_batch_vs_per_sample_dice():
    logits, target = _binary_example()
    # batch dice pools the sums: (2*2.5 + 1) / (4 + 5 + 1) = 0.6
    batch = BceDiceLoss(batch_dice=True)(logits, target).item()
    assert batch == pytest.approx(math.log(2) + 1 - 0.6, abs=1e-6)


def test_bce_dice_matches_float64_reference_and_gradcheck():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 5, 4, dtype=torch.float64) * 3
    target = torch.randint(0, 2, (3, 5, 4))
    p = torch.sigmoid(logits[:, 0])
    y = target.double()
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    dice = torch.stack([(2 * (p[b] * y[b]).sum() + 1) / (p[b].sum() + y[b].sum() + 1) for b in range(3)])
    ref = bce + 1 - dice.mean()
    out = BceDiceLoss()(logits, target)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    small = logits[:2, :, :2, :2].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: BceDiceLoss()(z, target[:2, :2, :2]), (small,))


def test_bce_dice_stable_for_huge_logits_and_low_precision():
    target = torch.tensor([[[1, 0]]])
    logits = torch.tensor([[[[1e4, -1e4]]]], requires_grad=True)
    out = BceDiceLoss()(logits, target)
    out.backward()
    assert torch.isfinite(out) and out.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(logits.grad).all()
    wrong = BceDiceLoss()(torch.tensor([[[[-1e4, 1e4]]]]), target)
    assert torch.isfinite(wrong) and wrong.item() > 1e3
    bf = BceDiceLoss()(torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16), torch.ones(1, 2, 2, dtype=torch.long))
    assert bf.dtype == torch.float32


def test_bce_dice_soft_targets_and_target_shapes():
    logits = torch.zeros(1, 1, 2, 2)
    soft = torch.full((1, 2, 2), 0.5)
    val = BceDiceLoss(dice_weight=0.0)(logits, soft).item()
    assert val == pytest.approx(math.log(2), abs=1e-6)
    a = BceDiceLoss()(logits, torch.ones(1, 2, 2, dtype=torch.long))
    b = BceDiceLoss()(logits, torch.ones(1, 1, 2, 2, dtype=torch.long))
    assert torch.equal(a, b)


def _mc_example():
    # B=1, two pixels; pixel 0 logits (0, 0) -> p = (0.5, 0.5); pixel 1 (ln 3, 0) -> p = (0.75, 0.25)
    logits = torch.tensor([[[[0.0, LN3]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    return logits, target


def test_dice_multiclass_hand_computed():
    logits, target = _mc_example()
    # class 0: sum pg = 0.5, sum p = 1.25, sum g = 1 ; class 1: sum pg = 0.25, sum p = 0.75, sum g = 1
    d0, d1 = 1.0 / 2.25, 0.5 / 1.75
    assert DiceLoss(smooth=0.0)(logits, target).item() == pytest.approx(1 - (d0 + d1) / 2, abs=1e-6)
    assert DiceLoss(smooth=0.0, include_background=False)(logits, target).item() == pytest.approx(1 - d1, abs=1e-6)
    # squared: class 0 sum p^2 = 0.8125, class 1 sum p^2 = 0.3125
    s0, s1 = 1.0 / 1.8125, 0.5 / 1.3125
    sq = DiceLoss(smooth=0.0, squared=True)(logits, target).item()
    assert sq == pytest.approx(1 - (s0 + s1) / 2, abs=1e-6)


def test_ce_dice_hand_computed_and_defaults():
    logits, target = _mc_example()
    ce = (math.log(2) + math.log(4)) / 2
    s0, s1 = 1.0 / 1.8125, 0.5 / 1.3125
    dice = 1 - (s0 + s1) / 2
    out = CeDiceLoss(smooth=0.0)(logits, target).item()
    assert out == pytest.approx(0.4 * ce + 0.6 * dice, abs=1e-6)
    # default smoothing 1e-5 changes the value only by ~1e-5
    assert CeDiceLoss()(logits, target).item() == pytest.approx(0.4 * ce + 0.6 * dice, abs=1e-4)
    equal = CeDiceLoss(ce_weight=1.0, dice_weight=1.0, smooth=0.0)(logits, target).item()
    assert equal == pytest.approx(ce + dice, abs=1e-6)
    w = CeDiceLoss(dice_weight=0.0, ce_weight=1.0, class_weights=[1.0, 3.0])(logits, target).item()
    assert w == pytest.approx((math.log(2) + 3 * math.log(4)) / 4, abs=1e-6)


def test_transunet_dice_reference_float64():
    # the spec's formula: (1/K) sum_k [1 - (2 sum p_k g_k + eps) / (sum p_k^2 + sum g_k^2 + eps)], batch sums
    torch.manual_seed(1)
    k = 4
    logits = torch.randn(2, k, 6, 5, dtype=torch.float64)
    target = torch.randint(0, k, (2, 6, 5))
    p = torch.softmax(logits, 1)
    terms = []
    for c in range(k):
        g = (target == c).double()
        terms.append(1 - (2 * (p[:, c] * g).sum() + 1e-5) / ((p[:, c] ** 2).sum() + (g**2).sum() + 1e-5))
    ref = torch.stack(terms).mean()
    out = DiceLoss(smooth=1e-5, squared=True, batch_dice=True)(logits, target)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    ce_ref = torch.nn.functional.nll_loss(torch.log(p), target)
    torch.testing.assert_close(CeDiceLoss()(logits, target), 0.4 * ce_ref + 0.6 * ref, rtol=1e-10, atol=1e-12)
    small = logits[:, :3, :2, :2].detach().clone().requires_grad_(True)
    small_t = target[:, :2, :2].clamp(max=2)
    assert torch.autograd.gradcheck(lambda z: CeDiceLoss()(z, small_t), (small,))


def test_per_sample_multiclass_dice_and_3d():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, 4, dtype=torch.float64)  # volumes (B, C, D, H, W)
    target = torch.randint(0, 3, (2, 4, 4, 4))
    p = torch.softmax(logits, 1)
    vals = []
    for b in range(2):
        for c in range(3):
            g = (target[b] == c).double()
            vals.append((2 * (p[b, c] * g).sum() + 1) / (p[b, c].sum() + g.sum() + 1))
    ref = 1 - torch.stack(vals).mean()
    torch.testing.assert_close(DiceLoss()(logits, target), ref, rtol=1e-12, atol=1e-12)


def test_perfect_prediction_and_empty_masks():
    target = torch.zeros(1, 3, 3, dtype=torch.long)
    logits = torch.full((1, 1, 3, 3), -50.0)
    # no foreground, none predicted: dice = smooth / smooth = 1 -> loss ~ 0
    assert DiceLoss()(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert BceDiceLoss()(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="single-channel"):
        BceDiceLoss()(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="C >= 2"):
        CeDiceLoss()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="does not match logits"):
        DiceLoss()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        BceDiceLoss()(torch.zeros(1, 1, 2, 2), torch.full((1, 2, 2), 2))
    with pytest.raises(ValueError, match=r"in \[0, 2\]"):
        CeDiceLoss()(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 3))
    with pytest.raises(ValueError, match=r"in \[0, 2\]"):
        DiceLoss()(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), -1))
    with pytest.raises(ValueError, match="integer class indices"):
        CeDiceLoss()(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="class_weights"):
        CeDiceLoss(class_weights=[1.0, 2.0])(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        BceDiceLoss(bce_weight=-1)


def test_created_by_name():
    logits, target = _binary_example()
    torch.testing.assert_close(create_loss("bce_dice")(logits, target), BceDiceLoss()(logits, target))
    loss = create_loss("ce_dice", ce_weight=1.0, dice_weight=1.0)
    assert loss.ce_weight == 1.0 and isinstance(loss, CeDiceLoss)
