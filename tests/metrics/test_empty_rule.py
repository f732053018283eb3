"""One empty-mask rule by default: the per-volume evaluator (``evaluate``, training's validation) and ``score_cases``
(``score``, ``evaluate --cv``) give the same Dice and HD95 on the same predictions, and every summary can say which
rule decided how many cases."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from mambaseg.metrics import VolumeEvaluator, reduce_stats, confusion_stats
from mambaseg.metrics.hd95 import describe_empty_masks, empty_mask_counts
from mambaseg.metrics.score import SCORE_EMPTY_POLICIES, score_cases


def _cases():
    """Four (D, H, W) volumes of classes 1..3: a shifted prediction, one with class 2 missing from the prediction,
    one whose ground truth lacks class 3 (predicted anyway), one with every prediction empty."""
    gt = np.zeros((4, 16, 18), np.int64)
    gt[:, 2:8, 2:9] = 1
    gt[:, 9:14, 3:10] = 2
    gt[1:3, 4:12, 11:16] = 3
    shifted = np.roll(gt, 1, axis=2)
    no2 = np.roll(gt, 1, axis=1)
    no2[no2 == 2] = 0
    gt_no3 = np.where(gt == 3, 0, gt)
    return [("a", shifted, gt), ("b", no2, gt), ("c", np.roll(gt, -1, axis=2), gt_no3),
            ("d", np.zeros_like(gt), gt)]


def test_evaluate_and_score_agree_by_default():
    cases = _cases()
    ev = VolumeEvaluator({1: "RV", 2: "Myo", 3: "LV"}, 4)
    for c in cases:
        ev.add(*c)
    vol = ev.report()
    sc = score_cases(cases, num_classes=4, surface=True)
    # score's default "auto" resolves to the volume evaluator's rule for volumes
    assert vol["empty_policy"] == sc["conventions"]["empty_policy"] == "transunet" and SCORE_EMPTY_POLICIES[0] == "auto"
    # the default of every entry point is the same rule
    assert inspect.signature(VolumeEvaluator.report).parameters["empty_policy"].default == "transunet"
    assert inspect.signature(score_cases).parameters["empty_policy"].default == "auto"
    from mambaseg.engine.crossval import evaluate_cv

    assert inspect.signature(evaluate_cv).parameters["empty_policy"].default == "auto"
    assert sc["hd95"] == pytest.approx(vol["mean_hd95"], rel=1e-6)
    assert sc["per_case_dice"] == pytest.approx(vol["mean_dice"], rel=1e-6)
    counts = {k: vol["empty_masks"][k] for k in ("empty_pred", "empty_gt", "both_empty", "values", "cases")}
    assert counts == {"empty_pred": 4, "empty_gt": 1, "both_empty": 0, "values": 12, "cases": 4}
    assert {k: sc["empty_masks"][k] for k in counts} == counts
    assert vol["empty_masks"]["note"] == ("TransUNet rule: 4 of 12 volume-class pairs with an empty prediction and 1 "
                                          "with an empty ground truth count 0 (in 3 of 4 volumes)")
    # the other rule stays selectable and gives the same answer in both
    nan_vol, nan_sc = ev.report("nan"), score_cases(cases, num_classes=4, empty_policy="nan")
    assert nan_vol["mean_hd95"] == nan_sc["hd95"] == "inf"
    assert nan_vol["empty_masks"]["note"].startswith("nan rule: 4 of 12 volume-class pairs with an empty prediction")


def test_all_empty_predictions_are_named_not_shown_as_perfect():
    gt = np.zeros((3, 10, 10), np.int64)
    gt[:, 2:7, 2:7] = 1
    ev = VolumeEvaluator({1: "fg"}, 2)
    for i in range(3):
        ev.add(f"v{i}", np.zeros_like(gt), gt)
    rep = ev.report()
    assert rep["mean_dice"] == 0.0 and rep["mean_hd95"] == 0.0  # the rule's numbers, as the papers computed them
    assert rep["empty_masks"]["note"] == "TransUNet rule: 3 of 3 volumes with an empty prediction count 0"


def test_describe_empty_masks_words():
    one = empty_mask_counts([[(0, 5)]] * 3 + [[(4, 4)]] * 7)
    assert describe_empty_masks(one, "transunet") == "TransUNet rule: 3 of 10 cases with an empty prediction count 0"
    assert describe_empty_masks(one, "nan", "volume") == \
        "nan rule: 3 of 10 volumes with an empty prediction count inf"
    both = empty_mask_counts([[(0, 0)], [(0, 0)], [(2, 0)], [(1, 1)]])
    assert describe_empty_masks(both, "nan") == ("nan rule: 1 of 4 cases with an empty ground truth counts inf; 2 "
                                                 "with both masks empty are left out")
    assert describe_empty_masks(both, "one") == ("one rule: 1 of 4 cases with an empty ground truth counts inf; 2 "
                                                 "with both masks empty count 0")
    # nothing decided by the rule: its name alone
    assert describe_empty_masks(empty_mask_counts([[(1, 1)]]), "transunet") == "TransUNet rule"
    assert describe_empty_masks(None, "nan") == "nan rule"


def test_confusion_scores_follow_the_transunet_rule():
    pred = torch.zeros(3, 4, 4, dtype=torch.long)
    gt = torch.zeros(3, 4, 4, dtype=torch.long)
    gt[0, :2] = 1  # 0: GT only -> 0
    pred[1, :1] = 1  # 1: prediction only -> 1
    # 2: both empty -> 0 (an empty prediction, whatever the ground truth)
    st = confusion_stats(pred, gt, 1)
    per_case = reduce_stats(st, "per_case", empty="transunet")
    assert per_case["per_class"]["dsc"] == [pytest.approx(1 / 3)] and per_case["iou"] == pytest.approx(1 / 3)
    assert reduce_stats(st, "per_case", empty="nan")["dsc"] == pytest.approx(0.0)  # case 2 left out, 0 and 0
