from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mambaseg.data import FolderDataset2D, make_synthetic_dataset, validate_dataset
from mambaseg.data.synthetic import synthetic_sample
from mambaseg.metrics import MetricAccumulator


def test_layout_values_and_determinism(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", n_train=6, n_val=3, size=(40, 48), seed=5)
    rep = validate_dataset(a)
    assert rep.ok and rep.checked == {"train": 6, "val": 3}
    img = np.asarray(Image.open(a / "train/images/syn_0000.png"))
    mask = np.asarray(Image.open(a / "train/masks/syn_0000.png"))
    assert img.shape == (40, 48, 3) and img.dtype == np.uint8
    assert mask.shape == (40, 48) and set(np.unique(mask).tolist()) == {0, 255}
    assert json.loads((a / "dataset.json").read_text())["seed"] == 5
    b = make_synthetic_dataset(tmp_path / "b", n_train=2, n_val=3, size=(40, 48), seed=5)
    for split, name in (("train", "syn_0001"), ("val", "syn_0002")):
        for sub in ("images", "masks"):
            pa, pb = a / split / sub / f"{name}.png", b / split / sub / f"{name}.png"
            np.testing.assert_array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))
    c = make_synthetic_dataset(tmp_path / "c", n_train=1, n_val=1, size=(40, 48), seed=6)
    assert not np.array_equal(
        np.asarray(Image.open(a / "val/images/syn_0000.png")), np.asarray(Image.open(c / "val/images/syn_0000.png"))
    )
    with pytest.raises(ValueError, match="n_train"):
        make_synthetic_dataset(tmp_path / "d", n_train=0)


def test_foreground_fraction_and_contrast():
    fracs, gaps = [], []
    for i in range(20):
        img, mask = synthetic_sample((64, 64), np.random.default_rng([0, i]))
        fg = mask > 0
        fracs.append(fg.mean())
        grey = img.astype(float).mean(-1)
        gaps.append(grey[~fg].mean() - grey[fg].mean())
    assert min(fracs) > 0.01 and max(fracs) < 0.7
    assert min(gaps) > 20  # lesions are darker than the background on average


def test_learnable_by_a_simple_rule(tmp_path):
    # A grey-level threshold after a 5x5 box blur already separates the classes well, so a small network
    # learns the task quickly; the per-pixel noise makes the same rule without spatial context worse.
    from scipy.ndimage import uniform_filter

    root = make_synthetic_dataset(tmp_path, n_train=1, n_val=12, size=(64, 64), seed=0)
    ds = FolderDataset2D(root, "val", image_size=64, augment=False, normalization=None)
    x = np.stack([ds[i]["image"].numpy().mean(0) for i in range(len(ds))])
    y = np.stack([ds[i]["mask"].numpy() for i in range(len(ds))]).astype(bool)

    def best_dice(src):
        return max(2 * ((src < t) & y).sum() / ((src < t).sum() + y.sum()) for t in np.linspace(0.1, 0.9, 81))

    raw, blurred = best_dice(x), best_dice(uniform_filter(x, (1, 5, 5)))
    assert blurred > 0.9
    assert raw < blurred


@pytest.mark.slow
def test_small_cnn_learns_it(tmp_path):
    from mambaseg.losses import create_loss
    from mambaseg.metrics import labels_from_logits

    root = make_synthetic_dataset(tmp_path, n_train=64, n_val=16, size=(64, 64))
    tr = FolderDataset2D(root, "train", image_size=64, augment=False, normalization=None)
    va = FolderDataset2D(root, "val", image_size=64, augment=False, normalization=None)
    x = torch.stack([tr[i]["image"] for i in range(len(tr))])
    y = torch.stack([tr[i]["mask"] for i in range(len(tr))])
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 1, 3, padding=1),
    )
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    loss = create_loss("bce_dice")
    for _ in range(60):
        idx = torch.randint(0, len(tr), (16,))
        value = loss(net(x[idx]), y[idx])
        opt.zero_grad()
        value.backward()
        opt.step()
    acc = MetricAccumulator(1)
    with torch.no_grad():
        acc.update(labels_from_logits(net(torch.stack([va[i]["image"] for i in range(len(va))]))),
                   torch.stack([va[i]["mask"] for i in range(len(va))]))
    assert acc.compute("pooled")["dsc"] > 0.8
