"""The mambaseg command line: verbs, train/evaluate/predict on real data, resume, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mambaseg.cli import app

runner = CliRunner()
VERBS = ("demo", "train", "evaluate", "predict", "models", "doctor", "score")
SMALL = ["--set", "model.kwargs.dims=8", "--set", "model.kwargs.d_state=2"]



def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _error_line(result) -> str:
    text = (result.stderr if result.stderr else result.output).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("error: "), text
    assert "Traceback" not in result.output
    return lines[0]


def test_help_lists_every_verb():
    res = _run("--help")
    assert res.exit_code == 0
    for verb in VERBS:
        assert verb in res.output
    proc = subprocess.run([sys.executable, "-m", "mambaseg", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and all(v in proc.stdout for v in VERBS)
    train_help = _run("train", "--help").output
    for opt in ("--model", "--data", "--epochs", "--max-steps", "--batch-size", "--image-size", "--lr", "--seed",
                "--out", "--device", "--resume", "--config", "--arch"):
        assert opt in train_help, opt
    for verb, opts in (("evaluate", ("--checkpoint", "--data", "--split", "--out")),
                       ("predict", ("--checkpoint", "--input", "--out"))):
        h = _run(verb, "--help").output
        assert all(o in h for o in opts), verb


def test_models_json_and_table():
    res = _run("models", "vmunet*", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    names = {r["name"]: r for r in rows}
    assert {"vmunet", "vmunet_tiny"} <= set(names)
    assert all({"name", "params", "paper"} <= set(r) for r in rows)
    assert names["vmunet_tiny"]["params"] < 2_000_000
    assert abs(names["vmunet"]["params"] - 27.43e6) / 27.43e6 < 0.01
    assert "vmunet_tiny" in _run("models", "vmunet_t*").output
    res = _run("models", "tiny")  # no name equals it: an error with the way out, not an empty table
    text = " ".join(res.output.split())
    assert res.exit_code != 0 and "no registered model matches 'tiny'" in text and "'*tiny*'" in text, text
    assert "vmunet_tiny" in _run("models", "*tiny*").output


def test_doctor_reports_backends():
    res = _run("doctor", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["torch"] == torch.__version__
    assert {"ref", "torch", "triton"} <= set(info["scan_backends"])
    assert {"ref", "torch", "cpu_fused", "triton"} <= set(info["scan_backends"])
    cpu_auto = "cpu_fused" if info["scan_backends"]["cpu_fused"]["available"] else "torch"
    assert info["auto_backend_cpu"].startswith(cpu_auto)  # the CPU backend that runs, and why
    res = _run("doctor")
    assert res.exit_code == 0 and "scan backend" in res.output


def test_doctor_says_when_the_requested_backend_cannot_run(monkeypatch):
    # mamba_ssm runs on CUDA tensors only: requested on a CPU, every scan call raises; doctor must say so
    monkeypatch.setenv("MAMBASEG_SCAN_BACKEND", "mamba_ssm")
    info = json.loads(_run("doctor", "--json").output)
    assert "CANNOT RUN" in info["auto_backend_cpu"] and "mamba_ssm" in info["auto_backend_cpu"]
    assert any("cannot run on CPU tensors" in f and "MAMBASEG_SCAN_BACKEND" in f for f in info["fixes"])
    text = " ".join(_run("doctor").output.split())
    assert "CANNOT RUN" in text and "cannot run on CPU tensors" in text
    monkeypatch.setenv("MAMBASEG_SCAN_BACKEND", "torch")  # one that runs: no such fix
    info = json.loads(_run("doctor", "--json").output)
    assert info["auto_backend_cpu"].startswith("torch (requested by environment")
    assert not any("cannot run on" in f for f in info["fixes"])


def _train_evaluate_predict(data, tmp_path, *train_args):
    run = tmp_path / "RUN"
    res = _run("train", "--model", "vmunet_tiny", "--data", data, "--epochs", 1, "--image-size", 64,
               "--out", run, "--device", "cpu", "--no-progress", *train_args)
    assert res.exit_code == 0, res.output
    for name in ("config.yaml", "metrics.json", "history.json", "progress.png", "train.log",
                 "checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/best.safetensors"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_images"] == 20 and 0 <= metrics["dice"] <= 1
    assert metrics["dice"] == metrics["pooled"]["dsc"]
    assert "per_case" in metrics and "pooled" in metrics

    ev = tmp_path / "EV"
    res = _run("evaluate", "--checkpoint", run / "checkpoints" / "best.pt", "--data", data, "--out", ev,
               "--device", "cpu")
    assert res.exit_code == 0, res.output
    em = json.loads((ev / "metrics.json").read_text())
    for key in ("dice", "iou", "per_case_dice", "n_images"):
        assert em[key] == metrics[key], key
    assert em["pooled"] == metrics["pooled"] and em["per_case"] == metrics["per_case"]

    pred = tmp_path / "PRED"
    res = _run("predict", "--checkpoint", run / "checkpoints" / "best.safetensors", "--input", data / "val" / "images",
               "--out", pred, "--device", "cpu")
    assert res.exit_code == 0, res.output
    images = sorted((data / "val" / "images").iterdir())
    masks = sorted((pred / "masks").glob("*.png"))
    assert len(masks) == len(images) == 20
    for img_path in images[:5]:
        w, h = Image.open(img_path).size
        m = np.asarray(Image.open(pred / "masks" / f"{img_path.stem}.png"))
        assert m.shape == (h, w) and set(np.unique(m)) <= {0, 255}
        assert (pred / "overlays" / f"{img_path.stem}.png").is_file()


def test_train_evaluate_predict_on_ph2(shared_data, tmp_path):
    # one epoch at 64x64 on the real PH2 images; a narrower vmunet_tiny keeps it to seconds of CPU
    _train_evaluate_predict(shared_data / "ph2_dev", tmp_path, "--batch-size", 8, *SMALL)


@pytest.mark.slow
def test_train_evaluate_predict_on_ph2_must_show_command(shared_data, tmp_path):
    # exactly the documented command (minutes of CPU)
    _train_evaluate_predict(shared_data / "ph2_dev", tmp_path, "--batch-size", 2)


def test_resume_and_overwrite_protection(tmp_path):
    from mambaseg.data import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "syn", n_train=4, n_val=2, size=(32, 32), seed=0)
    run = tmp_path / "run"
    base = ["train", "--model", "vmunet_tiny", "--data", data, "--image-size", "32", "--batch-size", 4,
            "--out", run, "--device", "cpu", "--no-progress", *SMALL]
    assert _run(*base, "--epochs", 1).exit_code == 0
    bad_size = _run("train", "--model", "vmunet_tiny", "--data", data, "--image-size", "40", "--out", tmp_path / "bad",
                    "--device", "cpu", "--no-progress", *SMALL)
    assert "--image-size 32,32" in _error_line(bad_size)
    line = _error_line(_run(*base, "--epochs", 1))
    assert "--resume" in line
    res = _run("train", "--out", run, "--resume", "--epochs", 2, "--no-progress")
    assert res.exit_code == 0, res.output
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["config"]["model"]["kwargs"]["dims"] == 8
    # a run's config.yaml is a valid --config: same data and model, new run directory
    res = _run("train", "--config", run / "config.yaml", "--out", tmp_path / "run2", "--max-steps", 1, "--no-progress")
    assert res.exit_code == 0, res.output
    ck2 = torch.load(tmp_path / "run2" / "checkpoints" / "last.pt", weights_only=True)
    assert ck2["step"] == 1 and ck2["config"]["data"]["path"] == str(data) and ck2["model"]["kwargs"]["dims"] == 8


def test_build_config_precedence(tmp_path):
    from mambaseg.cli.train import build_config

    arch = tmp_path / "arch.json"
    arch.write_text('{"genes": [0, 1, 2]}')
    cfg = build_config(recipe="vmunet_ph2", data="d", epochs=3, lr=0.01, image_size="192,256", arch=str(arch),
                       overrides=["optim.lr=0.02", "train.seed=7"], seed=5)
    assert cfg.model.name == "vmunet" and cfg.train.epochs == 3 and cfg.data.image_size == [192, 256]
    assert cfg.optim.lr == 0.02 and cfg.train.seed == 7  # --set wins over the explicit options
    assert cfg.model.arch == {"genes": [0, 1, 2]} and cfg.schedule.t_max == 50
    assert cfg.train.compile is False
    assert build_config(recipe="vmunet_ph2", data="d", compile_model=True).train.compile is True
    # --set still wins over the flag
    assert build_config(recipe="vmunet_ph2", data="d", compile_model=True,
                        overrides=["train.compile=false"]).train.compile is False


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--model", "vmunet_tiny", "--data", "/nonexistent/data", "--device", "cpu"], "does not exist"),
        (["train", "--model", "no_such_model", "--data", "{data}", "--device", "cpu", "--out", "{tmp}/r"],
         "unknown model"),
        (["train", "--data", "{data}", "--image-size", "abc"], "--image-size"),
        (["train", "--data", "{data}", "--set", "train.epoch=3"], "train.epoch"),
        (["train", "--data", "{data}", "--arch", "{tmp}/missing.json"], "--arch"),
        (["evaluate", "--checkpoint", "{tmp}/missing.pt"], "does not exist"),
        (["predict", "--checkpoint", "{tmp}/missing.pt", "--input", "{data}", "--out", "{tmp}/p"], "does not exist"),
        (["train", "--resume", "--out", "{tmp}/none"], "cannot resume"),
    ],
)
def test_errors_print_one_line_and_fail(args, needle, tmp_path):
    data = tmp_path / "data"
    (data / "train" / "images").mkdir(parents=True)
    args = [a.format(data=data, tmp=tmp_path) for a in args]
    res = _run(*args)
    assert res.exit_code != 0
    assert needle in _error_line(res)


def test_debug_shows_the_traceback(tmp_path):
    res = _run("--debug", "evaluate", "--checkpoint", tmp_path / "missing.pt")
    assert res.exit_code != 0 and res.exception is not None and not isinstance(res.exception, SystemExit)
    proc = subprocess.run([sys.executable, "-m", "mambaseg", "evaluate", "--checkpoint", str(tmp_path / "x.pt"),
                           "--debug"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_demo_fast_variant(tmp_path):
    out = tmp_path / "demo"
    res = _run("demo", "--out", out, "--epochs", 1, "--n-train", 8, "--n-val", 4, "--no-progress")
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["dice"] <= 1.0 and (out / "data" / "train" / "images").is_dir()
    assert "validation Dice" in res.output
    assert m["train"]["stop_reason"] in ("completed",) or "reached the demo's target" in m["train"]["stop_reason"]
    verdict = "reached" if m["dice"] >= 0.85 else "below"  # the default --target-dice, not a fixed 0.8
    assert f"{verdict} the 0.85 target" in " ".join(res.output.split())


def test_demo_stops_on_its_target_never_on_time(tmp_path):
    out = tmp_path / "demo"
    res = _run("demo", "--out", out, "--epochs", 3, "--n-train", 8, "--n-val", 4, "--no-progress",
               "--target-dice", 0.0, "--threads", 1)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["epochs"] == 1 and "reached the demo's target 0" in m["train"]["stop_reason"]
    assert "reached the 0 target" in " ".join(res.output.split())  # the verdict names the target it was given
    assert "--budget" not in _run("demo", "--help").output


@pytest.mark.slow
def test_demo_reaches_target_dice(tmp_path):
    # the full demo (a few minutes of CPU); the 300 s limit is for an otherwise idle 2-core machine
    import time

    t0 = time.perf_counter()
    res = _run("demo", "--out", tmp_path / "demo", "--no-progress")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert m["dice"] >= 0.8, (m["dice"], time.perf_counter() - t0)
