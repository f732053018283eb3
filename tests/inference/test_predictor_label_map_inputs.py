"""The Predictor's default label map of multi-class models, the refusal of a label map of the wrong size, and the
messages for inputs of the wrong layout (tensors (H, W, C), arrays (C, H, W), lists), on real PH2 images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mambaseg
from mambaseg.checkpoint import CheckpointError, save_checkpoint
from mambaseg.data.folder2d import folder_label_map
from mambaseg.inference import Predictor
from mambaseg.inference.predictor import default_label_map

PH2 = ("IMD002", "IMD020")  # val images of ph2_dev


@pytest.fixture(scope="module")
def ph2(shared_data: Path) -> list[Path]:
    files = [shared_data / "ph2_dev" / "val" / "images" / f"{i}.jpg" for i in PH2]
    for f in files:
        if not f.is_file():
            pytest.skip(f"{f} not found")
    return files


def _model(num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return mambaseg.create_model("vmunet_tiny", num_classes=num_classes, dims=8, d_state=2)


def test_multiclass_default_label_map_is_the_class_indices(tmp_path: Path, ph2: list[Path]) -> None:
    pred = Predictor(_model(3), image_size=(64, 64), device="cpu")
    # the names a multi-class folder run records in its checkpoint, the class indices as pixel values
    assert pred.label_map == {"background": 0, "class_1": 1, "class_2": 2}
    assert pred.label_map == folder_label_map(False, [0, 1, 2])[0] == default_label_map(3)
    np.testing.assert_array_equal(pred.to_pixel_values(np.array([[0, 1, 2]])), np.array([[0, 1, 2]], np.uint8))
    # the folder prediction writes each mask's class indices (it used to fail after creating the output folder)
    (tmp_path / "imgs").mkdir()
    for f in ph2:
        (tmp_path / "imgs" / f.name).write_bytes(f.read_bytes())
    written = pred.predict_folder(tmp_path / "imgs", tmp_path / "out")
    assert [p.name for p in written] == [f"{i}.png" for i in PH2]
    for f in ph2:
        saved = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{f.stem}.png"))
        np.testing.assert_array_equal(saved, pred.predict(f))
    # binary (one output channel) keeps 0/255
    assert Predictor(_model(1), image_size=(64, 64), device="cpu").label_map == {"background": 0, "foreground": 255}


@pytest.mark.parametrize(("num_classes", "label_map", "entries", "what"), [
    (3, {"background": 0, "foreground": 255}, 2, "3 classes"),
    (4, {"background": 0, "a": 1, "b": 2}, 3, "4 classes"),
    (1, {"background": 0, "a": 1, "b": 2}, 3, "1 output channel"),
])
def test_label_map_of_another_size_is_refused(num_classes: int, label_map: dict, entries: int, what: str) -> None:
    with pytest.raises(ValueError, match=rf"label map .* has {entries} entries but the model predicts {what}"):
        Predictor(_model(num_classes), image_size=(64, 64), label_map=label_map, device="cpu")


def test_checkpoint_with_label_map_of_another_size_names_the_file(tmp_path: Path) -> None:
    model = _model(3)
    ckpt = save_checkpoint(tmp_path / "best.pt", {"model": model.mambaseg_spec, "state_dict": model.state_dict(),
                                                  "image_size": [32, 32], "label_map": {"background": 0, "fg": 255}})
    with pytest.raises(CheckpointError, match=r"best\.pt: the label map .* has 2 entries but the model predicts 3"):
        mambaseg.load(ckpt, device="cpu")
    # without a label map: the class indices
    save_checkpoint(tmp_path / "nolm.pt", {"model": model.mambaseg_spec, "state_dict": model.state_dict(),
                                           "image_size": [32, 32]})
    assert mambaseg.load(tmp_path / "nolm.pt", device="cpu").label_map == default_label_map(3)


def test_wrong_input_layouts_name_the_shape_and_the_layout(ph2: list[Path]) -> None:
    pred = Predictor(_model(1), image_size=(64, 64), device="cpu")
    hwc = np.array(Image.open(ph2[0]).convert("RGB"))
    h, w = hwc.shape[:2]
    mask = pred.predict(hwc)
    np.testing.assert_array_equal(pred.predict(torch.from_numpy(hwc).permute(2, 0, 1)), mask)  # the right layouts
    with pytest.raises(ValueError, match=rf"tensor of shape \({h}, {w}, 3\) has {h} along its first axis: tensors "
                                         r"must be \(C, H, W\)"):
        pred.predict(torch.from_numpy(hwc))
    with pytest.raises(ValueError, match=rf"array of shape \(3, {h}, {w}\) has {w} along its last axis: numpy arrays "
                                         r"must be \(H, W\) or \(H, W, C\)"):
        pred.predict(np.ascontiguousarray(hwc.transpose(2, 0, 1)))
    for batch in ([hwc], [ph2[0], ph2[1]], (str(ph2[0]),)):
        with pytest.raises(TypeError, match=r"one image is a path \(str or Path\), an \(H, W\) or \(H, W, C\) numpy "
                                            r"array .*, a PIL image or a \(C, H, W\) torch tensor; got a "
                                            rf"{type(batch).__name__} of {len(batch)} item\(s\) \(predict_batch"):
            pred.predict(batch)
    # lists of images still go to predict_batch
    assert all(np.array_equal(m, mask) for m in pred.predict_batch([hwc, ph2[0]]))
