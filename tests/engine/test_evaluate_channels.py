"""Evaluating a checkpoint on volumes of another channel count names the case and its file, and the checkpoint's
and the dataset's channels."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nibabel")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_nnunet import make_nnunet  # noqa: E402


def _ct_checkpoint(path: Path, data: Path) -> Path:
    """A one-channel (CT) nnU-Net checkpoint of a tiny vmunet with 3 classes."""
    from mambaseg.checkpoint import save_checkpoint
    from mambaseg.configs import RunConfig, config_to_dict
    from mambaseg.models import create_model

    torch.manual_seed(0)
    model = create_model("vmunet_tiny", num_classes=3, in_chans=1)
    cfg = RunConfig()
    cfg.data.path, cfg.data.image_size = str(data), [32, 32]
    return save_checkpoint(path, {
        "model": model.mambaseg_spec, "state_dict": model.state_dict(), "image_size": [32, 32],
        "config": config_to_dict(cfg), "normalization": {"mean": [0.5], "std": [0.5]},
        "label_map": {"background": 0, "liver": 1, "tumour": 2},
        "task": {"layout": "nnunet", "num_classes": 3, "in_chans": 1, "channel_names": ["CT"],
                 "evaluator": "volume_slicewise"}})


def test_evaluate_names_both_sides_channels_and_the_case(tmp_path):
    from typer.testing import CliRunner

    from mambaseg.cli import app
    from mambaseg.cli._common import state

    state.debug = False
    one = make_nnunet(tmp_path / "ct", channels=("CT",), n_cases=4)
    two = make_nnunet(tmp_path / "ct_t2", channels=("CT", "T2"), n_cases=4)
    ckpt = _ct_checkpoint(tmp_path / "best.pt", one)
    res = CliRunner().invoke(app, ["evaluate", "-k", str(ckpt), "--data", str(two), "--device", "cpu"])
    assert res.exit_code == 1
    words = " ".join(res.output.split())
    assert f"{ckpt} takes 1 channel: CT (trained on {one})" in words
    assert f"the nnunet dataset {two} has 2 channels: CT, T2" in words
    assert "e.g. val case 'case_" in words and "_0000.nii.gz" in words and str(two / "imagesTr") in words
    # the dataset it was trained on evaluates
    res = CliRunner().invoke(app, ["evaluate", "-k", str(ckpt), "--device", "cpu"])
    assert res.exit_code == 0, res.output


def test_the_volume_evaluator_names_the_case_and_its_file():
    from mambaseg.data.volumetric import Volume
    from mambaseg.engine.evaluator import EvalContext, SlicewiseVolumeEvaluator
    from mambaseg.models import create_model

    model = create_model("vmunet_tiny", num_classes=3, in_chans=1)
    vol = Volume(id="case_007", image=np.zeros((2, 3, 16, 16), np.float32), label=np.zeros((3, 16, 16), np.int64),
                 path="/data/imagesTr/case_007_0000.nii.gz")
    ev = SlicewiseVolumeEvaluator({1: "liver", 2: "tumour"}, 3, image_size=(32, 32))
    with pytest.raises(ValueError, match=r"volume 'case_007' \(/data/imagesTr/case_007_0000.nii.gz\) has 2 "
                                         r"channel\(s\) but the model takes 1"):
        ev.evaluate(model, [vol], EvalContext())
