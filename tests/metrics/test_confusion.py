from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, jaccard_score, recall_score

from mambaseg.metrics import (
    MetricAccumulator,
    binary_scores,
    confusion_stats,
    labels_from_logits,
    labels_from_probabilities,
    reduce_stats,
)


def _random_masks(n, k, shape, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n, *shape), generator=g)
    pred = target.clone()
    flip = torch.rand(target.shape, generator=g) < 0.35
    pred[flip] = torch.randint(0, k, (int(flip.sum()),), generator=g)
    return pred, target


def _sk_stats(pred, target, k):
    cm = confusion_matrix(target.reshape(-1).numpy(), pred.reshape(-1).numpy(), labels=list(range(k)))
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    tn = cm.sum() - tp - fp - fn
    return np.stack([tp, fp, fn, tn], -1)


@pytest.mark.parametrize("shape", [(7, 9), (3, 5, 4)])
def test_stats_match_sklearn_per_image(shape):
    pred, target = _random_masks(4, 4, shape, seed=0)
    stats = confusion_stats(pred, target, 4)
    assert stats.shape == (4, 4, 4) and stats.dtype == torch.int64
    for i in range(4):
        np.testing.assert_array_equal(stats[i].numpy(), _sk_stats(pred[i], target[i], 4))


def test_binary_single_class_is_the_foreground():
    pred, target = _random_masks(5, 2, (6, 6), seed=1)
    s1 = confusion_stats(pred, target, 1)
    s2 = confusion_stats(pred, target, 2)
    assert s1.shape == (5, 1, 4)
    assert torch.equal(s1[:, 0], s2[:, 1])
    np.testing.assert_array_equal(s1[2, 0].numpy(), _sk_stats(pred[2], target[2], 2)[1])
    assert torch.equal(confusion_stats(pred.bool(), target.bool(), 1), s1)


def test_pooled_matches_sklearn_on_the_flattened_set():
    pred, target = _random_masks(6, 3, (8, 8), seed=2)
    out = reduce_stats(confusion_stats(pred, target, 3), "pooled")
    y, p = target.reshape(-1).numpy(), pred.reshape(-1).numpy()
    np.testing.assert_allclose(out["per_class"]["dsc"], f1_score(y, p, average=None, labels=[0, 1, 2]), rtol=1e-12)
    np.testing.assert_allclose(out["per_class"]["iou"], jaccard_score(y, p, average=None, labels=[0, 1, 2]), rtol=1e-12)
    np.testing.assert_allclose(out["per_class"]["sen"], recall_score(y, p, average=None, labels=[0, 1, 2]), rtol=1e-12)
    spe = [recall_score(y != c, p != c) for c in range(3)]
    np.testing.assert_allclose(out["per_class"]["spe"], spe, rtol=1e-12)
    acc = [((y == c) == (p == c)).mean() for c in range(3)]
    np.testing.assert_allclose(out["per_class"]["acc"], acc, rtol=1e-12)
    # top level = mean over foreground classes 1..C-1
    assert out["dsc"] == pytest.approx(np.mean(out["per_class"]["dsc"][1:]))
    assert out["reduction"] == "pooled" and out["n_cases"] == 6 and out["foreground_classes"] == [1, 2]


def test_vmunet_pooled_convention_binary():
    # VM-UNet: flatten every pixel of the set, one 2x2 confusion matrix; DSC = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN)
    pred, target = _random_masks(5, 2, (10, 10), seed=3)
    (tn, fp), (fn, tp) = confusion_matrix(target.reshape(-1).numpy(), pred.reshape(-1).numpy())
    out = binary_scores(pred, target)["pooled"]
    assert out["dsc"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert out["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert out["acc"] == pytest.approx((tp + tn) / (tp + tn + fp + fn))
    assert out["sen"] == pytest.approx(tp / (tp + fn))
    assert out["spe"] == pytest.approx(tn / (tn + fp))


def test_per_case_is_the_mean_of_per_image_values():
    pred, target = _random_masks(6, 2, (5, 7), seed=4)
    target[0] = 0  # an image without foreground, predicted empty too -> DSC 1 by the policy
    pred[0] = 0
    out = reduce_stats(confusion_stats(pred, target, 1), "per_case")
    per_image = [f1_score(target[i].reshape(-1), pred[i].reshape(-1), zero_division=1.0) for i in range(6)]
    assert out["dsc"] == pytest.approx(np.mean(per_image), rel=1e-12)
    ious = [jaccard_score(target[i].reshape(-1), pred[i].reshape(-1), zero_division=1.0) for i in range(6)]
    assert out["iou"] == pytest.approx(np.mean(ious), rel=1e-12)
    pooled = reduce_stats(confusion_stats(pred, target, 1), "pooled")
    assert pooled["dsc"] != pytest.approx(out["dsc"])  # the two reductions are genuinely different


def test_empty_case_policies():
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    target[1, :2] = 1
    pred[1, :1] = 1  # image 1: TP 4, FN 4 -> DSC 2/3; image 0: empty/empty
    stats = confusion_stats(pred, target, 1)
    one = reduce_stats(stats, "per_case", empty="one")
    nan = reduce_stats(stats, "per_case", empty="nan")
    assert one["dsc"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert nan["dsc"] == pytest.approx(2 / 3)  # the empty image is left out
    assert one["sen"] == pytest.approx(0.5)  # sensitivity of the image without ground truth is undefined (NaN)
    # a false positive on an image without ground truth: DSC 0 (not empty), Sen undefined (never 0/0 = 1.0)
    pred[0, 0, 0] = 1
    fp = reduce_stats(confusion_stats(pred[:1], target[:1], 1), "per_case")
    assert fp["dsc"] == 0.0 and math.isnan(fp["sen"]) and fp["spe"] == pytest.approx(15 / 16)
    zeros = torch.zeros(1, 2, 2, dtype=torch.long)
    all_nan = reduce_stats(confusion_stats(zeros, zeros, 1), "pooled", empty="nan")
    assert math.isnan(all_nan["dsc"]) and all_nan["acc"] == 1.0


def test_accumulator_batches_merge_and_state():
    pred, target = _random_masks(9, 3, (6, 5), seed=5)
    full = MetricAccumulator(3, keep_cases=True)
    for a, b in ((0, 4), (4, 5), (5, 9)):
        full.update(pred[a:b], target[a:b], ids=[f"c{i}" for i in range(a, b)])
    stats = confusion_stats(pred, target, 3)
    ref = {r: reduce_stats(stats, r) for r in ("pooled", "per_case")}
    summ = full.summary()
    assert set(summ) == {"pooled", "per_case"}
    for r in ("pooled", "per_case"):
        for m in ("acc", "sen", "spe", "dsc", "iou"):
            assert summ[r][m] == pytest.approx(ref[r][m], rel=1e-12)
            np.testing.assert_allclose(summ[r]["per_class"][m], ref[r]["per_class"][m], rtol=1e-12)
    cases = full.cases()
    assert [c["id"] for c in cases] == [f"c{i}" for i in range(9)]
    assert np.mean([c["dsc"] for c in cases]) == pytest.approx(summ["per_case"]["dsc"])

    # two "processes": summing their state vectors reproduces the single accumulator exactly
    a, b = MetricAccumulator(3), MetricAccumulator(3)
    a.update(pred[:3], target[:3])
    b.update(pred[3:], target[3:])
    assert a.state().shape == (a.state_size,) and a.state().dtype == torch.float64
    reduced = MetricAccumulator(3)
    reduced.load_state(a.state() + b.state())
    assert reduced.summary() == MetricAccumulator(3).merge(a).merge(b).summary()
    assert reduced.summary()["pooled"] == summ["pooled"]
    assert reduced.n_cases == 9
    for m in ("dsc", "iou"):
        assert reduced.summary()["per_case"][m] == pytest.approx(summ["per_case"][m], rel=1e-12)
    reduced.all_reduce()  # no process group: a no-op
    assert reduced.n_cases == 9


def test_accumulator_errors_and_names():
    acc = MetricAccumulator(2, class_names=["bg", "lesion"])
    with pytest.raises(ValueError, match="no images"):
        acc.summary()
    with pytest.raises(RuntimeError, match="keep_cases"):
        acc.cases()
    acc.update(torch.ones(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2, dtype=torch.long))
    s = acc.compute("pooled")
    assert s["classes"] == ["bg", "lesion"] and s["foreground_classes"] == ["lesion"] and s["dsc"] == 1.0
    with pytest.raises(ValueError, match="reduction"):
        acc.compute("macro")
    with pytest.raises(ValueError, match="entries"):
        acc.load_state(torch.zeros(3))
    with pytest.raises(ValueError, match="same num_classes"):
        acc.merge(MetricAccumulator(3))


def test_input_errors():
    with pytest.raises(ValueError, match="integer class indices"):
        confusion_stats(torch.rand(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="differ"):
        confusion_stats(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"target values must be in \[0, 1\]"):
        confusion_stats(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255), 1)
    with pytest.raises(ValueError, match=r"pred values must be in \[0, 2\]"):
        confusion_stats(torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="batch axis"):
        confusion_stats(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"\(N, C, 4\)"):
        reduce_stats(torch.zeros(2, 4, dtype=torch.long))


def test_labels_from_logits_and_probabilities():
    z = torch.tensor([[[[-2.0, 0.0, 0.5, 3.0]]]])
    assert labels_from_logits(z).tolist() == [[[0, 1, 1, 1]]]  # p >= 0.5 <=> z >= 0
    assert labels_from_logits(z, threshold=0.7).tolist() == (torch.sigmoid(z[:, 0]) >= 0.7).long().tolist()
    assert labels_from_probabilities(torch.sigmoid(z)).tolist() == [[[0, 1, 1, 1]]]
    mc = torch.tensor([[[[0.1, 2.0]], [[0.3, -1.0]], [[0.2, 0.0]]]])  # (1, 3, 1, 2)
    assert labels_from_logits(mc).tolist() == [[[1, 0]]]
    with pytest.raises(ValueError, match="threshold"):
        labels_from_logits(z, threshold=1.0)
    with pytest.raises(ValueError, match=r"\(B, C"):
        labels_from_logits(torch.zeros(2, 2))


def test_probabilities_from_logits_against_float64_and_the_labels_rule():
    from mambaseg.metrics import labels_from_logits, labels_from_probabilities, probabilities_from_logits

    g = torch.Generator().manual_seed(0)
    for c in (1, 4):
        z = torch.randn(2, c, 5, 6, generator=g, dtype=torch.float64) * 4
        want = 1 / (1 + torch.exp(-z)) if c == 1 else torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
        got = probabilities_from_logits(z.float())
        assert got.dtype == torch.float32 and torch.allclose(got.double(), want, atol=1e-6)
        assert torch.equal(labels_from_probabilities(got), labels_from_logits(z))
    with pytest.raises(ValueError, match="logits must be"):
        probabilities_from_logits(torch.zeros(3, 4))
