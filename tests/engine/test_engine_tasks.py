"""Data tasks: layout detection/registration, the folder and npz-cache layouts, the 2-D evaluator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine_helpers import tiny_config
from mambaseg.configs import RunConfig, apply_overrides
from mambaseg.engine import (
    DataTaskError,
    EvalContext,
    SegmentationEvaluator2D,
    detect_layout,
    list_layouts,
    open_data,
    register_layout,
    train,
)
from mambaseg.data import layouts as tasks_mod
from mambaseg.data.cache import write_npz2d

REPO = Path(__file__).resolve().parents[2]


def _cfg(**sets):
    return apply_overrides(RunConfig(), {"data.image_size": [32, 32], "data.validate": False, **sets})


def test_folder_layout(synthetic_data):
    assert detect_layout(synthetic_data) == "folder2d"
    train_ds, val_ds, evaluator, label_map = open_data(synthetic_data, _cfg())
    assert len(train_ds) == 8 and len(val_ds) == 4 and label_map == {"background": 0, "foreground": 255}
    item = train_ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].dtype == torch.int64 and isinstance(evaluator, SegmentationEvaluator2D)
    task = open_data(synthetic_data, _cfg(), splits=("val",), normalization=open_data(synthetic_data, _cfg()).normalization)
    assert list(task.datasets) == ["val"]
    with pytest.raises(DataTaskError, match="normalisation must be given"):
        open_data(synthetic_data, _cfg(), splits=("val",))


def test_carved_validation_split(tmp_path):
    from mambaseg.data import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "d", n_train=10, n_val=1, size=(32, 32), seed=0)
    import shutil

    shutil.rmtree(root / "val")
    task = open_data(root, _cfg(**{"data.val_fraction": 0.3}))
    tr, va = task.datasets["train"], task.datasets["val"]
    assert len(tr) + len(va) == 10 and len(va) == 3 and not set(tr.ids) & set(va.ids)
    assert Path(task.info["split_file"]).is_file()
    again = open_data(root, _cfg(**{"data.val_fraction": 0.3}))
    assert again.datasets["val"].ids == va.ids


def test_layout_errors_and_registration(tmp_path):
    with pytest.raises(DataTaskError, match="does not exist"):
        open_data(tmp_path / "nope", _cfg())
    with pytest.raises(DataTaskError, match="no dataset given"):
        open_data(None, _cfg())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataTaskError, match="cannot recognise"):
        open_data(tmp_path / "empty", _cfg())
    with pytest.raises(DataTaskError, match="unknown data layout"):
        open_data(tmp_path / "empty", _cfg(**{"data.layout": "zzz"}))

    marker = tmp_path / "custom"
    marker.mkdir()
    (marker / "MARK").write_text("")
    seen = {}

    @register_layout("_test_custom", detect=lambda p: (p / "MARK").is_file(), priority=100)
    def _open(root, cfg, *, splits, normalization):
        seen["args"] = (root, splits, normalization)
        return tasks_mod.DataTask(name="_test_custom", datasets={s: [] for s in splits},
                                  evaluator=SegmentationEvaluator2D(1), label_map={"bg": 0, "fg": 1},
                                  num_classes=1, in_chans=1)

    try:
        assert list_layouts()[0] == "_test_custom"
        task = open_data(marker, _cfg())
        assert task.name == "_test_custom" and seen["args"][1] == ("train", "val")
        with pytest.raises(ValueError, match="registered twice"):
            register_layout("_test_custom", detect=lambda p: False)(_open)
    finally:
        tasks_mod._LAYOUTS.pop("_test_custom", None)


def test_npz_cache_round_trip(tiny_model, synthetic_data, tmp_path):
    cache = write_npz2d(synthetic_data, (32, 32), tmp_path / "c" / "syn_32.npz")
    assert detect_layout(cache) == "npz2d"
    folder = open_data(synthetic_data, _cfg(**{"data.augment": False}))
    npz = open_data(cache, _cfg(**{"data.augment": False}))
    assert npz.label_map == folder.label_map and npz.num_classes == 1 and npz.in_chans == 3
    np.testing.assert_allclose(npz.normalization.mean, folder.normalization.mean, atol=1e-9)
    for s in ("train", "val"):
        a, b = folder.datasets[s], npz.datasets[s]
        assert list(a.ids) == list(b.ids)
        for i in range(len(a)):
            torch.testing.assert_close(b[i]["image"], a[i]["image"])
            assert torch.equal(b[i]["mask"], a[i]["mask"])
            assert b[i]["orig_size"] == a[i]["orig_size"]
    res = train(tiny_config(cache, tmp_path / "run", **{"train.epochs": 1}))
    assert res.metrics["data"]["layout"] == "npz2d" and 0 <= res.metrics["dice"] <= 1


def test_evaluator_matches_hand_counts():
    ev = SegmentationEvaluator2D(1)

    class Echo(torch.nn.Module):
        def forward(self, x):  # logits = image channel 0
            return x[:, :1]

    ds = []
    masks = [torch.tensor([[1, 1], [0, 0]]), torch.tensor([[0, 0], [0, 0]])]
    logits = [torch.tensor([[5.0, -5.0], [5.0, -5.0]]), torch.tensor([[-5.0, -5.0], [-5.0, -5.0]])]
    for i, (m, lg) in enumerate(zip(masks, logits)):
        ds.append({"image": lg[None].repeat(3, 1, 1), "mask": m, "id": f"c{i}"})
    out = ev.evaluate(Echo(), ds, EvalContext(batch_size=1))
    # pooled: TP 1, FP 1, FN 1, TN 5 -> DSC 2/4, IoU 1/3; per case: 0.5 and 1.0 (empty GT, empty prediction)
    assert out["dice"] == pytest.approx(0.5) and out["iou"] == pytest.approx(1 / 3)
    assert out["per_case_dice"] == pytest.approx(0.75) and out["n_images"] == 2
    assert out["pooled"]["acc"] == pytest.approx(6 / 8)
