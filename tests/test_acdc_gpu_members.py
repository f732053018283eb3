"""benchmarks/acdc_gpu.py --member / --ensemble / --resume: which runs a command makes, and which it skips."""

from __future__ import annotations

import argparse
import json
import os
import time

import pytest


def _args(**kw):
    base = {"models": "heteromedseg", "member": [], "tag": "", "runs": "runs", "ensemble": False, "parallel": True}
    return argparse.Namespace(**{**base, **kw})


def test_members_are_named_runs_of_one_model_with_their_overrides(benchmark_module):
    acdc = benchmark_module("acdc_gpu")
    assert acdc.units(_args(models="msvmunet,heteromedseg")) == [("msvmunet", "msvmunet", []),
                                                                  ("heteromedseg", "heteromedseg", [])]
    got = acdc.units(_args(member=["plain=", "msvm=data.augmentation=msvmunet; train.seed=2"]))
    assert got == [("heteromedseg-plain", "heteromedseg", []),
                   ("heteromedseg-msvm", "heteromedseg", ["data.augmentation=msvmunet", "train.seed=2"])]


@pytest.mark.parametrize("kw, message", [
    ({"models": "msvmunet,heteromedseg", "member": ["a="]}, "exactly one --models entry"),
    ({"member": ["no-equals-sign"]}, "expected NAME=OVERRIDES"),
    ({"member": ["bad name=train.seed=1"]}, "expected NAME=OVERRIDES"),
    ({"member": ["a=train.seed=1", "a=train.seed=2"]}, "names must differ"),
    ({"member": ["a=train.seed=1;model.name=msvmunet"]}, "cannot change model.name"),
])
def test_bad_members_are_refused_by_name(benchmark_module, kw, message):
    with pytest.raises(SystemExit, match=message):
        benchmark_module("acdc_gpu").units(_args(**kw))


def test_a_resumed_job_skips_only_a_run_it_finished_and_tested_itself(tmp_path, benchmark_module, monkeypatch):
    acdc = benchmark_module("acdc_gpu")
    monkeypatch.setattr(acdc, "RESULTS", tmp_path / "results")
    out = tmp_path / "runs" / "acdc_heteromedseg-a"
    best = out / "checkpoints" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"weights")
    args = _args(tag="_ens")
    assert acdc._finished("heteromedseg-a", out, args) is None  # no result file yet
    result = tmp_path / "results" / "acdc_heteromedseg-a_ens.json"
    result.parent.mkdir()
    result.write_text(json.dumps({"test": {"dice": 0.9, "checkpoint": str(best)}}))
    assert acdc._finished("heteromedseg-a", out, args)["test"]["dice"] == 0.9
    # an unfinished record (no test), another machine's file (other checkpoint path) or weights newer than the
    # record (trained again since) are not taken as done
    result.write_text(json.dumps({"unfinished": True}))
    assert acdc._finished("heteromedseg-a", out, args) is None
    result.write_text(json.dumps({"test": {"dice": 0.9, "checkpoint": "/elsewhere/best.pt"}}))
    assert acdc._finished("heteromedseg-a", out, args) is None
    result.write_text(json.dumps({"test": {"dice": 0.9, "checkpoint": str(best)}}))
    later = time.time() + 60
    os.utime(best, (later, later))
    assert acdc._finished("heteromedseg-a", out, args) is None


def test_the_report_shows_an_ensemble_with_its_members(benchmark_module):
    report = benchmark_module("report")
    classes = {c: {"dice": v} for c, v in (("RV", 0.9), ("Myo", 0.88), ("LV", 0.93))}
    d = {"ensemble": True, "model": "heteromedseg", "recipe": "heteromedseg_acdc_best",
         "members": [{"run": "heteromedseg-a", "test_dice": 0.886}, {"run": "heteromedseg-b", "test_dice": 0.891}],
         "val": {"dice": 0.9, "hd95": 2.5}, "test": {"dice": 0.9034, "hd95": 2.9, "classes": classes},
         "test_tta_flip": {"dice": 0.9012}}
    (row,) = report.acdc_rows("acdc_heteromedseg_ensemble_ens.json", d)
    assert row["test Dice"] == "0.903" and row["test Dice + flip TTA"] == "0.901"
    assert "ensemble of 2" in row["run"] and "heteromedseg-b 0.891" in row["run"]
    assert row["test RV / Myo / LV Dice"] == "0.900 / 0.880 / 0.930"
