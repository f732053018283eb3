"""benchmarks/ph2_hard_cases.py: the PH2 cases some cross-validation scores below 0.80, every run's DSC beside."""

from __future__ import annotations

import json

import pytest


def _cv(path, recipe, seed, dsc, split_seed=0):
    path.write_text(json.dumps({"recipe": recipe, "seed": seed, "split_seed": split_seed, "folds": 5,
                                "pooled_oof_dsc": 0.9, "per_case_dsc": dsc}))


def test_the_table_lists_each_case_below_the_threshold_in_any_run(tmp_path, benchmark_module):
    hc = benchmark_module("ph2_hard_cases")
    _cv(tmp_path / "cv_ph2_a_s0.json", "a", 0, {"c1": 0.95, "c2": 0.70, "c3": 0.79})
    _cv(tmp_path / "cv_ph2_b_s0.json", "b", 0, {"c1": 0.96, "c2": 0.85, "c3": 0.60})
    (tmp_path / "stability_ph2_a_s0.json").write_text("{}")  # not a cross-validation: left out
    t = hc.hard_cases(hc.runs_of(tmp_path), 0.8)
    assert list(t["runs"]) == ["a_s0", "b_s0"] and t["n_cases"] == 3
    assert [r["case"] for r in t["cases"]] == ["c2", "c3"]  # c1 is above 0.80 everywhere
    c2, c3 = t["cases"]
    assert c2["dsc"] == {"a_s0": 0.70, "b_s0": 0.85} and c2["runs_below"] == 1 and c2["best_run"] == "b_s0"
    assert c3["runs_below"] == 2 and t["below_in_every_run"] == ["c3"]
    assert t["runs"]["a_s0"]["n_below"] == 2
    _cv(tmp_path / "cv_ph2_c_s0.json", "c", 0, {"c1": 0.9}, split_seed=1)  # other folds: not comparable
    with pytest.raises(SystemExit, match="different folds"):
        hc.runs_of(tmp_path)


def test_the_committed_table_is_derived_from_the_committed_cross_validations(benchmark_module):
    hc = benchmark_module("ph2_hard_cases")
    committed = json.loads((hc.RESULTS / "hard_cases_ph2.json").read_text())
    again = hc.hard_cases(hc.runs_of(hc.RESULTS), committed["threshold"])
    committed.pop("environment")
    # the error columns come from restored cross-validation roots (--runs/--cache), not from the committed files
    for key in ("error_rule", "runs_with_probabilities"):
        committed.pop(key, None)
    for row in committed["cases"]:
        row.pop("errors", None)
        row.pop("error_kind", None)
    assert committed == again, "run: python benchmarks/ph2_hard_cases.py"


def test_error_kinds_from_out_of_fold_probabilities(tmp_path, benchmark_module):
    """Precision/recall of each hard case in the runs whose restored roots hold its probabilities: an
    over-segmented case is 'false positives', an under-segmented one 'false negatives'."""
    import numpy as np

    hc = benchmark_module("ph2_hard_cases")
    g = np.zeros((8, 8), np.uint8)
    g[2:6, 2:6] = 255  # 16 foreground pixels
    np.savez(tmp_path / "cache.npz", train_ids=np.array(["c1", "c2"]), train_masks=np.stack([g, g]),
             val_ids=np.array(["c3"]), val_masks=g[None])
    over = np.zeros((1, 8, 8), np.float16)
    over[0, 1:7, 1:7] = 0.9  # 36 predicted, all 16 true ones among them: precision 0.444, recall 1
    under = np.zeros((1, 8, 8), np.float16)
    under[0, 2:4, 2:6] = 0.7  # 8 predicted, all true: precision 1, recall 0.5
    for run, fold, case, p in [("a_s0", 0, "c2", over), ("a_s0", 1, "c3", under), ("b_s0", 0, "c2", under)]:
        d = tmp_path / "cv" / f"cv_ph2_{run}" / f"fold_{fold}" / "oof" / "last" / "probabilities"
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / f"{case}.npz", probabilities=p)
    _cv(tmp_path / "cv_ph2_a_s0.json", "a", 0, {"c1": 0.95, "c2": 0.62, "c3": 0.67})
    _cv(tmp_path / "cv_ph2_b_s0.json", "b", 0, {"c1": 0.96, "c2": 0.67, "c3": 0.90})
    t = hc.add_error_kinds(hc.hard_cases(hc.runs_of(tmp_path), 0.8), tmp_path / "cv", tmp_path / "cache.npz")
    c2, c3 = t["cases"]
    assert c2["errors"]["a_s0"] == {"precision": 0.4444, "recall": 1.0, "dominant": "false positives"}
    assert c2["errors"]["b_s0"] == {"precision": 1.0, "recall": 0.5, "dominant": "false negatives"}
    assert c2["error_kind"] == "mixed"
    assert list(c3["errors"]) == ["a_s0"] and c3["error_kind"] == "false negatives"  # b_s0 has no c3 probabilities
    assert t["runs_with_probabilities"] == ["a_s0", "b_s0"]
    bad = tmp_path / "cv" / "cv_ph2_b_s0" / "fold_1" / "oof" / "last" / "probabilities"
    bad.mkdir(parents=True)
    np.savez(bad / "c2.npz", probabilities=over)  # c2 held out by two folds: a broken root
    with pytest.raises(SystemExit, match="held out by more than one fold"):
        hc.add_error_kinds(hc.hard_cases(hc.runs_of(tmp_path), 0.8), tmp_path / "cv", tmp_path / "cache.npz")
