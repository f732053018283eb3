"""Mask files that would be read wrong are refused, naming the file: a 0/1 mask saved as JPEG (the lossy threshold
would empty it) and a mask with a transparent alpha channel (the alpha is not read). Image alpha is dropped."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mambaseg.data.files import DatasetError, mask_to_labels, read_image, read_mask


def _disc(size: int = 128) -> np.ndarray:
    """An ellipse as a 0/1 mask (its curved edge leaves JPEG ringing above 1)."""
    yy, xx = np.mgrid[:size, :size]
    return (((yy - size / 2) / (size / 3)) ** 2 + ((xx - size / 2) / (size / 4)) ** 2 < 1).astype(np.uint8)


def test_zero_one_mask_saved_as_jpeg_is_refused_not_emptied(tmp_path):
    """A real JPEG of a 0/1 ellipse, whatever the encoder's noise: never read as an empty mask without a word."""
    path = tmp_path / "a_segmentation.jpg"
    Image.fromarray(_disc()).save(path, quality=75)
    raw = read_mask(path)
    try:
        labels = mask_to_labels(raw, binary=True, lossy=True, path=path)
    except DatasetError as exc:
        assert raw.max() > 1
        assert "a_segmentation.jpg" in str(exc) and "0/1 mask saved as JPEG" in str(exc)
    else:
        assert raw.max() <= 1 and labels.sum() > 0.9 * _disc().sum()


@pytest.mark.parametrize("peak, outcome", [(1, "as is"), (2, "refused"), (127, "refused"), (128, "threshold")])
def test_lossy_mask_rule_at_its_boundaries(peak, outcome):
    raw = np.zeros((4, 4), np.uint8)
    raw[1:3, 1:3] = peak
    raw[0, 0] = 1 if peak > 1 else 0  # compression noise next to the lesion
    if outcome == "refused":
        with pytest.raises(DatasetError, match=rf"m\.jpg: lossy \(JPEG\) mask whose largest value is {peak};"):
            mask_to_labels(raw, binary=True, lossy=True, path="m.jpg")
        return
    labels = mask_to_labels(raw, binary=True, lossy=True, path="m.jpg")
    want = raw if outcome == "as is" else (raw > 127).astype(np.uint8)
    assert np.array_equal(labels, want) and labels[1:3, 1:3].all()


def test_zero_255_jpeg_mask_is_still_thresholded(tmp_path):
    path = tmp_path / "b.jpg"
    Image.fromarray(_disc() * 255).save(path, quality=75)
    labels = mask_to_labels(read_mask(path), binary=True, lossy=True, path=path)
    assert abs(int(labels.sum()) - int(_disc().sum())) < 50


def test_mask_with_transparent_alpha_is_refused(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6, 3] = 255  # the mask drawn in the alpha channel only: RGB all black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    with pytest.raises(DatasetError, match=r"m\.png.*alpha channel that is not fully opaque"):
        read_mask(tmp_path / "m.png")
    la = np.dstack([np.zeros((8, 8), np.uint8), rgba[..., 3]])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    with pytest.raises(DatasetError, match=r"la\.png.*alpha"):
        read_mask(tmp_path / "la.png")


def test_opaque_rgba_mask_and_rgba_image_drop_alpha(tmp_path):
    rgba = np.full((8, 8, 4), 255, np.uint8)
    rgba[..., :3] = 0
    rgba[2:6, 2:6, :3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png") > 127, rgba[..., 0] > 127)
    rgba[..., 3] = 7  # images: the colour values as stored, alpha dropped (not composited)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "i.png")
    assert np.array_equal(read_image(tmp_path / "i.png", 3), rgba[..., :3])
