"""ONNX metadata of a checkpoint trained on volumes: it describes the slice-wise volume pipeline (slices along D,
each channel's intensity scaling by its recorded name, cubic zoom to the network size, nearest zoom of the labels
back), and applied with numpy, scipy, nibabel and onnxruntime alone it reproduces ``mambaseg predict``'s labels of a
two-channel (CT, T2) NIfTI case. A 2-D checkpoint keeps the image pipeline's metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the [onnx] extra (onnx, onnxruntime) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra (onnx, onnxruntime) is not installed")
nib = pytest.importorskip("nibabel")

from mambaseg.export import export_metadata  # noqa: E402

SIZE = (32, 32)
NORM = {"mean": [0.4, 0.6], "std": [0.25, 0.2]}


def _checkpoint(tmp_path, channel_names=("CT", "T2"), layout="nnunet", evaluator="volume_slicewise"):
    """A tiny vmunet of len(channel_names) input channels and 3 classes, saved as a volumetric run would save it."""
    from mambaseg.checkpoint import save_checkpoint
    from mambaseg.models import create_model

    torch.manual_seed(0)
    n = max(1, len(channel_names))
    model = create_model("vmunet_tiny", num_classes=3, in_chans=n)
    task = {"layout": layout, "num_classes": 3, "in_chans": n, "evaluator": evaluator}
    if channel_names:
        task["channel_names"] = list(channel_names)
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": model.mambaseg_spec, "state_dict": model.state_dict(), "image_size": list(SIZE),
                           "normalization": {"mean": NORM["mean"][:n], "std": NORM["std"][:n]},
                           "label_map": {"background": 0, "liver": 1, "tumour": 2}, "task": task})
    return path, model


def _metadata(path) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = session.get_modelmeta().custom_metadata_map
    return {k: json.loads(v) for k, v in raw.items() if k.startswith("mambaseg.")}


def _channel_files(folder):
    """One case as nnU-Net channel files: 0 = CT in Hounsfield units, 1 = T2 in arbitrary units; (X, Y, Z)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    x, y, z = 40, 36, 5
    xx, yy = np.meshgrid(np.arange(x), np.arange(y), indexing="ij")
    blob = ((xx - 18) ** 2 + (yy - 15) ** 2 < 90).astype(np.float32)
    ct = np.stack([blob * (300 + 40 * k) - 250 + rng.normal(0, 30, (x, y)) for k in range(z)], axis=-1)
    t2 = np.stack([(1 - blob) * 900 + rng.normal(0, 50, (x, y)) for _ in range(z)], axis=-1)
    aff = np.diag([0.8, 0.9, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.rint(ct).astype(np.int16), aff), str(folder / "case_000_0000.nii.gz"))
    nib.save(nib.Nifti1Image(t2.astype(np.float32), aff), str(folder / "case_000_0001.nii.gz"))
    return [folder / "case_000_0000.nii.gz", folder / "case_000_0001.nii.gz"]


def _apply(meta: dict, files, session) -> np.ndarray:
    """The label volume (X, Y, Z) of one case from the metadata alone (numpy, scipy, nibabel, onnxruntime)."""
    from scipy import ndimage

    pre = meta["mambaseg.preprocessing"]
    assert pre["kind"] == "volume_slicewise" and pre["slice"]["axis"] == 0
    chans = []
    for entry, f in zip(pre["channels"], files):
        img = nib.load(str(f))
        v = np.asanyarray(img.dataobj).astype(np.float32).transpose(2, 1, 0)  # (X, Y, Z) -> (D, H, W)
        if entry["scale"] == "ct":
            lo, hi = entry["window"]
            v = (np.clip(v, lo, hi) - lo) / (hi - lo)
        else:
            assert entry["scale"] == "minmax"
            v = (v - v.min()) / (v.max() - v.min())
        chans.append(v.astype(np.float32))
    vol = np.stack(chans, axis=-1)  # (D, H, W, C)
    d, hh, ww = vol.shape[:3]
    h, w = pre["resize"]["to"]
    norm = meta["mambaseg.normalization"]
    rule = meta["mambaseg.labels"]
    assert rule["rule"] == "argmax" and rule["resize_labels"] == "nearest"
    out = np.zeros((d, hh, ww), np.int64)
    for z in range(d):
        x = np.stack([ndimage.zoom(vol[z, :, :, c], (h / hh, w / ww), order=pre["resize"]["order"])
                      for c in range(vol.shape[-1])], axis=-1)
        x = (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
        logits = session.run(None, {meta["mambaseg.input"]["name"]: x.transpose(2, 0, 1)[None].astype(np.float32)})
        lab = logits[0][0].argmax(axis=0)
        out[z] = ndimage.zoom(lab, (hh / h, ww / w), order=pre["labels_back"]["order"])
    return out.transpose(2, 1, 0)


def test_two_channel_volume_checkpoint_metadata_reproduces_predict(tmp_path):
    from typer.testing import CliRunner

    from mambaseg.cli import app

    ckpt, _ = _checkpoint(tmp_path)
    out = tmp_path / "model.onnx"
    res = CliRunner().invoke(app, ["export", "--checkpoint", str(ckpt), "--out", str(out)])
    assert res.exit_code == 0, res.output
    meta = _metadata(out)
    pre = meta["mambaseg.preprocessing"]
    # what a deployer needs, and nothing of the 2-D image pipeline
    assert "EXIF" not in json.dumps(pre) and "uint8" not in json.dumps(pre) and "grey_from_rgb" not in pre
    assert [(c["index"], c["name"], c["scale"]) for c in pre["channels"]] == [(0, "CT", "ct"), (1, "T2", "minmax")]
    assert pre["channels"][0]["window"] == [-125.0, 275.0]
    assert pre["resize"] == {**pre["resize"], "to": list(SIZE), "method": "spline", "order": 3}
    assert pre["labels_back"]["method"] == "nearest" and "(X, Y, Z)" in pre["read"] and "repeat_channels" not in pre
    assert "resize_logits" not in meta["mambaseg.labels"]
    assert meta["mambaseg.in_chans"] == 2 and meta["mambaseg.normalization"] == NORM

    files = _channel_files(tmp_path / "imagesTs")
    pred_dir = tmp_path / "pred"
    res = CliRunner().invoke(app, ["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "imagesTs"),
                                   "--out", str(pred_dir), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    expected = np.asanyarray(nib.load(str(pred_dir / "case_000_pred.nii.gz")).dataobj).astype(np.int64)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    labels = _apply(meta, files, session)
    assert labels.shape == expected.shape == (40, 36, 5)
    assert len(np.unique(expected)) > 1  # a real test: more than one class in the volume
    agree = float((labels == expected).mean())
    assert agree > 0.999, agree  # only voxels at a decision boundary may differ (float rounding)


def test_single_channel_volume_checkpoint_names_its_scaling_and_repeat(tmp_path):
    from mambaseg.checkpoint import load_checkpoint
    from mambaseg.models import create_model

    # an ACDC run (no channel names recorded) of a 3-channel model: one channel, "auto" scaling, repeated 3 times
    model = create_model("vmunet_tiny", num_classes=4, in_chans=3)
    ckpt = {"model": model.mambaseg_spec, "task": {"layout": "acdc", "num_classes": 4, "in_chans": 3}}
    pre = export_metadata(model, (1, 3, 32, 32), ckpt)["mambaseg.preprocessing"]
    assert [(c["name"], c["scale"]) for c in pre["channels"]] == [(None, "auto")]
    assert pre["repeat_channels"]["to"] == 3
    # an nnU-Net run that records no channel names and whose dataset is gone: the scaling is said to be unknown
    path, m2 = _checkpoint(tmp_path, channel_names=())
    c2 = load_checkpoint(path)
    c2["task"]["in_chans"] = 1
    pre = export_metadata(m2, (1, 1, 32, 32), c2)["mambaseg.preprocessing"]
    assert pre["channels"][0]["scale"] == "unknown" and "--intensity" in pre["channels"][0]["rule"]


def test_two_dimensional_checkpoint_metadata_is_unchanged(tmp_path):
    from mambaseg.models import create_model

    model = create_model("vmunet_tiny", num_classes=1, in_chans=2)
    meta = export_metadata(model, (1, 2, 32, 32), {"model": model.mambaseg_spec,
                                                   "task": {"layout": "folder2d", "evaluator": "segmentation2d"}})
    assert meta["mambaseg.preprocessing"] == {
        "steps": ["read", "resize", "scale", "normalize", "nchw"],
        "read": "EXIF orientation applied, alpha dropped",
        "channels": "2 channels",
        "resize": {"to": [32, 32], "shrink": "area", "enlarge": "bilinear"},
        "scale": {"uint8": 255, "uint16": 65535},
    }
    assert meta["mambaseg.labels"] == {"rule": "sigmoid_threshold", "threshold": 0.5, "resize_logits": "bilinear"}
