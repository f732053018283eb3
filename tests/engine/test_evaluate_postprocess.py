"""Post-processing inside evaluation: 2-D evaluator and slice-wise volume evaluator against hand counts, and the
evaluate_checkpoint / CLI wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine_helpers import tiny_config
from mambaseg.engine import train
from mambaseg.engine.evaluate import evaluate_checkpoint
from mambaseg.engine.evaluator import EvalContext, SegmentationEvaluator2D, SlicewiseVolumeEvaluator


class Echo(torch.nn.Module):
    """Logits = image channel 0 (binary) or [-x, x] (two classes)."""

    def __init__(self, two: bool = False) -> None:
        super().__init__()
        self.two = two
        self.in_chans = 1 if two else 3

    def forward(self, x):
        return torch.cat([-x[:, :1], x[:, :1]], 1) if self.two else x[:, :1]


def _blobs(h=8, w=8):
    """Logit image with a 3x3 blob (the lesion) and a stray pixel; ground truth = the blob."""
    lg = -torch.ones(h, w) * 5
    lg[1:4, 1:4] = 5
    lg[6, 6] = 5
    gt = torch.zeros(h, w, dtype=torch.long)
    gt[1:4, 1:4] = 1
    return lg, gt


def test_2d_evaluator_post_processes_before_counting():
    lg, gt = _blobs()
    ds = [{"image": lg[None].repeat(3, 1, 1), "mask": gt, "id": "c0"}]
    ev = SegmentationEvaluator2D(1)
    plain = ev.evaluate(Echo(), ds, EvalContext(batch_size=1))
    assert plain["dice"] == pytest.approx(2 * 9 / (2 * 9 + 1))  # TP 9, FP 1 (the stray pixel)
    pp = ev.evaluate(Echo(), ds, EvalContext(batch_size=1, postprocess=("largest_component",)))
    assert pp["dice"] == pytest.approx(1.0)


def test_volume_evaluator_post_processes_each_volume():
    from mambaseg.data.volumetric import Volume

    lg, gt = _blobs()
    image = np.stack([lg.numpy()] * 3).astype(np.float32)  # (D, H, W): the blob is a 3x3x3 block
    image[0, 6, 6] = -5  # the stray voxel only in slices 1 and 2
    label = np.stack([gt.numpy()] * 3).astype(np.int64)
    vol = Volume(id="v0", image=image, label=label, spacing=(1.0, 1.0, 1.0))
    ev = SlicewiseVolumeEvaluator({1: "lesion"}, 2, image_size=(8, 8))
    plain = ev.evaluate(Echo(two=True), [vol], EvalContext(batch_size=3))
    assert plain["dice"] == pytest.approx(2 * 27 / (2 * 27 + 2))  # 2 stray voxels
    pp = ev.evaluate(Echo(two=True), [vol], EvalContext(batch_size=3, postprocess=("largest_component",)))
    assert pp["dice"] == pytest.approx(1.0)


def test_evaluate_checkpoint_and_cli_take_postprocess(tiny_model, synthetic_data, tmp_path):
    from typer.testing import CliRunner

    from mambaseg.cli import app
    from mambaseg.cli._common import state

    train(tiny_config(synthetic_data, tmp_path / "r", **{"train.epochs": 1}))
    best = tmp_path / "r" / "checkpoints" / "best.pt"
    plain = evaluate_checkpoint(best, synthetic_data, device="cpu")
    pp = evaluate_checkpoint(best, synthetic_data, device="cpu", postprocess="largest_component,fill_holes")
    assert pp["postprocess"] == ["largest_component", "fill_holes"] and "postprocess" not in plain
    with pytest.raises(ValueError, match="post-processing"):
        evaluate_checkpoint(best, synthetic_data, device="cpu", postprocess="biggest")
    state.debug = False
    res = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(best), "--data", str(synthetic_data), "--device",
                                   "cpu", "--postprocess", "largest_component", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["postprocess"] == ["largest_component"]
