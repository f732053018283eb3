"""The exported ONNX file describes how to use it without torch: ``mambaseg.*`` metadata_props (JSON values), read
with onnxruntime and applied to a real image, reproduce the PyTorch Predictor's labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the [onnx] extra (onnx, onnxruntime) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra (onnx, onnxruntime) is not installed")

from mambaseg.export import export_onnx, load_for_export  # noqa: E402

KEYS = ("mambaseg.format", "mambaseg.format_version", "mambaseg.library_version", "mambaseg.model",
        "mambaseg.num_classes", "mambaseg.in_chans", "mambaseg.image_size", "mambaseg.input", "mambaseg.output",
        "mambaseg.preprocessing", "mambaseg.normalization", "mambaseg.labels", "mambaseg.label_map",
        "mambaseg.source")


def _metadata(path) -> dict:
    """What an onnxruntime user reads: every mambaseg.* entry of the custom metadata map, JSON-decoded."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = session.get_modelmeta().custom_metadata_map
    return {k: json.loads(v) for k, v in raw.items() if k.startswith("mambaseg.")}


def test_model_export_carries_metadata(tmp_path):
    model, shape, _ = load_for_export("vmunet_tiny", num_classes=3, size=(32, 64))
    report = export_onnx(model, tmp_path / "m.onnx", shape, check=False)
    meta = _metadata(tmp_path / "m.onnx")
    assert set(KEYS) <= set(meta), sorted(set(KEYS) - set(meta))
    assert meta["mambaseg.format"] == "mambaseg-onnx" and meta["mambaseg.format_version"] == 1
    assert meta["mambaseg.model"] == "vmunet_tiny"
    assert meta["mambaseg.num_classes"] == 3 and meta["mambaseg.in_chans"] == 3
    assert meta["mambaseg.image_size"] == [32, 64]
    assert meta["mambaseg.input"]["shape"] == [1, 3, 32, 64] and meta["mambaseg.input"]["name"] == "image"
    assert meta["mambaseg.normalization"] is None and meta["mambaseg.label_map"] is None
    assert meta["mambaseg.labels"]["rule"] == "argmax"
    assert meta["mambaseg.source"]["weights"] == "fresh"
    assert report.metadata["mambaseg.model"] == "vmunet_tiny"


def _preprocess(image: np.ndarray, meta: dict) -> np.ndarray:
    """A raw uint8 (H, W, 3) RGB image -> the network input, from the metadata alone (numpy + OpenCV)."""
    import cv2

    pre = meta["mambaseg.preprocessing"]
    h, w = meta["mambaseg.image_size"]
    shrink = h * w < image.shape[0] * image.shape[1]
    interp = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR}[pre["resize"]["shrink" if shrink else "enlarge"]]
    x = cv2.resize(image, (w, h), interpolation=interp).astype(np.float32) / pre["scale"]["uint8"]
    norm = meta["mambaseg.normalization"]
    if norm is not None:
        x = (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def _labels(logits: np.ndarray, size: tuple[int, int], meta: dict) -> np.ndarray:
    """(1, C, h, w) logits -> (H, W) class indices at the image's size, by the metadata's rule."""
    import cv2

    rule = meta["mambaseg.labels"]
    assert rule["resize_logits"] == "bilinear"
    up = np.stack([cv2.resize(c, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for c in logits[0]])
    if rule["rule"] == "sigmoid_threshold":
        return (1.0 / (1.0 + np.exp(-up[0])) >= rule["threshold"]).astype(np.int64)
    assert rule["rule"] == "argmax"
    return up.argmax(axis=0)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_metadata_reproduces_the_predictor_on_a_real_image(shared_data, tmp_path, num_classes):
    from PIL import Image, ImageOps
    from typer.testing import CliRunner

    from mambaseg.checkpoint import save_checkpoint
    from mambaseg.cli import app
    from mambaseg.inference import Predictor
    from mambaseg.models import create_model

    images = sorted((shared_data / "ph2_dev" / "val" / "images").glob("*.jpg"))
    if not images:
        pytest.skip("no ph2_dev validation images")
    image_path = images[0]
    torch.manual_seed(0)
    model = create_model("vmunet_tiny", num_classes=num_classes)
    label_map = ({"background": 0, "lesion": 255} if num_classes == 1
                 else {"background": 0, "a": 1, "b": 2})
    norm = {"mean": [0.6, 0.5, 0.4], "std": [0.2, 0.25, 0.3]}
    ckpt = tmp_path / "best.pt"
    save_checkpoint(ckpt, {"model": model.mambaseg_spec, "state_dict": model.state_dict(), "image_size": [64, 64],
                           "normalization": norm, "label_map": label_map})
    out = tmp_path / "model.onnx"
    res = CliRunner().invoke(app, ["export", "--checkpoint", str(ckpt), "--out", str(out)])
    assert res.exit_code == 0, res.output

    meta = _metadata(out)
    assert meta["mambaseg.normalization"] == norm
    assert meta["mambaseg.label_map"] == label_map
    assert meta["mambaseg.num_classes"] == num_classes
    assert meta["mambaseg.source"] == {"weights": "checkpoint", "file": "best.pt", "epoch": None}
    image = np.asarray(ImageOps.exif_transpose(Image.open(image_path)).convert("RGB"))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {meta["mambaseg.input"]["name"]: _preprocess(image, meta)})[0]
    labels = _labels(logits, image.shape[:2], meta)

    expected = Predictor.from_checkpoint(ckpt, device="cpu").predict(image_path)
    assert labels.shape == expected.shape
    assert len(np.unique(expected)) > 1  # a real test: more than one class in the picture
    agree = float((labels == expected).mean())
    assert agree > 0.999, agree  # only pixels at a decision boundary may differ (float rounding)
