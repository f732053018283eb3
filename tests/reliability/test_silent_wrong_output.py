"""Class 2, silent wrong output: NaN/inf inputs and weights, dishonest resume, empty masks, EXIF rotation,
unknown checkpoint versions, meaningless batch sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import acdc_config, checksums, cli, make_acdc
from engine_helpers import tiny_config

from mambaseg.checkpoint import CheckpointError, export_safetensors, load_checkpoint, save_checkpoint
from mambaseg.data import DatasetError
from mambaseg.engine import train


# ---------------------------------------------------------------- NaN / inf volumes


def _write_volume(path: Path, vol: np.ndarray) -> None:
    name = path.name
    if name.endswith(".npy"):
        np.save(path, vol)
    elif name.endswith(".npz"):
        np.savez(path, image=vol)
    elif name.endswith(".h5"):
        import h5py

        with h5py.File(path, "w") as f:
            f["image"] = vol
    else:
        nib = pytest.importorskip("nibabel")
        nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), str(path))


@pytest.mark.parametrize("name", ["case.npy", "case.npz", "case.h5", "case.nii.gz"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_predict_refuses_a_volume_with_non_finite_voxels(name, bad, trained, tmp_path):
    vol = np.random.default_rng(0).random((3, 20, 20)).astype(np.float32) * 500
    vol[1, 2:4, 5] = bad  # 2 bad voxels
    src = tmp_path / name
    _write_volume(src, vol)
    code, text = cli("predict", "-k", trained / "checkpoints" / "best.pt", "-i", src, "-o", tmp_path / "o")
    assert code == 1
    assert str(src) in text and "2 non-finite value(s)" in text
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_nan_in_a_validation_volume_fails_evaluate_naming_it(tmp_path):
    import h5py

    root = make_acdc(tmp_path / "acdc")
    train(acdc_config(root, tmp_path / "r"), show_progress=False)
    bad = root / "data" / "patient002_frame02.h5"
    with h5py.File(bad, "r+") as f:
        img = f["image"][()]
        img[0, 3, 3] = np.nan
        del f["image"]
        f["image"] = img
    from mambaseg.engine import evaluate_checkpoint

    with pytest.raises(DatasetError, match=r"patient002_frame02\.h5.*1 non-finite"):
        evaluate_checkpoint(tmp_path / "r" / "checkpoints" / "best.pt", str(root), split="val", device="cpu")


def test_nan_in_training_slices_is_named_before_training(tmp_path):
    import h5py

    root = make_acdc(tmp_path / "acdc")
    bad = root / "data" / "slices" / "patient001_frame01_slice_1.h5"
    with h5py.File(bad, "r+") as f:
        img = f["image"][()]
        img[:2, 0] = np.nan
        del f["image"]
        f["image"] = img
    with pytest.raises(DatasetError) as exc:
        train(acdc_config(root, tmp_path / "r"), show_progress=False)
    msg = str(exc.value)
    assert str(bad) in msg and "2 non-finite" in msg and "learning rate" not in msg
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_nan_input_batch_is_not_blamed_on_the_learning_rate(tmp_path):
    # without the pre-flight check (data.validate=false) the first step finds the NaN batch
    import h5py

    root = make_acdc(tmp_path / "acdc")
    for p in (root / "data" / "slices").iterdir():
        with h5py.File(p, "r+") as f:
            img = f["image"][()]
            img[0, 0] = np.nan
            del f["image"]
            f["image"] = img
    from mambaseg.data import acdc as acdc_mod

    orig = acdc_mod.require_finite
    acdc_mod.require_finite = lambda a, *x, **k: a  # simulate a reader without the check
    try:
        from mambaseg.engine import TrainingDiverged

        with pytest.raises(TrainingDiverged) as exc:
            train(acdc_config(root, tmp_path / "r", **{"data.validate": False}), show_progress=False)
    finally:
        acdc_mod.require_finite = orig
    assert "input batch" in str(exc.value) and "NaN/inf" in str(exc.value) and "Lower the learning" not in str(exc.value)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_checkpoint_with_non_finite_weights_is_refused(fmt, trained, tmp_path):
    ckpt = load_checkpoint(trained / "checkpoints" / "best.pt")
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][name] = ckpt["state_dict"][name].clone()
    ckpt["state_dict"][name].view(-1)[0] = float("nan")
    path = tmp_path / f"bad.{fmt}"
    save_checkpoint(path, ckpt) if fmt == "pt" else export_safetensors(path, ckpt)
    code, text = cli("predict", "-k", path, "-i", tmp_path, "-o", tmp_path / "o")
    assert code == 1 and str(path) in text and name in text and "NaN/inf" in text


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "option, value, field, stored",
    [
        ("--lr", "0.5", "optim.lr", "0.005"),
        ("--set", "optim.name=sgd", "optim.name", "'adamw'"),
        ("--batch-size", "2", "train.batch_size", "4"),
        ("--image-size", "48", "data.image_size", "[32, 32]"),
        ("--model", "vmunet_tiny", "model.name", "'_engine_test_tinyconv'"),
        ("--set", "loss.name=dice", "loss.name", "'bce_dice'"),
    ],
)
def test_resume_refuses_options_that_cannot_change(option, value, field, stored, run_copy):
    keep = checksums(run_copy / "config.yaml", run_copy / "checkpoints")
    code, text = cli("train", "--resume", "--out", run_copy, "--epochs", "2", option, value, "--no-progress")
    assert code == 1
    assert field in text and f"stored {stored}" in text and "cannot change" in text
    assert checksums(run_copy / "config.yaml", run_copy / "checkpoints") == keep


def test_resume_applies_and_records_options_that_may_change(run_copy):
    code, text = cli("train", "--resume", "--out", run_copy, "--epochs", "2", "--set", "train.log_every=3",
                     "--no-progress")
    assert code == 0, text
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert metrics["train"]["epochs"] == 2
    config = (run_copy / "config.yaml").read_text()
    assert "epochs: 2" in config and "log_every: 3" in config
    assert "resume: train.epochs (stored 1, given 2) applied" in (run_copy / "train.log").read_text()


# ---------------------------------------------------------------- empty masks, sensitivity


def test_all_empty_masks_warn_and_sensitivity_is_not_one(data_copy, tmp_path):
    for split in ("train", "val"):
        for m in (data_copy / split / "masks").iterdir():
            Image.fromarray(np.zeros(Image.open(m).size[::-1], np.uint8)).save(m)
    res = train(tiny_config(data_copy, tmp_path / "r", **{"train.epochs": 1, "data.validate": True}),
                show_progress=False)
    log = (tmp_path / "r" / "train.log").read_text()
    assert "background only" in log and "train split" in log and "val split" in log
    sen = res.metrics["pooled"]["sen"]
    assert sen is None or np.isnan(sen)  # undefined (0/0), never 1.0


# ---------------------------------------------------------------- EXIF orientation


def _exif_rotated(path: Path, display: np.ndarray, orientation: int = 6) -> None:
    """Store ``display`` rotated so that a viewer applying EXIF ``orientation`` shows ``display``."""
    stored = np.rot90(display, 1) if orientation == 6 else display  # 6 = rotate 90 CW to display
    img = Image.fromarray(np.ascontiguousarray(stored))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes(), **({"quality": 100} if path.suffix == ".jpg" else {}))


@pytest.mark.parametrize("shape", [(20, 32), (24, 24)], ids=["non_square", "square"])
def test_exif_orientation_is_applied_to_images_and_masks(shape, tmp_path):
    from mambaseg.data import read_image, read_mask

    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 3, : w // 4] = 255  # top-left block: any rotation moves it
    image = np.stack([mask] * 3, -1)
    _exif_rotated(tmp_path / "img.jpg", image)
    _exif_rotated(tmp_path / "mask.png", mask)
    img = read_image(tmp_path / "img.jpg")
    m = read_mask(tmp_path / "mask.png")
    assert img.shape[:2] == (h, w) and m.shape == (h, w)
    np.testing.assert_array_equal(m, mask)
    assert np.mean(np.abs(img[..., 0].astype(int) - mask.astype(int))) < 8  # JPEG noise only


# ---------------------------------------------------------------- versions, batch sizes


@pytest.mark.parametrize("version", [99, "1", -1])
def test_safetensors_with_unknown_or_bad_format_version_is_refused(version, trained, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = trained / "checkpoints" / "best.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["mambaseg"])
    info["format_version"] = version
    path = tmp_path / "future.safetensors"
    save_file(state, str(path), metadata={"mambaseg": json.dumps(info)})
    with pytest.raises(CheckpointError, match="future.safetensors.*format.version"):
        load_checkpoint(path)


@pytest.mark.parametrize("batch", ["0", "-1"])
def test_predict_batch_size_must_be_positive(batch, trained, syn_data, tmp_path):
    code, text = cli("predict", "-k", trained / "checkpoints" / "best.pt", "-i", syn_data / "val", "-o",
                     tmp_path / "o", "--batch-size", batch)
    assert code == 1 and "--batch-size" in text and batch in text
    assert not (tmp_path / "o").exists()


def test_predict_batch_sizes_lose_no_image(trained, syn_data, tmp_path):
    n = len(list((syn_data / "val" / "images").iterdir()))
    from mambaseg.inference import load

    pred = load(trained / "checkpoints" / "best.pt", device="cpu")
    for bs in (1, 2, 5):
        written = pred.predict_path(syn_data / "val", tmp_path / f"o{bs}", batch_size=bs)
        assert len(written) == n


def test_preflight_lists_a_repeated_problem_once_with_its_count(monkeypatch):
    # a volume-level problem is met once per slice: one line with the count, then the other problems
    from mambaseg.engine import preflight

    def read(i):
        if i < 11:
            raise DatasetError("labelsTr/case_007.nii.gz: label shape (4, 8, 8) differs from image shape (5, 8, 8)")
        if i == 11:
            raise DatasetError("imagesTr/case_008_0000.nii.gz: 3 non-finite voxel(s)")
        return "ok", np.ones((2, 2), np.int64)

    monkeypatch.setattr(preflight, "_readers", lambda ds: ("slice", read))
    with pytest.raises(DatasetError) as exc:
        preflight.check_samples({"train": list(range(13))}, "DATA")
    lines = str(exc.value).splitlines()
    assert "13 sample(s) read, 12 problem(s) (2 different)" in lines[0]
    assert lines[1:] == ["  - [train] labelsTr/case_007.nii.gz: label shape (4, 8, 8) differs from image shape "
                         "(5, 8, 8) (11 samples)", "  - [train] imagesTr/case_008_0000.nii.gz: 3 non-finite voxel(s)"]
