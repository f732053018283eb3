from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mambaseg.data import DatasetError, validate_dataset


def _write(path: Path, arr: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def _good(root: Path, split: str, i: str, size=(12, 16)):
    img = np.random.default_rng(0).integers(0, 256, size + (3,), dtype=np.uint8)
    mask = np.zeros(size, np.uint8)
    mask[2:6, 3:9] = 255
    _write(root / split / "images" / f"{i}.jpg", img, quality=95)
    _write(root / split / "masks" / f"{i}.png", mask)


def test_clean_shared_dataset(shared_data):
    rep = validate_dataset(shared_data / "kvasir_seg_sample")
    assert rep.ok and rep.checked == {"train": 4, "val": 1} and not rep.skipped


def test_every_problem_is_named(tmp_path):
    for i in ("ok1", "ok2", "trunc", "garbage", "sizes", "values", "nomask", "badmask"):
        _good(tmp_path, "train", i)
    _good(tmp_path, "val", "v")
    # truncated JPEG: the header is fine, the pixels stop half-way
    p = tmp_path / "train/images/trunc.jpg"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    (tmp_path / "train/images/garbage.jpg").write_bytes(b"\x00\x01 definitely not a jpeg")
    _write(tmp_path / "train/masks/sizes.png", np.zeros((12, 15), np.uint8))
    _write(tmp_path / "train/masks/values.png", np.array([[0, 128], [255, 3]], np.uint8).repeat(6, 0).repeat(8, 1))
    (tmp_path / "train/masks/nomask.png").unlink()
    (tmp_path / "train/masks/badmask.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _write(tmp_path / "train/masks/stray.png", np.zeros((12, 16), np.uint8))
    _write(tmp_path / "train/images/ok1.png", np.zeros((12, 16, 3), np.uint8))  # duplicate id ok1

    with pytest.raises(DatasetError) as ei:
        validate_dataset(tmp_path)
    msg = str(ei.value)
    for fragment in (
        "trunc.jpg: unreadable or corrupt image",
        "garbage.jpg: unreadable or corrupt image",
        "sizes.png: mask is 15x12 (WxH) but its image sizes.jpg is 16x12",
        "values.png: unexpected mask values {0, 3, 128, 255}",
        "nomask.jpg: image without mask",
        "badmask.png: unreadable or corrupt mask",
        "stray.png: mask without image",
        "several files share the id 'ok1'",
    ):
        assert fragment in msg, fragment

    rep = validate_dataset(tmp_path, skip_bad=True)
    kinds = {(p.id, p.kind) for p in rep.problems}
    assert kinds == {
        ("trunc", "unreadable"),
        ("garbage", "unreadable"),
        ("sizes", "size_mismatch"),
        ("values", "mask_values"),
        ("nomask", "missing_mask"),
        ("badmask", "unreadable"),
        ("stray", "orphan_mask"),
        ("ok1", "duplicate_id"),
    }
    assert rep.skipped == rep.problems
    assert rep.bad_ids("train") == {"trunc", "garbage", "sizes", "values", "nomask", "badmask", "ok1"}
    assert rep.checked == {"train": 8, "val": 1}
    assert "skipped 8 file(s)" in rep.summary()


def test_missing_val_and_multiclass(tmp_path):
    _good(tmp_path, "train", "a")
    rep = validate_dataset(tmp_path, ("train", "val", "test"))
    assert rep.ok and any("carved" in n for n in rep.notes) and any("test" in n for n in rep.notes)
    # the same {0,255} mask is valid multi-class data only if 255 is a declared label value
    with pytest.raises(DatasetError, match=r"unexpected mask values \{255\}"):
        validate_dataset(tmp_path, ("train",), binary=False, label_values=[0, 1])
    assert validate_dataset(tmp_path, ("train",), binary=False, label_values=[0, 255]).ok
    with pytest.raises(DatasetError, match="does not exist"):
        validate_dataset(tmp_path / "missing")


def test_progress_callback(tmp_path):
    for i in "abc":
        _good(tmp_path, "train", i)
    seen = []
    validate_dataset(tmp_path, ("train",), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
