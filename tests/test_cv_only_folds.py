"""benchmarks/cv_ph2_gpu.py --only-folds: folds of one cross-validation trained on two machines (calls), packed,
merged and scored as one."""

from __future__ import annotations

import json
import tarfile

import pytest


def test_folds_trained_apart_are_merged_and_scored_as_one_cross_validation(tmp_path, benchmark_module,
                                                                            cv_smoke_run):
    cv, _run = benchmark_module("cv_ph2_gpu"), cv_smoke_run
    cache = cv._smoke_cache(tmp_path)
    a, b, results = tmp_path / "a" / "cvruns", tmp_path / "b" / "cvruns", tmp_path / "results"
    # machine A trains fold 1 only: nothing is scored or written, the other fold is not started
    assert _run(cache, a, results, only_folds=[1]) is None
    root_a = a / "cv_ph2_vmunet_ph2_best_s0"
    assert (root_a / "fold_1" / "metrics.json").is_file() and not (root_a / "fold_0").exists()
    assert not results.exists() or not list(results.iterdir())
    # machine B trains fold 0 from the same seeded split
    assert _run(cache, b, results, only_folds=[0]) is None
    root_b = b / "cv_ph2_vmunet_ph2_best_s0"
    assert (root_a / "splits_final.json").read_text() == (root_b / "splits_final.json").read_text()
    # A's finished fold travels packed (no checkpoints) and is merged into B's root, which is then scored
    (packed,) = cv.pack_state(root_a, tmp_path / "packed", checkpoints=("last",))
    with tarfile.open(packed) as t:
        t.extractall(b.parent, filter="data")
    rec = _run(cache, b, results, score_only=True)
    assert rec is not None and (results / "cv_ph2_vmunet_ph2_best_s0.json").is_file()
    # every case of the split is scored once, by the fold that held it out
    held_out = sorted(c for f in json.loads((root_b / "splits_final.json").read_text())["folds"] for c in f["val"])
    assert sorted(rec["per_case_dsc"]) == held_out and len(held_out) == 12
    assert [f["fold"] for f in rec["fold_training"]] == [0, 1]
    assert 0.0 <= rec["pooled_oof_dsc"] <= 1.0 and "last_tta_flip" in rec["scores"]


def test_scoring_a_root_with_a_missing_fold_stops_with_a_clear_message(tmp_path, benchmark_module, cv_smoke_run):
    cv, _run = benchmark_module("cv_ph2_gpu"), cv_smoke_run
    cache = cv._smoke_cache(tmp_path)
    runs = tmp_path / "cvruns"
    assert _run(cache, runs, tmp_path / "results", only_folds=[0]) is None
    import pytest

    with pytest.raises(SystemExit, match=r"fold\(s\) \[1\] have no complete out-of-fold predictions"):
        _run(cache, runs, tmp_path / "results", score_only=True)


def test_only_folds_out_of_range_is_refused_by_name(tmp_path, cv_script):
    res = cv_script("--only-folds", "3,7", "--runs", str(tmp_path))
    assert res.returncode == 2 and "--only-folds: fold numbers in 0..4" in res.stderr


def test_one_fold_list_syntax_for_only_folds_and_fold_device(benchmark_module):
    """--only-folds and --fold-device read their folds with one parser: single folds, I-J spans, commas, in range."""
    cv = benchmark_module("cv_ph2_gpu")
    assert cv._fold_list("3,4", 5) == [3, 4] and cv._fold_list("0-2,4", 5) == [0, 1, 2, 4]
    assert cv._fold_list(" 2 , 2-3 ", 5) == [2, 3]
    for bad in ("", "x", "1-x", "3,7", "0-5", "-1"):
        with pytest.raises(ValueError):
            cv._fold_list(bad, 5)
