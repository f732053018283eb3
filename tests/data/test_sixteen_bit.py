"""16-bit images keep their levels (a 12-bit ramp stays 4096 levels); 8-bit reading is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mambaseg.data import FolderDataset2D, read_image
from mambaseg.data.transforms import build_transforms


def _ramp12():
    return np.tile(np.arange(4096, dtype=np.uint16), (2, 1))  # (2, 4096): every 12-bit level once per row


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_twelve_bit_ramp_keeps_every_level(tmp_path, ext):
    path = tmp_path / f"ramp.{ext}"
    Image.fromarray(_ramp12()).save(path)
    for chans in (1, 3):
        img = read_image(path, chans)
        assert img.dtype == np.float32 and img.shape == (2, 4096, chans)
        assert len(np.unique(img)) == 4096  # the old /257 scaling left 17 levels
        assert np.array_equal(img[0, :, 0], (np.arange(4096) / 65535.0).astype(np.float32))


def test_eight_bit_images_are_read_as_before(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png", 3)
    assert img.dtype == np.uint8 and np.array_equal(img, rgb)
    grey = read_image(tmp_path / "a.png", 1)
    assert np.array_equal(grey[..., 0], np.asarray(Image.open(tmp_path / "a.png").convert("L")))


def test_sixteen_bit_dataset_items_and_augmentation(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (256, 1))  # 256 levels of a 12-bit range
        Image.fromarray(ramp).save(tmp_path / split / "images" / f"{split}.png")
        mask = np.zeros((256, 256), np.uint8)
        mask[64:192, 64:192] = 255
        Image.fromarray(mask).save(tmp_path / split / "masks" / f"{split}.png")
    ds = FolderDataset2D(tmp_path, "val", image_size=256, augment=False, normalization=None, in_chans=1)
    x = ds[0]["image"]
    assert x.dtype.is_floating_point and len(np.unique(x.numpy())) == 256
    assert float(x.max()) == pytest.approx(4080 / 65535)
    aug = build_transforms(64, augment=True, preset="strong_2d")
    img, m = aug(read_image(tmp_path / "val" / "images" / "val.png", 1), np.zeros((256, 256), np.uint8),
                 np.random.default_rng(0))
    assert img.dtype == np.float32 and img.shape == (64, 64, 1) and 0.0 <= img.min() and img.max() <= 1.0


def _rgb16():
    ramp = _ramp12()
    return np.dstack([ramp, ramp // 2, 65535 - ramp]).astype(np.uint16)  # (2, 4096, 3), RGB


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_sixteen_bit_colour_keeps_every_level(tmp_path, ext):
    cv2 = pytest.importorskip("cv2")
    rgb = _rgb16()
    path = tmp_path / f"rgb16.{ext}"
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV writes BGR: a 48-bit file
    assert Image.open(path).mode == "RGB"  # Pillow alone would read 8 bits per sample
    img = read_image(path, 3)
    assert img.dtype == np.float32 and img.shape == (2, 4096, 3)
    assert np.array_equal(img, (rgb / 65535.0).astype(np.float32))
    assert len(np.unique(img[..., 0])) == 4096
    grey = read_image(path, 1)
    luma = (rgb.astype(np.float64) / 65535.0) @ np.array([0.299, 0.587, 0.114])
    assert grey.shape == (2, 4096, 1) and np.allclose(grey[..., 0], luma, atol=1e-6)


def test_sixteen_bit_rgba_drops_alpha_and_keeps_levels(tmp_path):
    cv2 = pytest.importorskip("cv2")
    rgb = _rgb16()
    bgra = np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 1000, np.uint16)])
    assert cv2.imwrite(str(tmp_path / "a.png"), bgra)
    assert np.array_equal(read_image(tmp_path / "a.png", 3), (rgb / 65535.0).astype(np.float32))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_of_opencv_decoded_files_matches_pillow(orientation):
    from PIL import ImageOps

    from mambaseg.data.files import _orient

    arr = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(img))
    assert np.array_equal(_orient(arr, orientation), expected)
