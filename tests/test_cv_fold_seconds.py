"""The training seconds benchmarks/cv_ph2_gpu.py records per fold, and how the report shows them, for folds resumed
across device calls (the trainer's own ``seconds`` covers only the last process)."""

from __future__ import annotations

import json
from pathlib import Path


def _fold(root: Path, i: int, times: list[float], last_process_seconds: float, lrs: list[float] | None = None) -> None:
    f = root / f"fold_{i}"
    f.mkdir(parents=True)
    history = [{"epoch": e + 1, "time": t, "val": {"dice": 0.5 + 0.1 * e}} for e, t in enumerate(times)]
    for row, lr in zip(history, lrs or []):
        row["lr"] = lr
    (f / "history.json").write_text(json.dumps(history))
    (f / "metrics.json").write_text(json.dumps({
        "dice": 0.7, "best_epoch": len(times), "last": {"dice": 0.7},
        "train": {"epochs": len(times), "steps": 10 * len(times), "stop_reason": "completed",
                  "seconds": last_process_seconds}}))


def test_a_resumed_fold_counts_the_epochs_of_every_call(tmp_path, benchmark_module):
    cv = benchmark_module("cv_ph2_gpu")
    _fold(tmp_path, 0, [10.0, 11.0, 12.0, 13.0], last_process_seconds=26.5)  # epochs 3-4 after a resume
    _fold(tmp_path, 1, [9.0, 9.0], last_process_seconds=18.4)  # one call
    facts = cv._fold_facts(tmp_path, 2)
    assert [f["seconds"] for f in facts] == [46.0, 18.0]
    assert [f["seconds_last_process"] for f in facts] == [26.5, 18.4]
    assert facts[0]["epochs"] == 4 and facts[1]["stop_reason"] == "completed"


def test_the_report_marks_fold_seconds_of_older_files_as_a_lower_bound(benchmark_module):
    report = benchmark_module("report")
    folds = [{"seconds": s} for s in (100.0, 110.0, 120.0, 60.0, 70.0)]
    new = {"fold_training": folds, "fold_seconds_rule": "history"}
    assert report._fold_training(new) == "460 s"
    # three at a time: process 0 ran folds 0 and 3 (160 s), process 1 folds 1 and 4 (180 s), process 2 fold 2
    assert report._fold_training({**new, "parallel_folds": 3}) == "180 s (3 at a time)"
    assert report._fold_training({"fold_training": folds}) == ">= 460 s"
    assert report._fold_training({"fold_training": folds, "parallel_folds": 3}) == ">= 180 s (3 at a time)"


def test_the_folds_record_how_far_the_schedule_had_decayed_at_the_scored_weights(tmp_path, benchmark_module):
    cv, report = benchmark_module("cv_ph2_gpu"), benchmark_module("report")
    # fold 0: a cosine restarted every 2 * T_max epochs, back near its peak at the end; fold 1: decayed to near zero
    _fold(tmp_path, 0, [1.0] * 4, last_process_seconds=4.0, lrs=[1e-3, 5e-4, 1e-4, 9e-4])
    _fold(tmp_path, 1, [1.0] * 3, last_process_seconds=3.0, lrs=[2e-3, 1e-3, 2e-5])
    facts = cv._fold_facts(tmp_path, 2)
    assert [(f["lr_last"], f["lr_peak"]) for f in facts] == [(9e-4, 1e-3), (2e-5, 2e-3)]
    assert report._final_lr({"fold_training": facts}) == "0.90"  # the largest of the folds' ratios
    assert report._final_lr({"fold_training": facts[1:]}) == "0.01"
    _fold(tmp_path / "old", 0, [1.0, 1.0], last_process_seconds=2.0)  # a history without lr (older files)
    old = cv._fold_facts(tmp_path / "old", 1)
    assert old[0]["lr_last"] is None and report._final_lr({"fold_training": old}) == "-"


def test_the_folds_say_which_gpu_trained_them_and_the_report_shows_it(tmp_path, benchmark_module):
    cv, report = benchmark_module("cv_ph2_gpu"), benchmark_module("report")
    for i in range(5):
        _fold(tmp_path, i, [1.0], last_process_seconds=1.0)
    m = json.loads((tmp_path / "fold_4" / "metrics.json").read_text())
    m["train"]["device_name"] = "NVIDIA H100 80GB HBM3"  # recorded by the trainer since 2026-12-07
    (tmp_path / "fold_4" / "metrics.json").write_text(json.dumps(m))
    facts = cv._fold_facts(tmp_path, 5, {0: "NVIDIA H200", 1: "NVIDIA H200", 2: "NVIDIA H200", 4: "stated, ignored"})
    assert [f["device"] for f in facts] == ["NVIDIA H200"] * 3 + [None, "NVIDIA H100 80GB HBM3"]
    assert facts[0]["device_source"].startswith("stated") and facts[3]["device_source"] is None
    assert facts[4]["device_source"] == "metrics.json"  # the fold's own record wins over a stated name
    scored = {"note": "scored with --score-only from predictions restored without checkpoints",
              "fold_training": facts, "environment": {"device": "cpu (2 cores)"}}
    assert report.device_of(scored) == ("folds trained on NVIDIA H200 (folds 0-2), not recorded (fold 3), "
                                        "NVIDIA H100 80GB HBM3 (fold 4) (as stated); scored on cpu (2 cores)")
    # a file trained and scored in one run keeps its environment's device; unrecorded folds add nothing
    assert report.device_of({**scored, "note": ""}) == "cpu (2 cores)"
    bare = [{**f, "device": None, "device_source": None} for f in facts]
    assert report.device_of({**scored, "fold_training": bare}) == "cpu (2 cores)"


def test_fold_device_arguments_are_checked(cv_script):
    r = cv_script("--score-only", "--fold-device", "x-2=H200")
    assert r.returncode == 2 and "--fold-device: I=NAME or I-J=NAME" in r.stderr
