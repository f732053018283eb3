"""benchmarks/acdc_gpu.py --member / --ensemble / --resume: which runs a command makes, and which it skips."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pytest


def _args(**kw):
    base = {"models": "heteromedseg", "member": [], "tag": "", "runs": "runs", "ensemble": False, "parallel": True,
            "train_on_val": False}
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
    assert row["val Dice"] == "0.900"
    (tov,) = report.acdc_rows("acdc_heteromedseg_ensemble_ens_tov.json", {**d, "train_on_val": True})
    assert tov["val Dice"] == "0.900 (in-sample)" and "trained on train + val slices, final weights" in tov["run"]


def test_train_on_val_trains_on_the_val_slices_and_tests_the_final_weights(tmp_path, benchmark_module, monkeypatch):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
    from test_acdc import make_acdc

    from mambaseg.data import ACDC_LABELS, acdc_slices, acdc_volumes
    from mambaseg.data.cache import write_volcache

    acdc = benchmark_module("acdc_gpu")
    monkeypatch.setattr(acdc, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(acdc, "write_json", lambda name, rec: _write(tmp_path / "results" / name, rec))
    root = make_acdc(tmp_path / "acdc", n_train=3)  # 3 training slices; val = 2 volumes of 5 slices
    cache = write_volcache(tmp_path / "c.npz", name="acdc", label_names=ACDC_LABELS, num_classes=4,
                           image_size=(32, 32), train=acdc_slices(root, image_size=32, augment=False, normalization=None),
                           eval_splits={"val": acdc_volumes(root, "val"), "test": acdc_volumes(root, "test")})
    assert acdc._train_slices(str(cache)) == 3 and acdc._train_slices(str(cache), with_val=True) == 13
    argv = ["--cache", str(cache), "--models", "heteromedseg", "--recipe", "{model}_acdc_best", "--epochs", "1",
            "--max-steps", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--validations", "1",
            "--no-parallel", "--runs", str(tmp_path / "runs"), "--tag", "_tov", "--train-on-val"]
    assert acdc.main(argv) == 0
    res = json.loads((tmp_path / "results" / "acdc_heteromedseg_tov.json").read_text())
    assert res["test"]["checkpoint"].endswith("checkpoints/last.pt")
    assert "13 slices of 45 patients" in res["data"]["train"] and res["data"]["selection"].startswith("none")
    assert "data.train_splits=[train,val]" in res["overrides"] and res["train_on_val"] is True
    report = benchmark_module("report")
    (row,) = report.acdc_rows("acdc_heteromedseg_tov.json", res)
    assert row["val Dice"].endswith("(in-sample)") and "final weights" in row["run"]
    cfg = (tmp_path / "runs" / "acdc_heteromedseg" / "config.yaml").read_text()
    assert "train_splits: [train, val]" in cfg  # the resolved config saved with the run names both splits
    log = (tmp_path / "runs" / "acdc_heteromedseg" / "train.log").read_text()
    assert "warning: val also trains (data.train_splits): its scores are in-sample" in log
    # without the flag: best.pt (chosen on val), 3 training slices
    assert acdc._ckpt_name(_args(train_on_val=False)) == "best.pt"


def _write(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, default=str))
    return path


def test_a_member_killed_without_reporting_fails_by_name_and_the_others_are_kept(benchmark_module):
    """A member process that dies before putting its result (the out-of-memory killer's SIGKILL) used to leave the
    job waiting on the queue forever; now it is reported as failed and the members that finished keep their results."""
    import multiprocessing as mp
    import os
    import signal

    acdc = benchmark_module("acdc_gpu")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = {"ok": ctx.Process(target=q.put, args=(("ok", {"test": {"dice": 0.9}}),)),
             "exit": ctx.Process(target=os._exit, args=(3,)),
             "killed": ctx.Process(target=os.abort)}  # dies by a signal (SIGABRT), as under the OOM killer's SIGKILL
    for p in procs.values():
        p.start()
    seen = []
    results = acdc._collect(procs, q, lambda name, code: seen.append((name, code)) or {"error": f"{name} {code}"},
                            poll_s=0.2)
    for p in procs.values():
        p.join()
    assert results["ok"] == {"test": {"dice": 0.9}}
    assert sorted(seen) == [("exit", 3), ("killed", -signal.SIGABRT)]
    assert results["exit"] == {"error": "exit 3"} and results["killed"] == {"error": f"killed {-signal.SIGABRT}"}


def test_a_lost_run_is_saved_as_failed_with_the_reason(tmp_path, benchmark_module, monkeypatch):
    acdc = benchmark_module("acdc_gpu")
    monkeypatch.setattr(acdc, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys.modules["_common"], "RESULTS", tmp_path / "results")
    res = acdc._lost_run("heteromedseg-a", "heteromedseg", -9, _args(tag="_ens", copy_to=None))
    saved = json.loads(Path(res["result_file"]).read_text())
    assert saved["error"] == ("the process of run 'heteromedseg-a' ended without a result: killed by signal 9 "
                              "(SIGKILL: out of memory?)") and saved["model"] == "heteromedseg"
    assert Path(res["result_file"]).parent == tmp_path / "results"
    other = acdc._lost_run("heteromedseg-b", "heteromedseg", 2, _args(tag="_ens", copy_to=None))
    assert other["error"].endswith("ended without a result: exit code 2")
