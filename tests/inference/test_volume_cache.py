"""The volcache layout (GPU-machine cache) reproduces the source task: same labels, near-identical evaluation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_acdc import make_acdc  # noqa: E402

from mambaseg.configs import RunConfig, apply_overrides  # noqa: E402
from mambaseg.data import ACDC_LABELS, acdc_slices, acdc_volumes  # noqa: E402
from mambaseg.data.volumetric import zoom_image, zoom_labels  # noqa: E402
from mambaseg.engine import EvalContext, open_data  # noqa: E402
from mambaseg.data.cache import write_volcache  # noqa: E402
from mambaseg.data.layouts import dataset_family  # noqa: E402


class Smooth(nn.Module):
    """Deterministic 4-class 'model': class = quantised blurred intensity."""

    in_chans = 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 9)
            self.conv.bias.copy_(torch.tensor([0.0, -0.3, -0.6, -0.9]))

    def forward(self, x):
        y = self.conv(x)
        return -(y**2)


def test_cache_roundtrip_and_evaluation(tmp_path: Path) -> None:
    root = make_acdc(tmp_path / "acdc", n_train=3)
    cache = write_volcache(
        tmp_path / "c.npz", name="acdc", label_names=ACDC_LABELS, num_classes=4, image_size=(32, 32),
        train=acdc_slices(root, image_size=32, augment=False, normalization=None),
        eval_splits={"val": acdc_volumes(root, "val"), "test": acdc_volumes(root, "test")},
    )
    assert dataset_family(cache) == "acdc" and dataset_family(root) == "acdc"
    cfg = apply_overrides(RunConfig(), ["data.image_size=[32,32]", "data.augment=false"])
    src = open_data(root, cfg, splits=("train", "val", "test"))
    cached = open_data(cache, cfg, splits=("train", "val", "test"))
    assert cached.name == "volcache" and cached.label_map == src.label_map == {
        "background": 0, "RV": 1, "Myo": 2, "LV": 3}
    a, b = src.datasets["train"][1], cached.datasets["train"][1]
    assert torch.equal(a["mask"], b["mask"]) and a["image"].shape == b["image"].shape
    # 8-bit quantisation (x2 by the (x - .5) / .5 normalisation); the cubic overshoot outside [0, 1] is clipped
    assert float((a["image"].clamp(-1, 1) - b["image"]).abs().max()) <= 1 / 255 + 1e-6
    vs, vc = src.datasets["val"][0], cached.datasets["val"][0]
    np.testing.assert_array_equal(vs.label, vc.label)
    assert vc.image.shape == (5, 32, 32) and vc.label_shape == vs.label.shape
    ref = zoom_image(vs.image[2][..., None], (32, 32))[..., 0]
    assert np.abs(np.clip(ref, 0, 1) - vc.image[2]).max() <= 0.5 / 255 + 1e-6
    model = Smooth()
    ctx = EvalContext(batch_size=4)
    r_src = src.evaluator.evaluate(model, src.datasets["test"], ctx)
    r_c = cached.evaluator.evaluate(model, cached.datasets["test"], ctx)
    assert r_src["n_volumes"] == r_c["n_volumes"] == 1
    for name in ("RV", "Myo", "LV"):
        assert abs(r_src["classes"][name]["dice"] - r_c["classes"][name]["dice"]) < 0.02
    assert zoom_labels(vs.label[0].astype(np.uint8), (32, 32)).shape == (32, 32)
    from rich.console import Console

    from mambaseg.engine.evaluator import volume_summary_table

    con = Console(width=160, record=True)
    con.print(volume_summary_table({**r_c, "best_epoch": 1}, tmp_path))
    text = con.export_text()
    assert "HD95 (voxels)" in text and "transunet" in text and "nan" in text and "Myo" in text
    import pickle

    for split in ("train", "val"):
        back = pickle.loads(pickle.dumps(cached.datasets[split]))
        assert len(back) == len(cached.datasets[split])
