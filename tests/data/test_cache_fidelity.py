"""A cache gives what its source gives: the voxel spacing of the evaluation volumes (HD95 in mm, as on the nnU-Net
folder), the labels of a multi-class 2-D folder, a single-channel refusal made before any work, and a note (and a
warning when upsampling) when a cache is used at another size than it was stored at."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_nnunet import make_nnunet  # noqa: E402

from mambaseg.configs import RunConfig, apply_overrides  # noqa: E402
from mambaseg.data import FolderDataset2D  # noqa: E402
from mambaseg.data.cache import write_npz2d, write_volcache  # noqa: E402
from mambaseg.data.layouts import open_task, write_cache  # noqa: E402
from mambaseg.data.task import DataTaskError  # noqa: E402


def _cfg(size: int = 16, *extra: str) -> RunConfig:
    return apply_overrides(RunConfig(), [f"data.image_size=[{size},{size}]", "data.augment=false", *extra])


class _Threshold(torch.nn.Module):
    """Deterministic 3-class 'model' of 1-channel slices (no parameters to train)."""

    in_chans = 1

    def forward(self, x):
        return torch.cat([-x, 0 * x, x], dim=1)


# --------------------------------------------------------------------------------------- volcache: voxel spacing


def test_volcache_keeps_the_spacing_of_the_source_volumes(tmp_path):
    root = make_nnunet(tmp_path / "nn", n_cases=4)  # zooms (X, Y, Z) = (0.8, 0.9, 2.5) -> (D, H, W) (2.5, 0.9, 0.8)
    cache, _ = write_cache(root, (16, 16), tmp_path / "nn_16.npz")
    src, cached = (open_task(p, _cfg(), splits=("val",)) for p in (root, cache))
    assert len(cached.datasets["val"]) == len(src.datasets["val"]) >= 1
    for a, b in zip(src.datasets["val"], cached.datasets["val"]):
        assert a.spacing is not None and b.spacing == pytest.approx(a.spacing)
        assert b.spacing == pytest.approx((2.5, 0.9, 0.8))
    assert "spacing" not in cached.info  # nothing to say: the cache has what the source has
    from mambaseg.engine import EvalContext, open_data

    ctx = EvalContext(batch_size=4)
    r_src, r_c = (open_data(p, _cfg(), splits=("val",)) for p in (root, cache))
    m_src = r_src.evaluator.evaluate(_Threshold(), r_src.datasets["val"], ctx)
    m_c = r_c.evaluator.evaluate(_Threshold(), r_c.datasets["val"], ctx)
    assert m_src["hd95_units"] == m_c["hd95_units"] == "mm"


def test_volcache_of_a_source_without_spacing_stores_none(tmp_path):
    from test_acdc import make_acdc

    from mambaseg.data import ACDC_LABELS, acdc_volumes

    root = make_acdc(tmp_path / "acdc", n_train=2)
    cache = write_volcache(tmp_path / "c.npz", name="acdc", label_names=ACDC_LABELS, num_classes=4,
                           image_size=(16, 16), train=None, eval_splits={"val": acdc_volumes(root, "val")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the source has no spacing either: no warning
        task = open_task(cache, _cfg(), splits=("val",))
    assert all(v.spacing is None for v in task.datasets["val"]) and "spacing" not in task.info


def test_an_old_volcache_without_spacing_still_opens_and_says_so(tmp_path):
    root = make_nnunet(tmp_path / "nn", n_cases=4)
    cache, _ = write_cache(root, (16, 16), tmp_path / "new.npz")
    with np.load(cache, allow_pickle=False) as z:  # a cache written before the spacing was stored
        arrays = {k: z[k] for k in z.files if not k.endswith("_spacing")}
    old = tmp_path / "old.npz"
    np.savez_compressed(old, **arrays)
    with pytest.warns(RuntimeWarning, match=r"old\.npz.*no voxel spacing.*HD95.*voxels.*mambaseg cache"):
        task = open_task(old, _cfg(), splits=("val",))
    assert all(v.spacing is None for v in task.datasets["val"])
    assert "voxels" in task.info["spacing"] and "rebuild" in task.info["spacing"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # training slices only: no evaluation volume, no warning
        open_task(old, _cfg(), splits=("train",))


# --------------------------------------------------------------------------------------- volcache: channels


def test_a_multichannel_dataset_is_refused_before_any_slice_is_cached(tmp_path):
    root = make_nnunet(tmp_path / "nn2", channels=("T1", "T2"), n_cases=4)
    calls = []
    for splits in (["train"], None):
        out = tmp_path / "nn2.npz"
        with pytest.raises(DataTaskError, match=r"nn2: the nnunet dataset has 2 image channels.*single-channel"):
            write_cache(root, (16, 16), out, splits, progress=lambda *a: calls.append(a))
        assert not out.exists() and not calls  # refused up front, nothing cached or written
        assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".nn2.npz*"))


# --------------------------------------------------------------------------------------- npz2d: multi-class


def _folder(root: Path, mask: np.ndarray, counts: dict[str, int], seed: int, prefix: str) -> Path:
    """A 2-D folder dataset of random 20x24 RGB images that all share ``mask``."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{prefix}{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{prefix}{i}.png")
    return root


def _multiclass_folder(root: Path) -> Path:
    raw = np.zeros((20, 24), np.uint8)
    raw[2:9, 3:12], raw[10:18, 4:10], raw[5:15, 14:22] = 85, 170, 255
    return _folder(root, raw, {"train": 3, "val": 2}, seed=0, prefix="c")


def test_a_multiclass_folder_caches_with_its_label_mapping(tmp_path):
    root = _multiclass_folder(tmp_path / "mc")
    values = [0, 85, 170, 255]
    cache = write_npz2d(root, (16, 16), tmp_path / "mc.npz", binary=False, label_values=values)
    with np.load(cache, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["binary"] is False and meta["label_values"] == values and meta["num_classes"] == 4
    opts = ("data.binary=false", "data.label_values=[0,85,170,255]")
    folder = open_task(root, _cfg(16, *opts), splits=("train", "val"))
    cached = open_task(cache, _cfg(16), splits=("train", "val"))
    assert cached.label_map == folder.label_map and cached.num_classes == folder.num_classes == 4
    for split in ("train", "val"):
        ref = FolderDataset2D(root, split, image_size=16, augment=False, normalization=None, binary=False,
                              label_values=values)
        got = cached.datasets[split]
        assert len(got) == len(ref)
        for i in range(len(ref)):
            assert torch.equal(got[i]["mask"], ref[i]["mask"])
        assert set(np.unique(got.masks).tolist()) == {0, 1, 2, 3}


# --------------------------------------------------------------------------------------- npz2d: stored size


def _binary_folder(root: Path) -> Path:
    mask = np.zeros((20, 24), np.uint8)
    mask[4:12, 5:15] = 255
    return _folder(root, mask, {"train": 2, "val": 2}, seed=1, prefix="b")


def test_npz2d_used_at_another_size_says_so_and_warns_when_upsampling(tmp_path):
    cache = write_npz2d(_binary_folder(tmp_path / "b"), (16, 16), tmp_path / "b_16.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = open_task(cache, _cfg(16), splits=("train", "val"))
        down = open_task(cache, _cfg(8), splits=("train", "val"))
    assert same.info["cache_image_size"] == "(16, 16)"
    assert down.info["cache_image_size"] == "cache stored at (16, 16), resized to (8, 8)"
    with pytest.warns(RuntimeWarning, match=r"b_16\.npz.*stored at 16x16.*upsampled to 32x32.*--image-size 32"):
        up = open_task(cache, _cfg(32), splits=("train", "val"))
    assert up.info["cache_image_size"].startswith("cache stored at (16, 16), upsampled to (32, 32)")
    assert tuple(up.datasets["train"][0]["image"].shape[-2:]) == (32, 32)
