"""benchmarks/cv_ph2_gpu.py ensembles of finished cross-validations: the seeds of one recipe (run_ensemble) and
cross-validations of different recipes on the same folds (--mix, run_mix)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def trained(tmp_path_factory, benchmark_module, cv_smoke_run):
    """Three smoke cross-validations on one split: vmunet_ph2_best seeds 0 and 1, vmunet_ph2 seed 0."""
    cv = benchmark_module("cv_ph2_gpu")
    tmp = tmp_path_factory.mktemp("cvmix")
    cache = cv._smoke_cache(tmp)
    runs, results = tmp / "cvruns", tmp / "results"
    singles = {(r, s): cv_smoke_run(cache, runs, results, r, s)
               for r, s in (("vmunet_ph2_best", 0), ("vmunet_ph2_best", 1), ("vmunet_ph2", 0))}
    return cv, runs, results, singles


def test_a_mix_of_two_recipes_averages_their_out_of_fold_probabilities(trained, tmp_path, benchmark_module):
    from mambaseg.engine.crossval import evaluate_cv

    cv, runs, results, singles = trained
    rec = cv.run_mix("mixab", ["vmunet_ph2_best_s0", "cv_ph2_vmunet_ph2_s0"], runs=runs, results=results, tta=True)
    stems = ["cv_ph2_vmunet_ph2_best_s0", "cv_ph2_vmunet_ph2_s0"]
    assert rec["member_runs"] == stems and rec["members"] == 2 and rec["recipe"] == "mixab"
    assert json.loads((results / "cv_ph2_mixab_ensemble.json").read_text()) == rec
    # each member's own score is its result file's; the two members differ (else the average proves nothing)
    a, b = singles[("vmunet_ph2_best", 0)], singles[("vmunet_ph2", 0)]
    assert rec["member_pooled_oof_dsc"] == {stems[0]: a["pooled_oof_dsc"], stems[1]: b["pooled_oof_dsc"]}
    assert a["per_case_dsc"] != b["per_case_dsc"]
    # the headline is the library's ensemble of the two roots (its average is checked by hand in test_crossval)
    ens = evaluate_cv([runs / s for s in stems], out=tmp_path / "ens")
    assert rec["pooled_oof_dsc"] == pytest.approx(ens["dice"], abs=1e-12)
    assert rec["per_case_dsc"] == {c["id"]: c["dice"] for c in ens["cases"]} and len(rec["per_case_dsc"]) == 12
    assert "last_tta_flip" in rec["scores"] and "2 cross-validations" in rec["selection_rule"]
    # the report shows it as one row naming both members with their own scores
    report = benchmark_module("report")
    (row,) = report.cv_ph2_rows("cv_ph2_mixab_ensemble.json", rec)
    assert row["seed"] == (f"ensemble of vmunet_ph2_best_s0 ({a['pooled_oof_dsc']:.4f}) + "
                           f"vmunet_ph2_s0 ({b['pooled_oof_dsc']:.4f})")
    assert row["pooled OOF DSC (last weights)"] == f"{rec['pooled_oof_dsc']:.4f}"


def test_the_seeds_of_one_recipe_as_an_ensemble_with_their_spread(trained):
    cv, runs, results, singles = trained
    rec = cv.run_ensemble("vmunet_ph2_best", [0, 1], runs=runs, results=results, tta=True)
    vals = [singles[("vmunet_ph2_best", s)]["pooled_oof_dsc"] for s in (0, 1)]
    assert rec["summary_seeds"] == [0, 1] and rec["single_seed_pooled_oof_dsc"]["values"] == vals
    assert rec["single_seed_pooled_oof_dsc"]["mean"] == pytest.approx(sum(vals) / 2)
    mix = cv.run_mix("seeds01", ["vmunet_ph2_best_s0", "vmunet_ph2_best_s1"], runs=runs, results=results, tta=False)
    assert mix["pooled_oof_dsc"] == rec["pooled_oof_dsc"]  # the same two roots averaged by either entry point


def test_a_mix_names_what_is_missing(trained):
    cv, runs, results, _ = trained
    with pytest.raises(SystemExit, match=r"cv_ph2_vmbunet_ph2_stable_s0\.json is missing"):
        cv.run_mix("m", ["vmunet_ph2_best_s0", "vmbunet_ph2_stable_s0"], runs=runs, results=results, tta=False)
    with pytest.raises(SystemExit, match="two or more different"):
        cv.run_mix("m", ["vmunet_ph2_best_s0", "cv_ph2_vmunet_ph2_best_s0"], runs=runs, results=results, tta=False)
    with pytest.raises(SystemExit, match=r"elsewhere/cvruns/cv_ph2_vmunet_ph2_best_s0 is missing"):
        cv.run_mix("m", ["vmunet_ph2_best_s0", "vmunet_ph2_s0"], runs=runs.parent / "elsewhere" / "cvruns",
                   results=results, tta=False)


def test_mix_without_a_name_is_refused_by_argument(cv_script):
    res = cv_script("--mix", "a_s0,b_s0")
    assert res.returncode == 2 and "--mix needs --mix-name" in res.stderr



def test_members_trained_on_names_the_folds_devices_not_the_scoring_machine(benchmark_module):
    cv = benchmark_module("cv_ph2_gpu")
    rescored = {"environment": {"device": "cpu (2 cores)"},
                "fold_training": [{"device": "NVIDIA H100 80GB HBM3"}, {"device": "NVIDIA H200"}]}
    unknown_folds = {"environment": {"device": "NVIDIA H200"}, "fold_training": [{"seconds": 1.0}]}
    assert cv._trained_on([rescored]) == ["NVIDIA H100 80GB HBM3", "NVIDIA H200"]
    assert cv._trained_on([unknown_folds]) == ["NVIDIA H200"]  # no fold devices: where the member ran
