from __future__ import annotations

import numpy as np
import pytest
import torch

from mambaseg.data import FolderDataset2D, Normalization, compute_normalization, make_synthetic_dataset
from mambaseg.data.normalization import ChannelStats


def test_roundtrip_and_validation():
    n = Normalization(mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 1.0))
    assert Normalization.from_dict(n.to_dict()) == n
    assert n.to_dict() == {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 1.0]}
    x = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(n.apply(x), (x - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 1.0]), atol=1e-6)
    np.testing.assert_allclose(n.invert(n.apply(x)), x, atol=1e-6)
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        Normalization((0.0,), (0.0,))
    with pytest.raises(ValueError, match="equal length"):
        Normalization((0.0, 1.0), (1.0,))
    with pytest.raises(ValueError, match="missing key 'std'"):
        Normalization.from_dict({"mean": [0.5]})
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        n.apply(np.zeros((4, 4, 1), np.float32))


def test_channel_stats_is_chunking_invariant():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=(1000, 3)) * np.array([1.0, 10.0, 0.1])
    s = ChannelStats(3)
    for chunk in np.array_split(x, [7, 100, 101, 600]):
        s.update(chunk)
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.std, x.std(0), rtol=1e-12)
    with pytest.raises(ValueError, match="no pixels"):
        ChannelStats(2).std


def test_compute_normalization_matches_numpy_on_resized_images(tmp_path):
    root = make_synthetic_dataset(tmp_path, n_train=5, n_val=1, size=(30, 40), seed=2)
    ds = FolderDataset2D(root, "train", image_size=(16, 20), augment=True, normalization=None)
    norm = compute_normalization(ds)
    eval_ds = FolderDataset2D(root, "train", image_size=(16, 20), augment=False, normalization=None)
    x = torch.stack([eval_ds[i]["image"] for i in range(len(eval_ds))]).double().numpy()
    np.testing.assert_allclose(norm.mean, x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(norm.std, x.std(axis=(0, 2, 3)), rtol=1e-5)
    # the generic path (any dataset of {"image": (C, H, W)} dicts in [0, 1] units) agrees
    generic = [{"image": eval_ds[i]["image"]} for i in range(len(eval_ds))]
    g = compute_normalization(generic)
    np.testing.assert_allclose(g.mean, norm.mean, rtol=1e-6)
    np.testing.assert_allclose(g.std, norm.std, rtol=1e-5)


def test_compute_normalization_edge_cases():
    with pytest.raises(ValueError, match="empty"):
        compute_normalization([])
    const = [{"image": torch.full((1, 4, 4), 0.5)}]
    n = compute_normalization(const, min_std=1e-3)
    assert n.mean == (0.5,) and n.std == (1e-3,)
