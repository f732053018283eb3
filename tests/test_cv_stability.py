"""benchmarks/cv_ph2_gpu.py --stability-only: the training stability of a cross-validation read from its folds'
histories, finished or not (folds a device budget stopped have no out-of-fold predictions to score), and its row in
docs/RESULTS.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT_NAME = "cv_ph2_vmbunet_ph2_stable-t_s0"


def _fold(root: Path, i: int, dice: list[float], *, finished: bool = False, loss: float = 0.2) -> None:
    f = root / ROOT_NAME / f"fold_{i}"
    f.mkdir(parents=True)
    hist = [{"epoch": e + 1, "train_loss": loss, "lr": 1e-3 / (e + 1), "time": 2.0, "val": {"dice": d}}
            for e, d in enumerate(dice)]
    (f / "history.json").write_text(json.dumps(hist))
    if finished:
        (f / "metrics.json").write_text("{}")


@pytest.fixture()
def cv(benchmark_module):
    return benchmark_module("cv_ph2_gpu")


def _anchor(results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    folds = [{"fold": i, "epochs": 20, "max_epoch_drop": 0.2, "max_epoch_drop_epoch": 15,
              "max_epoch_drop_after_first_tenth": 0.2, "max_epoch_drop_after_first_tenth_epoch": 15,
              "val_dice_last": 0.8, "lr_last": 1e-3, "seconds": 99.0} for i in range(2)]
    (results / "cv_ph2_vmbunet_ph2_s0.json").write_text(json.dumps({"fold_training": folds}))


def test_stability_of_unfinished_folds_reads_their_histories(tmp_path, cv):
    runs, results = tmp_path / "runs", tmp_path / "results"
    # 20 planned epochs, first tenth = epochs 1-2; fold 0 stopped at epoch 6 with a 30-point fall at epoch 2 (inside
    # the first tenth) and a 3-point fall at epoch 5; fold 1 finished, one 1-point fall at epoch 20
    _fold(runs, 0, [0.5, 0.2, 0.6, 0.8, 0.77, 0.78])
    _fold(runs, 1, [0.6 + 0.01 * e for e in range(19)] + [0.77], finished=True, loss=0.1)
    _anchor(results)
    d = cv.run_stability("vmbunet_ph2_stable", 0, folds=2, runs=runs, results=results, epochs=20, extra=[], tag="t",
                         anchor="vmbunet_ph2", fold_devices={0: "GPU A", 1: "GPU A"}, note="how")
    assert d == json.loads((results / "stability_ph2_vmbunet_ph2_stable-t_s0.json").read_text())
    assert d["epochs_planned"] == 20 and d["first_tenth_epochs"] == 2 and d["epochs_done"] == [6, 20]
    assert not d["all_folds_finished"] and [f["finished"] for f in d["fold_training"]] == [False, True]
    f0, f1 = d["fold_training"]
    assert f0["max_epoch_drop"] == pytest.approx(0.3) and f0["max_epoch_drop_epoch"] == 2
    assert f0["max_epoch_drop_after_first_tenth"] == pytest.approx(0.03)
    assert f0["max_epoch_drop_after_first_tenth_epoch"] == 5
    assert f0["drops_over_listed"] == [[2, 0.3], [5, 0.03]]  # falls over 2 points, with their epochs
    assert f1["max_epoch_drop_after_first_tenth"] == pytest.approx(0.01) and f1["drops_over_listed"] == []
    assert f0["seconds_per_epoch"] == 2.0 and f0["lr_peak"] == 1e-3 and f1["train_loss_max_after_first_tenth"] == 0.1
    assert d["max_epoch_drop"] == pytest.approx(0.3) and d["max_epoch_drop_after_first_tenth"] == pytest.approx(0.03)
    assert not d["bound_met"] and d["bound_met_after_first_tenth"]
    assert d["anchor"]["file"] == "cv_ph2_vmbunet_ph2_s0.json" and len(d["anchor"]["fold_training"]) == 2
    assert "seconds" not in d["anchor"]["fold_training"][0] and d["note"] == "how"
    assert d["selection_rule"].startswith("none")

    # a late fall over the bound is reported as such
    _fold(runs / "late", 0, [0.5, 0.6, 0.9, 0.8])
    d = cv.run_stability("vmbunet_ph2_stable", 0, folds=1, runs=runs / "late", results=results, epochs=20, extra=[],
                         tag="t")
    assert not d["bound_met_after_first_tenth"] and d["max_epoch_drop_after_first_tenth"] == pytest.approx(0.1)
    assert "anchor" not in d


def test_stability_names_what_is_missing(tmp_path, cv):
    runs, results = tmp_path / "runs", tmp_path / "results"
    _fold(runs, 0, [0.5, 0.6])
    with pytest.raises(SystemExit, match=r"fold_1.*history\.json is missing"):
        cv.run_stability("vmbunet_ph2_stable", 0, folds=2, runs=runs, results=results, epochs=20, extra=[], tag="t")
    with pytest.raises(SystemExit, match=r"--anchor vmbunet_ph2: .*cv_ph2_vmbunet_ph2_s0\.json is missing"):
        cv.run_stability("vmbunet_ph2_stable", 0, folds=1, runs=runs, results=results, epochs=20, extra=[], tag="t",
                         anchor="vmbunet_ph2")
    (runs / ROOT_NAME / "fold_0" / "history.json").write_text("[]")
    with pytest.raises(SystemExit, match="non-empty list"):
        cv.run_stability("vmbunet_ph2_stable", 0, folds=1, runs=runs, results=results, epochs=20, extra=[], tag="t")


def test_the_report_shows_a_stability_record(tmp_path, cv, benchmark_module):
    report = benchmark_module("report")
    runs, results = tmp_path / "runs", tmp_path / "results"
    _fold(runs, 0, [0.5, 0.2, 0.6, 0.8, 0.77, 0.78])
    _fold(runs, 1, [0.6, 0.7, 0.75, 0.74])
    _anchor(results)
    d = cv.run_stability("vmbunet_ph2_stable", 0, folds=2, runs=runs, results=results, epochs=20,
                         extra=["train.ema_decay=0.99"], tag="t", anchor="vmbunet_ph2",
                         fold_devices={0: "GPU A", 1: "GPU A"})
    (row,) = report.stability_rows("x.json", d)
    assert row["recipe"] == "vmbunet_ph2_stable (t: train.ema_decay=0.99)"
    assert row["epochs done / planned"] == "4-6 / 20"
    assert row["largest fall (points), all epochs"] == "30.0 (ep 2)"
    assert row["per fold after epoch 2"] == "3.0 (ep 5), 1.0 (ep 4)" and row["< 5 points after epoch 2"] == "yes"
    assert row["anchor per fold after the first tenth"] == "vmbunet_ph2: 20.0 (ep 15), 20.0 (ep 15) (of 20 epochs)"
    assert row["finished"].startswith("no")
    assert report.device_of(d).startswith("folds trained on GPU A (folds 0-1) (as stated); histories read on")
    text = report.render(results)
    assert "## PH2 training stability" in text and "stability_ph2_vmbunet_ph2_stable-t_s0.json" in text


def test_stability_only_from_the_command_line(tmp_path, cv_script):
    runs, results = tmp_path / "runs", tmp_path / "results"
    _fold(runs, 0, [0.5, 0.6, 0.7])
    r = cv_script("--recipes", "vmbunet_ph2_stable", "--tag", "t", "--seeds", "0", "--folds", "1", "--epochs", "30",
                  "--runs", str(runs), "--results-dir", str(results), "--stability-only", "--fold-device", "0=GPU B")
    assert r.returncode == 0, r.stderr
    d = json.loads((results / "stability_ph2_vmbunet_ph2_stable-t_s0.json").read_text())
    assert d["epochs_planned"] == 30 and d["fold_training"][0]["device"] == "GPU B"
    assert "--stability-only" in d["environment"]["command"]
