"""metrics.json ``per_image`` rows hold ``None`` (``null`` in JSON), not NaN, where a metric is undefined."""

from __future__ import annotations

import json

import torch

from mambaseg.engine.evaluator import SegmentationEvaluator2D
from mambaseg.metrics import confusion_stats
from mambaseg.utils.files import atomic_write_json


def test_per_image_sensitivity_without_ground_truth_is_null(tmp_path):
    gt = torch.zeros(2, 8, 8, dtype=torch.long)
    gt[0, 2:5, 2:5] = 1  # image "a" has foreground; image "b" has none: its sensitivity is 0/0
    pred = gt.clone()
    result = SegmentationEvaluator2D(1).summarize(confusion_stats(pred, gt, 1), ids=["a", "b"])
    rows = {r["id"]: r for r in result["per_image"]}
    assert rows["a"]["sen"] == 1.0 and rows["b"]["sen"] is None and rows["b"]["spe"] == 1.0
    path = atomic_write_json(tmp_path / "metrics.json", result)

    def refuse(token: str):
        raise ValueError(token)

    assert json.loads(path.read_text(), parse_constant=refuse)["per_image"][1]["sen"] is None
