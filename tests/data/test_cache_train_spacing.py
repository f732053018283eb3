"""A volcache stores the voxel spacing of every training case at the cached grid (format ``mambaseg-volcache/2``), so
volumes rebuilt from its training slices (a cross-validation fold's held-out cases) are in mm like its cached
volumes; the spacing follows the resize the cache applies (``scipy.ndimage.zoom``, first and last pixel centres
kept: ``s * (n - 1) / (N - 1)``). Older caches still open, their rebuilt volumes without spacing."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mambaseg.configs import RunConfig, apply_overrides  # noqa: E402
from mambaseg.data.cache import VOLCACHE_FORMAT, write_volcache  # noqa: E402
from mambaseg.data.layouts import open_task, write_cache  # noqa: E402
from mambaseg.data.task import DataTaskError  # noqa: E402
from mambaseg.data.volumetric import SliceDataset2D, volumes_from_slices, zoom_image, zoom_spacing  # noqa: E402

SIZE = (64, 64)
#: real ACDC volumes of four in-plane sizes, none of them the cache's, each given its own (D, H, W) spacing in mm
REAL = {"patient082_frame01": (10.0, 1.5625, 1.5625), "patient085_frame01": (5.0, 1.25, 1.37),
        "patient087_frame01": (10.0, 1.8, 1.7), "patient002_frame01": (6.5, 1.40625, 1.40625)}
TRAIN, VAL = list(REAL)[:3], list(REAL)[3:]


def _cfg(*extra: str) -> RunConfig:
    return apply_overrides(RunConfig(), [f"data.image_size=[{SIZE[0]},{SIZE[1]}]", "data.augment=false", *extra])


@pytest.fixture(scope="module")
def acdc_nifti(shared_data, tmp_path_factory):
    """An nnU-Net raw folder of four real ACDC volumes (MRI, min-max scaled) with the spacings of :data:`REAL`;
    fold 0 of its splits_final.json trains on :data:`TRAIN` and validates on :data:`VAL`."""
    h5py = pytest.importorskip("h5py")
    nib = pytest.importorskip("nibabel")
    acdc = shared_data / "acdc" / "data"
    if not acdc.is_dir():
        pytest.skip("../shared/data/acdc is not available")
    root = tmp_path_factory.mktemp("acdc_nifti")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    for case, (sd, sh, sw) in REAL.items():
        with h5py.File(acdc / f"{case}.h5") as f:
            image, label = np.asarray(f["image"], np.float32), np.asarray(f["label"], np.uint8)
        aff = np.diag([sw, sh, sd, 1.0])  # NIfTI (X, Y, Z) = the library's (W, H, D)
        for arr, out in ((image, root / "imagesTr" / f"{case}_0000.nii.gz"), (label, root / "labelsTr" /
                                                                             f"{case}.nii.gz")):
            nib.save(nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), aff), str(out))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "RV": 1, "Myo": 2, "LV": 3},
        "numTraining": len(REAL), "file_ending": ".nii.gz"}))
    (root / "splits_final.json").write_text(json.dumps([{"train": TRAIN, "val": VAL}]))
    return root


@pytest.fixture(scope="module")
def acdc_cache(acdc_nifti, tmp_path_factory):
    cache, counts = write_cache(acdc_nifti, SIZE, tmp_path_factory.mktemp("cache") / "acdc64.npz")
    assert counts == {"train": sum(_source(acdc_nifti, c)[0].shape[0] for c in TRAIN), "val": 1}
    return cache


def _source(root: Path, case: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(D, H, W) labels and (D, H, W) spacing of a case, read here with nibabel from its label file."""
    import nibabel as nib

    img = nib.load(str(root / "labelsTr" / f"{case}.nii.gz"))
    zx, zy, zz = (float(z) for z in img.header.get_zooms()[:3])
    return np.asarray(img.dataobj).transpose(2, 1, 0), (zz, zy, zx)


def test_zoom_spacing_is_the_grid_the_cache_resizes_to():
    """The in-plane spacing after the cache's zoom is read off the zoom itself: a ramp of physical positions (mm)
    zoomed linearly steps by exactly zoom_spacing, s * (n - 1) / (N - 1), not s * n / N."""
    for (h, w), size in (((154, 224), SIZE), ((288, 184), SIZE), ((184, 256), (48, 40)), ((20, 24), (32, 32))):
        sp = (7.0, 1.25, 1.37)
        got = zoom_spacing(sp, (h, w), size)
        rows = zoom_image(np.repeat(np.arange(h, dtype=np.float32)[:, None] * sp[1], w, 1), size, order=1)
        cols = zoom_image(np.repeat(np.arange(w, dtype=np.float32)[None, :] * sp[2], h, 0), size, order=1)
        assert got[0] == sp[0]  # depth is not resized
        assert np.diff(rows[:, 0]) == pytest.approx(got[1], rel=1e-5)
        assert np.diff(cols[0]) == pytest.approx(got[2], rel=1e-5)
        assert got[1] != pytest.approx(sp[1] * h / size[0], rel=1e-4)
    assert zoom_spacing((2.0, 1.0, 1.0), (64, 64), SIZE) == (2.0, 1.0, 1.0)  # not resized: as it was
    assert zoom_spacing(None, (20, 24), SIZE) is None


def test_the_cache_stores_each_training_case_spacing_scaled_by_the_resize(acdc_nifti, acdc_cache):
    with np.load(acdc_cache, allow_pickle=False) as z:
        meta = json.loads(str(z["vol_meta"]))
        cases, spacing = [str(c) for c in z["train_case_ids"]], z["train_case_spacing"]
        val_spacing = z["val_spacing"]
    assert meta["format"] == VOLCACHE_FORMAT == "mambaseg-volcache/2" and "train_case_spacing" in meta["train_spacing"]
    assert cases == TRAIN and spacing.shape == (3, 3)
    H, W = SIZE
    for case, row in zip(cases, spacing):
        label, (sd, sh, sw) = _source(acdc_nifti, case)
        h, w = label.shape[1:]
        assert (h, w) != SIZE
        assert row == pytest.approx((sd, sh * (h - 1) / (H - 1), sw * (w - 1) / (W - 1)), rel=1e-6)
        assert (sd, sh, sw) == pytest.approx(REAL[case], rel=1e-6)
    assert val_spacing.shape == (1, 3)  # the cached volume keeps the source's (its labels are not resized)
    assert val_spacing[0] == pytest.approx(REAL[VAL[0]], rel=1e-6)


def test_volumes_rebuilt_from_the_cached_slices_are_in_mm(acdc_nifti, acdc_cache, tmp_path):
    """A fold holding out the training cases rebuilds them from the cached 64x64 slices with the stored spacing:
    each structure's in-plane centre (mm from the first voxel centre) is where the source puts it, within one source
    pixel (with s * h / H for the spacing, 1.6 to 2.8 mm off on these volumes)."""
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": VAL, "val": TRAIN}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cache with every spacing: nothing to warn about
        task = open_task(acdc_cache, _cfg(f"data.split_file={split}"), splits=("train", "val"))
    assert task.datasets["val"].ids == TRAIN
    for vol in task.datasets["val"]:
        label, source_spacing = _source(acdc_nifti, vol.id)
        assert vol.source_format == "slices" and vol.label.shape == (label.shape[0], *SIZE)
        assert vol.spacing == pytest.approx(zoom_spacing(source_spacing, label.shape[1:], SIZE), rel=1e-6)
        for k in (1, 2, 3):
            src = np.argwhere(label == k).mean(0)[1:] * source_spacing[1:]
            got = np.argwhere(vol.label == k).mean(0)[1:] * np.asarray(vol.spacing[1:])
            assert got == pytest.approx(src, abs=max(source_spacing[1:]))
    # the fold trains on the cached val volume's slices, at the cached grid; the source's slices have the source's
    hw = _source(acdc_nifti, VAL[0])[0].shape[1:]
    assert task.datasets["train"].spacing_of(0) == pytest.approx(zoom_spacing(REAL[VAL[0]], hw, SIZE), rel=1e-6)
    src_train = open_task(acdc_nifti, _cfg(), splits=("train",)).datasets["train"]
    assert src_train.spacing_of(0) == pytest.approx(REAL[TRAIN[0]], rel=1e-6)


def test_an_old_format_cache_still_opens_and_an_unknown_one_is_refused(acdc_cache, tmp_path):
    with np.load(acdc_cache, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("train_case_")}
    meta = json.loads(str(arrays["vol_meta"]))
    meta["format"] = "mambaseg-volcache/1"
    arrays["vol_meta"] = np.asarray(json.dumps(meta))
    old = tmp_path / "old.npz"
    np.savez_compressed(old, **arrays)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": TRAIN[1:] + VAL, "val": TRAIN[:1]}))
    task = open_task(old, _cfg(f"data.split_file={split}"), splits=("train", "val"))
    (vol,) = list(task.datasets["val"])
    assert vol.spacing is None and task.datasets["train"].spacing_of(0) is None  # as before: in voxels
    meta["format"] = "mambaseg-volcache/9"
    arrays["vol_meta"] = np.asarray(json.dumps(meta))
    np.savez_compressed(tmp_path / "new.npz", **arrays)
    with pytest.raises(DataTaskError, match=r"new\.npz: cache format 'mambaseg-volcache/9'.*volcache/1.*volcache/2"):
        open_task(tmp_path / "new.npz", _cfg(), splits=("val",))


def test_a_source_without_spacing_stores_nan_rows_and_rebuilds_without(tmp_path):
    from test_acdc import make_acdc

    from mambaseg.data import ACDC_LABELS, acdc_slices, acdc_volumes

    root = make_acdc(tmp_path / "acdc", n_train=3)
    slices = acdc_slices(root, image_size=16, augment=False, normalization=None)
    assert slices.spacing_of(0) is None  # ACDC h5 files store no spacing
    cache = write_volcache(tmp_path / "c.npz", name="acdc", label_names=ACDC_LABELS, num_classes=4,
                           image_size=(16, 16), train=slices, eval_splits={"val": acdc_volumes(root, "val")})
    with np.load(cache, allow_pickle=False) as z:
        assert z["train_case_spacing"].shape == (1, 3) and np.isnan(z["train_case_spacing"]).all()
    cached = open_task(cache, apply_overrides(RunConfig(), ["data.image_size=[16,16]"]), splits=("train",))
    (case,) = {n.rsplit("_slice", 1)[0] for n in cached.datasets["train"].ids}
    assert volumes_from_slices(cached.datasets["train"], [case])[0].spacing is None


class _Loader:
    """Slices of one case ``c`` of two pixels, with a spacing per slice."""

    def __init__(self, spacings):
        self.spacings = spacings

    def __call__(self, i):
        return np.zeros((2, 2), np.float32), np.zeros((2, 2), np.int64)

    def spacing(self, i):
        return self.spacings[i]


@pytest.mark.parametrize("spacings, want", [([(2.0, 1.0, 1.0)] * 2, (2.0, 1.0, 1.0)),
                                            ([(2.0, 1.0, 1.0), (2.0, 1.0, 1.5)], None),
                                            ([(2.0, 1.0, 1.0), None], None)])
def test_a_rebuilt_volume_has_the_one_spacing_of_its_slices(spacings, want):
    ds = SliceDataset2D(["c_slice0", "c_slice1"], _Loader(spacings), image_size=2, augment=False, num_classes=2,
                        label_names={1: "x"}, normalization=None)
    assert volumes_from_slices(ds, ["c"])[0].spacing == want
