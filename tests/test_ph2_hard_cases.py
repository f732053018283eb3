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
    assert committed == again, "run: python benchmarks/ph2_hard_cases.py"
