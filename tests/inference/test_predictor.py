"""2-D Predictor: original-size masks, equivalence with the evaluation pipeline, folder output, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mambaseg
from mambaseg.data import Normalization
from mambaseg.data.transforms import build_transforms
from mambaseg.engine import export_safetensors, load_checkpoint, save_checkpoint
from mambaseg.inference import Predictor, overlay_mask


def _ckpt(tmp_path, num_classes=1, label_map=None):
    torch.manual_seed(0)
    model = mambaseg.create_model("vmunet_tiny", num_classes=num_classes, dims=8, d_state=2)
    payload = {
        "model": model.mambaseg_spec,
        "state_dict": model.state_dict(),
        "normalization": {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]},
        "label_map": label_map or {"background": 0, "foreground": 255},
        "image_size": [32, 32],
        "epoch": 1,
    }
    return save_checkpoint(tmp_path / f"c{num_classes}.pt", payload), model.eval()


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    sizes = {"a.png": (45, 70), "b.jpg": (64, 48), "c.bmp": (33, 33)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / name)
    (d / "notes.txt").write_text("not an image")
    return d, sizes


def test_predict_returns_original_size_and_matches_eval_pipeline(tmp_path, images):
    path, model = _ckpt(tmp_path)
    pred = mambaseg.load(path, device="cpu")
    d, sizes = images
    img = np.asarray(Image.open(d / "a.png").convert("RGB"))
    mask = pred.predict(d / "a.png")
    assert mask.shape == sizes["a.png"] and mask.dtype == np.int64 and set(np.unique(mask)) <= {0, 1}
    # reference: eval transform -> [0,1] -> stored normalisation -> model -> bilinear upsample -> sigmoid > 0.5
    x, _ = build_transforms((32, 32), augment=False)(img, np.zeros(img.shape[:2], np.uint8), None)
    x = Normalization((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)).apply(x.astype(np.float32) / 255.0)
    with torch.no_grad():
        logits = model(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])
    ref = (torch.sigmoid(F.interpolate(logits, size=img.shape[:2], mode="bilinear", align_corners=False))[0, 0] > 0.5)
    np.testing.assert_array_equal(mask, ref.numpy().astype(np.int64))
    # same result from an array, a PIL image and a float array in [0, 1]
    np.testing.assert_array_equal(pred.predict(img), mask)
    np.testing.assert_array_equal(pred.predict(Image.open(d / "a.png")), mask)
    assert pred.predict(img.astype(np.float32) / 255.0).shape == mask.shape
    prob = pred.predict_proba(img)
    assert prob.shape == mask.shape and np.array_equal(prob > 0.5, mask.astype(bool))
    # grey input is replicated to the model's 3 channels
    assert pred.predict(img[..., 0]).shape == mask.shape


def test_safetensors_predicts_the_same(tmp_path, images):
    path, _ = _ckpt(tmp_path)
    st = export_safetensors(tmp_path / "best.safetensors", load_checkpoint(path))
    d, _ = images
    a = mambaseg.load(path, device="cpu").predict(d / "b.jpg")
    b = mambaseg.load(st, device="cpu").predict(d / "b.jpg")
    np.testing.assert_array_equal(a, b)


def test_predict_folder_writes_masks_and_overlays(tmp_path, images):
    path, _ = _ckpt(tmp_path)
    d, sizes = images
    out = tmp_path / "pred"
    written = mambaseg.load(path, device="cpu").predict_folder(d, out, batch_size=2)
    assert sorted(p.name for p in written) == ["a.png", "b.png", "c.png"]
    for name, (h, w) in sizes.items():
        stem = name.rsplit(".", 1)[0]
        m = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert m.shape == (h, w) and set(np.unique(m)) <= {0, 255}
        ov = np.asarray(Image.open(out / "overlays" / f"{stem}.png"))
        assert ov.shape == (h, w, 3)


def test_multiclass_label_values(tmp_path, images):
    lm = {"background": 0, "a": 100, "b": 200}
    path, _ = _ckpt(tmp_path, num_classes=3, label_map=lm)
    pred = mambaseg.load(path, device="cpu")
    d, sizes = images
    m = pred.predict(d / "c.bmp")
    assert m.shape == sizes["c.bmp"] and set(np.unique(m)) <= {0, 1, 2}
    vals = pred.to_pixel_values(m)
    assert vals.dtype == np.uint8 and set(np.unique(vals)) <= {0, 100, 200}
    np.testing.assert_array_equal(vals, np.asarray([0, 100, 200])[m])


def test_overlay_mask_blends_only_foreground():
    img = np.full((4, 4, 3), 100, np.uint8)
    m = np.zeros((4, 4), np.int64)
    m[0, 0] = 1
    ov = overlay_mask(img, m, alpha=0.5)
    assert (ov[1:, :] == 100).all() and tuple(ov[0, 0]) == (178, 50, 50)


def test_input_errors(tmp_path, images):
    path, _ = _ckpt(tmp_path)
    pred = mambaseg.load(path, device="cpu")
    d, _ = images
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pred.predict(d / "missing.png")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pred.predict(np.full((8, 8, 3), 3.0, np.float32))
    with pytest.raises(ValueError, match="channel"):
        pred.predict(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="not an image file"):
        pred.predict_folder(d / "notes.txt", tmp_path / "o")
    # a broken file among good ones (sorted last): refused, naming it, before any mask is written
    (d / "zz_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match=r"(?s)1 of 4 input file\(s\) cannot be read.*nothing was written.*zz_broken"):
        pred.predict_folder(d, tmp_path / "o2", batch_size=1)
    assert not list((tmp_path / "o2").rglob("*.png"))
    assert isinstance(pred, Predictor) and "vmunet_tiny" in repr(pred)


def test_sixteen_bit_pil_image_and_float_arrays_keep_their_precision(tmp_path):
    path, _ = _ckpt(tmp_path)
    pred = mambaseg.load(path, device="cpu")
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 65536, (40, 52), dtype=np.uint16)
    Image.fromarray(raw).save(tmp_path / "g16.png")
    pil = Image.open(tmp_path / "g16.png")
    assert pil.mode.startswith("I;16")
    from_path, from_pil = pred.read(tmp_path / "g16.png"), pred.read(pil)
    assert from_pil.dtype == np.float32 and np.array_equal(from_pil, from_path)  # not clipped to 255 by convert()
    assert np.array_equal(from_pil[..., 0], (raw / 65535.0).astype(np.float32))
    np.testing.assert_array_equal(pred.predict(Image.open(tmp_path / "g16.png")), pred.predict(tmp_path / "g16.png"))
    # float arrays are used at full precision (float32), not rounded to 8 bits
    f = rng.random((40, 52, 3)).astype(np.float32)
    assert pred.read(f).dtype == np.float32 and np.array_equal(pred.read(f), f)
    assert pred.read(f.astype(np.float64)[..., :1]).dtype == np.float32
    np.testing.assert_array_equal(pred.predict(raw / 65535.0), pred.predict(tmp_path / "g16.png"))


class _PlainNet(torch.nn.Module):
    """A hand-built model that says nothing about its classes (no mambaseg_spec, no num_classes)."""

    def __init__(self, out_channels: int, flat: bool = False) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, out_channels, 1)
        self.flat = flat

    def forward(self, x):
        y = self.conv(x)
        return y.flatten(1) if self.flat else y


def test_a_model_without_num_classes_is_counted_at_construction():
    # it was taken as binary: a 3-class model then failed at its first mask ("mask holds class 2 ...")
    pred = Predictor(_PlainNet(3), image_size=(32, 32), device="cpu")
    assert pred.num_classes == 3 and list(pred.label_map.values()) == [0, 1, 2]
    mask = pred.predict(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    assert mask.shape == (40, 50) and mask.max() <= 2
    with pytest.raises(ValueError, match="has 2 entries but the model predicts 3 classes"):
        Predictor(_PlainNet(3), image_size=(32, 32), device="cpu", label_map={"bg": 0, "lesion": 255})
    assert Predictor(_PlainNet(1), image_size=(32, 32), device="cpu").label_map == {"background": 0,
                                                                                     "foreground": 255}
    with pytest.raises(ValueError, match=r"must return logits \(B, num_classes, H, W\)"):
        Predictor(_PlainNet(2, flat=True), image_size=(32, 32), device="cpu")
    one_channel = torch.nn.Conv2d(1, 2, 1)  # takes 1 channel, does not say so
    with pytest.raises(ValueError, match=r"no num_classes attribute.*zero image of shape \(1, 3, 32, 32\)"):
        Predictor(one_channel, image_size=(32, 32), device="cpu")


def test_logits_of_another_class_count_than_the_model_says_are_refused():
    net = _PlainNet(3)
    net.num_classes = 1  # says binary, returns 3 channels
    pred = Predictor(net, image_size=(32, 32), device="cpu")
    with pytest.raises(ValueError, match=r"logits of shape \(1, 3, 32, 32\) but the predictor expects \(B, 1, H, W\)"):
        pred.predict(np.zeros((32, 32, 3), dtype=np.uint8))


def test_a_model_in_bfloat16_predicts_like_the_float32_one(images):
    # a model converted with .bfloat16() gets its input in bfloat16 (float32 input is refused by the model itself)
    import copy

    model = mambaseg.create_model("vmunet_tiny", num_classes=1, dims=8, d_state=2).eval()
    p32 = Predictor(model, image_size=(32, 32), device="cpu")
    p16 = Predictor(copy.deepcopy(model).bfloat16(), image_size=(32, 32), device="cpu")
    a, b = p32.predict_proba(images[0] / "a.png"), p16.predict_proba(images[0] / "a.png")
    assert a.shape == b.shape == (45, 70) and np.abs(a - b).max() < 0.05
    from mambaseg.inference.volume import predict_volume

    vol = np.random.default_rng(1).random((3, 40, 36)).astype(np.float32)
    la = predict_volume(model, vol, image_size=32)
    lb = predict_volume(copy.deepcopy(model).bfloat16(), vol, image_size=32)
    assert la.shape == lb.shape == (3, 40, 36) and (la == lb).mean() > 0.95
