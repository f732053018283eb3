"""Defaults that follow the data and the run: the loss from the detected task, the cosine over ``--epochs``."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from mambaseg.cli import app
from mambaseg.configs import RunConfig
from mambaseg.engine.optim import schedule_factor
from mambaseg.losses import resolve_loss_name

# the volumetric fixtures of the data tests (tests/ is not a package on CI's path)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))

runner = CliRunner()
TINY = ["--model", "vmunet_tiny", "--set", "model.kwargs.dims=8", "--set", "model.kwargs.d_state=2",
        "--max-steps", "1", "--epochs", "1", "--batch-size", "2", "--no-progress", "--threads", "1"]


def _train(tmp_path: Path, data: Path, *extra: str):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY, *extra])
    assert res.exit_code == 0, res.output
    return yaml.safe_load((out / "config.yaml").read_text())


def test_loss_auto_resolution():
    assert RunConfig().loss.name == "auto"
    assert resolve_loss_name("auto", 1) == "bce_dice" and resolve_loss_name("auto", 4) == "ce_dice"
    assert resolve_loss_name("boundary", 4) == "boundary"


def test_acdc_folder_trains_with_no_set(tmp_path):
    from test_acdc import make_acdc

    cfg = _train(tmp_path, make_acdc(tmp_path / "acdc"), "--image-size", "32")
    assert cfg["loss"]["name"] == "ce_dice"


def test_nnunet_folder_trains_with_no_set(tmp_path):
    from test_nnunet import make_nnunet

    root = make_nnunet(tmp_path / "Dataset001_Toy", n_cases=3)
    cfg = _train(tmp_path, root, "--image-size", "32")
    assert cfg["loss"]["name"] == "ce_dice"


def test_binary_folder_keeps_bce_dice(tmp_path):
    from mambaseg.data import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "syn", n_train=4, n_val=2, size=(32, 32), seed=0)
    cfg = _train(tmp_path, Path(data), "--image-size", "32")
    assert cfg["loss"]["name"] == "bce_dice"


def test_default_cosine_follows_epochs():
    """Without a recipe the cosine spans the run: it reaches eta_min at the last epoch of 3 and of 300 epochs,
    and never rises again inside the run."""
    sched = RunConfig().schedule
    assert sched.name == "cosine" and sched.t_max is None
    for epochs in (3, 300):
        f = schedule_factor(sched, 1e-3, epochs)
        lrs = [f(t) * 1e-3 for t in range(epochs + 1)]
        assert math.isclose(lrs[0], 1e-3) and math.isclose(lrs[epochs], sched.eta_min, rel_tol=1e-6)
        assert all(b <= a + 1e-15 for a, b in zip(lrs, lrs[1:]))


def test_train_schedule_follows_epochs_option(tmp_path):
    """`mambaseg train --epochs 3` without a recipe: the learning rate of the last epoch is near eta_min."""
    import json

    from mambaseg.data import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "syn", n_train=2, n_val=2, size=(32, 32), seed=0)
    out = tmp_path / "run3"
    args = list(TINY)
    del args[args.index("--max-steps"):args.index("--max-steps") + 2]
    args[args.index("--epochs") + 1] = "3"
    res = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), "--image-size", "32", *args])
    assert res.exit_code == 0, res.output
    hist = json.loads((out / "history.json").read_text())
    lrs = [h["lr"] for h in (hist["epochs"] if isinstance(hist, dict) else hist)]
    assert len(lrs) == 3 and lrs[0] > lrs[1] > lrs[2]
    assert lrs[2] < 0.3 * lrs[0]  # a 3-epoch run decays (with t_max 50 it would still be at 99.5 %)
