"""The training pre-check and evaluation on an nnU-Net raw dataset of two channels built from real ACDC volumes:
a channel file off channel 0's voxel grid is refused before the first step (naming both files), and a problem
message is listed whole (a case name in quotes keeps its closing quote)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from engine_helpers import tiny_config

from mambaseg.data import DatasetError
from mambaseg.engine import TrainHooks, evaluate_checkpoint, train
from mambaseg.engine import preflight

nib = pytest.importorskip("nibabel")
pytest.importorskip("h5py")

# the nnU-Net builders of the data tests (tests/ is not a package on CI's path)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_nnunet_channels import flip_channel, make_acdc_nnunet, rewrite  # noqa: E402

TRAIN, VAL = ("patient019_frame01", "patient019_frame02"), ("patient002_frame01", "patient002_frame02")


class _CountSteps(TrainHooks):
    def __init__(self) -> None:
        self.steps = 0

    def before_step(self, model, step):
        self.steps += 1


def _acdc(shared_data: Path, tmp_path: Path) -> Path:
    return make_acdc_nnunet(tmp_path / "Dataset027_ACDC", shared_data, TRAIN + VAL,
                            folds=[{"train": list(TRAIN), "val": list(VAL)}])


def _config(root: Path, out: Path, **overrides):
    sets = {"model.num_classes": None, "loss.name": "ce_dice", "train.best_metric": "dice", "data.validate": True,
            "train.epochs": 1, "train.max_steps": 1}
    sets.update(overrides)
    return tiny_config(root, out, **sets)


def _refused(cfg) -> str:
    hooks = _CountSteps()
    with pytest.raises(DatasetError) as exc:
        train(cfg, hooks=hooks, show_progress=False)
    out = Path(cfg.train.out)
    assert hooks.steps == 0 and (not out.exists() or not any(out.iterdir()))
    return str(exc.value)


def test_training_refuses_a_channel_with_a_flipped_axis_before_the_first_step(tiny_model, shared_data, tmp_path):
    root = _acdc(shared_data, tmp_path)
    flip_channel(root, "patient019_frame01")
    msg = _refused(_config(root, tmp_path / "run"))
    lines = msg.splitlines()
    assert "pre-flight check of" in lines[0] and "nothing was trained" in lines[0]
    f0, f1 = (root / "imagesTr" / f"patient019_frame01_{c:04d}.nii.gz" for c in (0, 1))
    assert lines[1].startswith(f"  - [train] {f1}: geometry of channel 1 (inverted) differs from channel 0 {f0} of "
                               "case 'patient019_frame01': axis directions (affine columns) [[-1.0, 0.0, 0.0], "), msg
    assert lines[1].endswith("(11 samples)") and len(lines) == 2, msg


def test_training_pre_check_keeps_the_closing_quote_of_a_case_name(tiny_model, shared_data, tmp_path):
    # the audit's message: a channel of another shape, met once per slice of the case's 11
    root = _acdc(shared_data, tmp_path)
    f = root / "imagesTr" / "patient019_frame01_0001.nii.gz"
    img = nib.load(str(f))
    rewrite(f, img.affine, data=np.asanyarray(img.dataobj)[:200])
    msg = _refused(_config(root, tmp_path / "run"))
    assert msg.splitlines()[1].endswith(" of case 'patient019_frame01' (11 samples)"), msg


def test_pre_check_lists_messages_whole_and_key_errors_without_their_quotes(monkeypatch):
    def read(i):
        if i == 0:
            raise DatasetError("imagesTr/a_0001.nii.gz: shape (2, 8, 8) differs from channel 0 (3, 8, 8) of case 'a'")
        if i == 1:
            raise KeyError("no dataset 'label' in b.h5")
        raise DatasetError("'quoted' at both ends 'c'")

    monkeypatch.setattr(preflight, "_readers", lambda ds: ("volume", read))
    with pytest.raises(DatasetError) as exc:
        preflight.check_samples({"val": [0, 1, 2]}, "DATA")
    assert str(exc.value).splitlines()[1:] == [
        "  - [val] imagesTr/a_0001.nii.gz: shape (2, 8, 8) differs from channel 0 (3, 8, 8) of case 'a'",
        "  - [val] no dataset 'label' in b.h5",
        "  - [val] 'quoted' at both ends 'c'"]


def test_evaluate_on_the_source_refuses_a_channel_of_another_spacing(tiny_model, shared_data, tmp_path):
    root = _acdc(shared_data, tmp_path)
    train(_config(root, tmp_path / "run"), show_progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert np.isfinite(evaluate_checkpoint(ckpt, root, device="cpu", show_progress=False)["dice"])
    f = root / "imagesTr" / "patient002_frame02_0001.nii.gz"
    aff = nib.load(str(f)).affine.copy()
    aff[0, 0] = 1.25  # the in-plane x spacing of channel 1 only
    rewrite(f, aff)
    with pytest.raises(DatasetError, match=r"patient002_frame02_0001\.nii\.gz: geometry of channel 1 \(inverted\) "
                                           r"differs from channel 0 .*patient002_frame02_0000\.nii\.gz of case "
                                           r"'patient002_frame02': voxel spacing \(D, H, W\) \(10, 1\.5, 1\.25\) vs "
                                           r"channel 0's \(10, 1\.5, 1\.5\)"):
        evaluate_checkpoint(ckpt, root, device="cpu", show_progress=False)
