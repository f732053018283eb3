"""Per-volume per-class Dice/HD95 aggregation and its empty-mask policies."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mambaseg.metrics import VolumeEvaluator, dice_hd95, evaluate_volumes


def _cases(n: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        gt = np.zeros((5, 24, 20), np.uint8)
        gt[1:4, 4:14, 3:12] = 1
        gt[1:4, 8:12, 5:9] = 2
        if i != 1:  # class 3 absent from the GT of case 1
            gt[2:5, 16:22, 12:18] = 3
        pred = gt.copy()
        flip = rng.random(gt.shape) < 0.05
        pred[flip] = rng.integers(0, 4, size=int(flip.sum()))
        if i == 2:
            pred[pred == 2] = 0  # class 2 missed entirely in case 2
        out.append((f"case{i}", pred, gt))
    return out


def test_report_matches_per_class_loop() -> None:
    cases = _cases()
    names = {1: "RV", 2: "Myo", 3: "LV"}
    for policy in ("transunet", "nan"):
        rep = evaluate_volumes(cases, names, num_classes=4, empty_policy=policy)
        assert rep["empty_policy"] == policy and rep["hd95_units"] == "voxels" and rep["num_volumes"] == 3
        class_means_d, class_means_h = [], []
        for c, n in names.items():
            vals = [dice_hd95(p == c, g == c, empty_policy=policy) for _, p, g in cases]
            d = np.array([v[0] for v in vals])
            h = np.array([v[1] for v in vals])
            if policy == "nan":
                d, h = d[~np.isnan(d)], h[~np.isnan(h)]
            md, mh = float(d.mean()), float(h.mean())
            class_means_d.append(md)
            class_means_h.append(mh)
            assert rep["classes"][n]["dice"] == pytest.approx(md)
            if math.isinf(mh):
                assert rep["classes"][n]["hd95"] == "inf"
            else:
                assert rep["classes"][n]["hd95"] == pytest.approx(mh)
        assert rep["mean_dice"] == pytest.approx(float(np.mean(class_means_d)))
        json.dumps(rep, allow_nan=False)  # strict JSON


def test_policies_differ_on_empty_cases() -> None:
    ev = VolumeEvaluator(["RV", "Myo", "LV"])
    for item in _cases():
        ev.add(*item)
    both = ev.reports()
    t, n = both["transunet"], both["nan"]
    # case 1 has no LV in the GT; case 2 missed Myo
    row_t = {r["id"]: r for r in t["per_volume"]}
    row_n = {r["id"]: r for r in n["per_volume"]}
    assert row_t["case2"]["dice"]["Myo"] == 0.0 and row_t["case2"]["hd95"]["Myo"] == 0.0
    assert row_n["case2"]["dice"]["Myo"] == 0.0 and row_n["case2"]["hd95"]["Myo"] == "inf"
    assert row_t["case1"]["dice"]["LV"] == 1.0 and row_t["case1"]["hd95"]["LV"] == 0.0  # pred has stray LV voxels
    assert row_n["case1"]["dice"]["LV"] == 0.0 and row_n["case1"]["hd95"]["LV"] == "inf"
    assert n["classes"]["Myo"]["n_hd95_inf"] == 1 and n["classes"]["Myo"]["hd95"] == "inf"
    assert "Dice 1, HD95 0" in t["empty_policy_rule"]


def test_spacing_units_and_label_errors() -> None:
    (cid, p, g) = _cases(1)[0]
    ev = VolumeEvaluator({1: "a", 2: "b", 3: "c"}, num_classes=4)
    ev.add(cid, p, g, spacing=(10.0, 1.0, 1.0))
    assert ev.report()["hd95_units"] == "mm"
    ev.add("v", p, g)
    assert ev.report()["hd95_units"] == "mixed"
    bad = g.copy()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"case 'x'.*\[7\].*label map"):
        ev.add("x", p, bad)
    with pytest.raises(ValueError, match="shape"):
        ev.add("y", p, g[:2])


def test_worker_processes_give_identical_results() -> None:
    cases = _cases(4, seed=5)
    a = evaluate_volumes(cases, ["x", "y", "z"], empty_policy=["transunet", "nan"])
    b = evaluate_volumes(cases, ["x", "y", "z"], empty_policy=["transunet", "nan"], num_workers=2)
    assert a == b
