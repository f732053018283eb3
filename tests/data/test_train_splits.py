"""``data.train_splits``: the slices of evaluation volumes join the training slices (volumetric layouts only)."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_acdc import make_acdc  # noqa: E402

from mambaseg.configs import RunConfig, apply_overrides  # noqa: E402
from mambaseg.data import ACDC_LABELS, acdc_slices, acdc_volumes  # noqa: E402
from mambaseg.data.cache import write_volcache  # noqa: E402
from mambaseg.data.layouts import open_task  # noqa: E402
from mambaseg.data.task import DataTaskError  # noqa: E402
from mambaseg.data.volumetric import zoom_image, zoom_labels  # noqa: E402


def _cfg(*extra: str) -> RunConfig:
    return apply_overrides(RunConfig(), ["data.image_size=[32,32]", "data.augment=false", *extra])


def test_the_val_volumes_slices_train_beside_the_training_slices(tmp_path):
    root = make_acdc(tmp_path / "acdc", n_train=4)  # 4 training slices; val = 2 volumes of 5 slices
    plain = open_task(root, _cfg(), splits=("train", "val"))
    both = open_task(root, _cfg("data.train_splits=[train,val]"), splits=("train", "val"))
    assert len(plain.train) == 4 and len(both.train) == 4 + 2 * 5
    assert both.train.ids[:4] == plain.train.ids and both.train.ids[4] == "val/patient002_frame01#0"
    assert both.info["n_train_slices_added"] == 10 and "in-sample" in both.info["in_sample_validation"]
    assert len(both.val) == 2  # still evaluated on (in-sample, as the info says)
    for i in range(4):  # the training slices are untouched
        assert torch.equal(both.train[i]["image"], plain.train[i]["image"])
    # slice z=3 of the second val volume, read straight from its h5 file, resized and normalised as training does
    with h5py.File(root / "data" / "patient002_frame02.h5") as f:
        img, lab = f["image"][3], f["label"][3]
    item = both.train[4 + 5 + 3]
    assert item["id"] == "val/patient002_frame02#3" and item["path"].endswith("patient002_frame02.h5#z=3")
    np.testing.assert_allclose(item["image"][0].numpy(), (zoom_image(img[..., None], (32, 32))[..., 0] - 0.5) / 0.5,
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(item["mask"], torch.from_numpy(zoom_labels(lab, (32, 32)).astype(np.int64)))


def test_the_volcache_adds_the_same_slices_as_the_source_layout(tmp_path):
    root = make_acdc(tmp_path / "acdc", n_train=3)
    cache = write_volcache(
        tmp_path / "c.npz", name="acdc", label_names=ACDC_LABELS, num_classes=4, image_size=(32, 32),
        train=acdc_slices(root, image_size=32, augment=False, normalization=None),
        eval_splits={"val": acdc_volumes(root, "val"), "test": acdc_volumes(root, "test")})
    cfg = _cfg("data.train_splits=[train,val,test]")
    src, cached = (open_task(p, cfg, splits=("train",)) for p in (root, cache))
    assert list(cached.datasets) == ["train"]  # val and test were opened to train, not handed on
    assert len(src.train) == len(cached.train) == 3 + 2 * 5 + 5 and src.train.ids == cached.train.ids
    for i in range(3, len(src.train)):
        a, b = src.train[i], cached.train[i]
        # the cache keeps the labels at their original size: they are zoomed like the cache's training slices
        assert torch.equal(a["mask"], b["mask"]), src.train.ids[i]
        assert float((a["image"].clamp(-1, 1) - b["image"]).abs().max()) <= 2 / 255 + 1e-6  # 8-bit cache


def test_augmented_extra_slices_are_seeded_like_the_rest(tmp_path):
    root = make_acdc(tmp_path / "acdc")
    cfg = apply_overrides(RunConfig(), ["data.image_size=[32,32]", "data.train_splits=[train,val]"])
    a, b = (open_task(root, cfg, splits=("train",)).train for _ in range(2))
    a.seed = b.seed = 5
    for i in range(4, len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        assert set(x["mask"].unique().tolist()) <= {0, 1, 2, 3}


def test_bad_train_splits_are_refused_by_name(tmp_path):
    root = make_acdc(tmp_path / "acdc")
    for bad in ("[val]", "[train,train]"):
        with pytest.raises(DataTaskError, match=r"data.train_splits must name 'train'"):
            open_task(root, _cfg(f"data.train_splits={bad}"), splits=("train", "val"))
    with pytest.raises(DataTaskError, match=r"did not provide the split\(s\) \['nope'\]|nope"):
        open_task(root, _cfg("data.train_splits=[train,nope]"), splits=("train",))
    # evaluation alone (no training split) does not open or check the extra splits
    assert list(open_task(root, _cfg("data.train_splits=[train,nope]"), splits=("val",)).datasets) == ["val"]
    folder = tmp_path / "f"
    for split in ("train", "val"):
        for name in ("a", "b"):
            for sub, arr in (("images", np.zeros((8, 8, 3), np.uint8)), ("masks", np.zeros((8, 8), np.uint8))):
                (folder / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(folder / split / sub / f"{name}.png")
    with pytest.raises(DataTaskError, match=r"layout 'folder2d' is not volumetric.*--folds"):
        open_task(folder, _cfg("data.train_splits=[train,val]"), splits=("train", "val"))


def test_real_acdc_train_plus_val(shared_data):
    root = shared_data / "acdc"
    if not root.is_dir():
        pytest.skip("acdc not in shared data")
    task = open_task(root, _cfg("data.train_splits=[train,val]"), splits=("train", "val"))
    n_val_slices = sum(v.spatial_shape[0] for v in task.val)
    assert len(task.train) == 658 + n_val_slices and task.info["n_train_slices_added"] == n_val_slices
    item = task.train[len(task.train) - 1]
    assert item["image"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0, 1, 2, 3}


@pytest.mark.parametrize("layout, extra", [("synapse", "test"), ("nnunet", "val")])
def test_other_volumetric_layouts_add_their_evaluation_volumes_too(tmp_path, layout, extra):
    if layout == "nnunet":
        pytest.importorskip("nibabel")
        from test_nnunet import make_nnunet as make
    else:
        from test_synapse import make_synapse as make
    root = make(tmp_path / layout)
    plain = open_task(root, _cfg(), splits=("train", extra))
    both = open_task(root, _cfg(f"data.train_splits=[train,{extra}]"), splits=("train",))
    n_added = sum(v.spatial_shape[0] for v in plain.datasets[extra])
    assert len(both.train) == len(plain.train) + n_added and both.info["n_train_slices_added"] == n_added
    assert both.train.ids[-1].startswith(f"{extra}/") and both.train[len(both.train) - 1]["mask"].shape == (32, 32)


def test_an_extra_volume_without_labels_is_refused_by_name(tmp_path):
    from mambaseg.data.volumetric import Volume, VolumeDataset, join_volume_slices

    root = make_acdc(tmp_path / "acdc")
    train = open_task(root, _cfg(), splits=("train",)).train
    unlabelled = VolumeDataset(["case9"], lambda i: Volume(id="case9", image=np.zeros((3, 8, 8), np.float32),
                                                           path="/data/case9.nii.gz"),
                               label_names=ACDC_LABELS, num_classes=4)
    with pytest.raises(ValueError, match=r"'test' case 'case9' \(/data/case9.nii.gz\) has no labels"):
        join_volume_slices(train, {"test": unlabelled})
