"""``mambaseg cache``: --out checked before any work, --set data.binary/data.label_values for multi-class folders,
one-line errors naming the argument (no traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mambaseg.cli import app

runner = CliRunner()



def _run(*args):
    return runner.invoke(app, ["cache", *[str(a) for a in args]])


def _error(result) -> str:
    assert result.exit_code != 0, result.output
    text = (result.stderr if result.stderr else result.output).strip()
    assert "Traceback" not in result.output
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), text
    return lines[-1]


def _folder(root, values=(0, 255)):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            raw = np.zeros((12, 14), np.uint8)
            for k, v in enumerate(values[1:]):
                raw[2 + 3 * k: 4 + 3 * k, 2:12] = v
            image = rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{i}.png")
            Image.fromarray(raw).save(root / split / "masks" / f"{i}.png")
    return root


def test_out_a_folder_or_unwritable_is_refused_before_any_image_is_read(tmp_path, monkeypatch):
    data = _folder(tmp_path / "d")
    import mambaseg.data.cache as cache_mod

    def boom(*a, **k):  # any reading of the dataset would be too late
        raise AssertionError("the dataset was processed before --out was checked")

    monkeypatch.setattr(cache_mod, "write_npz2d", boom)
    (tmp_path / "adir").mkdir()
    line = _error(_run("--data", data, "--image-size", "8", "--out", tmp_path / "adir"))
    assert "--out" in line and "adir" in line and "folder" in line and ".npz" in line
    line = _error(_run("--data", data, "--image-size", "8", "--out", tmp_path / "x.txt"))
    assert "--out" in line and "x.txt" in line and ".npz" in line
    (tmp_path / "afile").write_text("x")
    line = _error(_run("--data", data, "--image-size", "8", "--out", tmp_path / "afile" / "y.npz"))
    assert "--out" in line and "afile" in line
    ro = tmp_path / "ro"
    ro.mkdir()

    def no_write(*a, **k):
        raise PermissionError(13, "Permission denied", str(ro))

    monkeypatch.setattr("tempfile.mkstemp", no_write)
    line = _error(_run("--data", data, "--image-size", "8", "--out", ro / "y.npz"))
    assert "--out" in line and "ro" in line and "Permission denied" in line
    assert not list(tmp_path.rglob("*.npz"))


def test_out_sys_is_refused_naming_out(tmp_path):
    data = _folder(tmp_path / "d")
    line = _error(_run("--data", data, "--image-size", "8", "--out", "/sys/y.npz"))
    assert "--out" in line and "/sys" in line


def test_a_multiclass_folder_caches_with_set_label_values(tmp_path):
    data = _folder(tmp_path / "mc", values=(0, 85, 170, 255))
    line = _error(_run("--data", data, "--image-size", "8", "--out", tmp_path / "bin.npz"))
    assert "data.binary=false" in line  # read as binary by default: the message says what to pass
    out = tmp_path / "mc.npz"
    res = _run("--data", data, "--image-size", "8", "--out", out, "--set", "data.binary=false",
               "--set", "data.label_values=[0,85,170,255]")
    assert res.exit_code == 0, res.output
    with np.load(out, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        assert set(np.unique(z["train_masks"]).tolist()) == {0, 1, 2, 3}
    assert meta["num_classes"] == 4 and meta["label_values"] == [0, 85, 170, 255]
    assert meta["label_map"] == {"background": 0, "class_1": 85, "class_2": 170, "class_3": 255}


@pytest.mark.parametrize("override, expected", [
    ("train.epochs=3", r"--set train\.epochs.*data\.binary.*data\.label_values"),
    ("data.val_fraction=0.3", r"--set data\.val_fraction.*data\.binary.*data\.label_values"),
    ("data.binary=maybe", r"data\.binary"),
    ("nonsense", r"--set nonsense.*KEY=VALUE|section\.field=value"),
])
def test_set_accepts_the_label_settings_only(tmp_path, override, expected):
    import re

    data = _folder(tmp_path / "d")
    line = _error(_run("--data", data, "--image-size", "8", "--out", tmp_path / "o.npz", "--set", override))
    assert re.search(expected, line), line
    assert not (tmp_path / "o.npz").exists()


def test_set_on_a_volumetric_dataset_is_refused(tmp_path):
    pytest.importorskip("nibabel")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from test_nnunet import make_nnunet

    root = make_nnunet(tmp_path / "nn", n_cases=3)
    line = _error(_run("--data", root, "--image-size", "8", "--out", tmp_path / "o.npz",
                       "--set", "data.binary=false", "--set", "data.label_values=[0,1,2]"))
    assert "--set" in line and "nnunet" in line and "2-D folder" in line
    assert not (tmp_path / "o.npz").exists()


def test_an_existing_out_is_kept_unless_overwrite(tmp_path):
    from mambaseg.data import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=3, n_val=2, size=(24, 24), seed=1)
    out = tmp_path / "c.npz"
    out.write_bytes(b"an earlier cache")
    res = _run("--data", data, "--out", out, "--image-size", 16)
    assert res.exit_code != 0 and "already exists" in _error(res) and "--overwrite" in _error(res)
    assert out.read_bytes() == b"an earlier cache"
    res = _run("--data", data, "--out", out, "--image-size", 16, "--overwrite")
    assert res.exit_code == 0, res.output
    with np.load(out) as z:
        assert z["train_images"].shape[1:3] == (16, 16)
