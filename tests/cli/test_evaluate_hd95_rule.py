"""HD95 headlines of ``evaluate``, ``score`` and ``train`` on the same predictions: one empty-mask rule by default
(TransUNet's, the papers'), named on every summary line with the number of cases it decided."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_acdc import make_acdc  # noqa: E402

from mambaseg.cli import app  # noqa: E402
from mambaseg.cli.evaluate import summary_line  # noqa: E402

runner = CliRunner()


def _constant_checkpoint(path: Path, data: Path, cls: int) -> Path:
    """A 1-channel, 4-class vmunet_tiny checkpoint (ACDC) that predicts class ``cls`` on every pixel."""
    from mambaseg.checkpoint import save_checkpoint
    from mambaseg.configs import RunConfig, config_to_dict
    from mambaseg.models import create_model

    torch.manual_seed(0)
    model = create_model("vmunet_tiny", num_classes=4, in_chans=1)
    sd = model.state_dict()
    sd["final_conv.weight"].zero_()
    sd["final_conv.bias"].copy_(torch.tensor([0.0, 0.0, 0.0, 0.0]).index_fill_(0, torch.tensor(cls), 10.0))
    cfg = RunConfig()
    cfg.data.path, cfg.data.image_size = str(data), [32, 32]
    return save_checkpoint(path, {
        "model": model.mambaseg_spec, "state_dict": sd, "image_size": [32, 32], "config": config_to_dict(cfg),
        "normalization": {"mean": [0.5], "std": [0.5]}, "epoch": 1,
        "label_map": {"background": 0, "RV": 1, "Myo": 2, "LV": 3},
        "task": {"layout": "acdc", "num_classes": 4, "in_chans": 1, "evaluator": "volume_slicewise"}})


def test_evaluate_and_score_give_one_hd95_and_name_the_rule(tmp_path):
    data = make_acdc(tmp_path / "acdc", n_train=2)
    ckpt = _constant_checkpoint(tmp_path / "rv.pt", data, cls=1)  # RV everywhere: Myo and LV never predicted
    res = runner.invoke(app, ["evaluate", "-k", str(ckpt), "--out", str(tmp_path / "ev"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["empty_policy"] == "transunet" and m["empty_masks"]["empty_pred"] == 4
    line = " ".join(res.output.split())
    assert (f"mean hd95 {m['hd95']:.2f} voxels (TransUNet rule: 4 of 6 volume-class pairs with an empty prediction "
            "count 0 (in 2 of 2 volumes))") in line

    # the same volumes predicted to files and scored: the same number under the same (default) rule
    gt = tmp_path / "gt"
    gt.mkdir()
    for v in ("patient002_frame01", "patient002_frame02"):
        shutil.copy(data / "data" / f"{v}.h5", gt / f"{v}.h5")
    res = runner.invoke(app, ["predict", "-k", str(ckpt), "--input", str(gt), "--out", str(tmp_path / "pred"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["score", str(tmp_path / "pred"), str(gt), "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["conventions"]["empty_policy"] == "transunet"
    assert s["hd95"] == pytest.approx(m["hd95"], rel=1e-6) and s["per_case_dice"] == pytest.approx(m["dice"], rel=1e-6)
    line = " ".join(res.output.split())
    assert f"HD95 {s['hd95']:.2f}" in line
    assert "TransUNet rule: 4 of 6 case-class pairs with an empty prediction count 0 (in 2 of 2 cases)" in line
    # the nnU-Net/MONAI rule stays selectable, and says what it did
    res = runner.invoke(app, ["score", str(tmp_path / "pred"), str(gt), "--empty-policy", "nan"])
    assert res.exit_code == 0, res.output
    line = " ".join(res.output.split())
    assert "HD95 inf" in line and "nan rule: 4 of 6 case-class pairs with an empty prediction count inf" in line


def test_all_empty_predictions_say_so_beside_hd95_zero(tmp_path):
    from mambaseg.engine.evaluator import SlicewiseVolumeEvaluator
    from mambaseg.metrics.volume import VolumeEvaluator
    import numpy as np

    gt = np.zeros((2, 8, 8), np.int64)
    gt[:, 2:6, 2:6] = 1
    ev = VolumeEvaluator({1: "fg"}, 2)
    for i in range(5):
        ev.add(f"v{i}", np.zeros_like(gt), gt, (1.0, 1.0, 1.0))
    result = SlicewiseVolumeEvaluator({1: "fg"}, 2, image_size=(8, 8)).summarize(ev)
    assert summary_line("test", result) == ("test: mean dice 0.0000  mean hd95 0.00 mm (TransUNet rule: 5 of 5 volumes "
                                            "with an empty prediction count 0)  (fg 0.0000)  (5 volumes)")
    # training's epoch line (the evaluator's headline) counts them beside hd95
    head = SlicewiseVolumeEvaluator({1: "fg"}, 2, image_size=(8, 8)).headline(result)
    assert head["hd95"] == 0.0 and head["hd95_n_by_transunet_rule"] == 5.0


def test_train_prints_the_best_validation_with_its_rule(tmp_path):
    data = make_acdc(tmp_path / "acdc", n_train=2)
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--model", "vmunet_tiny", "--data", str(data), "--epochs", "1", "--max-steps",
                              "1", "--batch-size", "2", "--image-size", "32", "--out", str(run), "--device", "cpu",
                              "--no-progress", "--set", "loss.name=ce_dice"])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "metrics.json").read_text())
    line = " ".join(res.output.split())
    assert " ".join(summary_line("best val (epoch 1)", m).split()) in line and "(TransUNet rule" in line
    decided = sum(m["empty_masks"][k] for k in ("empty_pred", "empty_gt", "both_empty"))
    assert ("val hd95_n_by_transunet_rule" in line) == (decided > 0 and isinstance(m["hd95"], float))


def test_epoch_line_prints_the_rule_count_as_an_integer():
    from mambaseg.engine.trainer import _epoch_line

    line = _epoch_line({"epoch": 3, "step": 30, "train_loss": 0.5, "lr": 1e-3, "time": 1.0,
                        "val": {"dice": 0.5, "hd95": 7.29, "hd95_n_by_transunet_rule": 2.0}}, 10)
    assert "val hd95 7.2900 val hd95_n_by_transunet_rule 2 " in line + " " and "2.0000" not in line
