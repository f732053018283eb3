"""Class 3, errors that hide their input: every message names the file (or option) and the cause; the CLI prints
the whole message; crafted and truncated files are refused (never executed)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import checksums, cli
from engine_helpers import tiny_config

from mambaseg.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint


def test_cli_prints_every_problem_of_a_dataset_check(data_copy, tmp_path):
    bad_a = data_copy / "train" / "images" / "syn_0001.png"
    bad_a.write_bytes(b"not an image")
    bad_b = data_copy / "val" / "masks" / "syn_0002.png"
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(bad_b)
    before = checksums(data_copy)
    code, text = cli("train", "-m", "_engine_test_tinyconv", "-d", data_copy, "-o", tmp_path / "r", "--epochs", "1",
                     "--image-size", "32", "--device", "cpu", "--no-progress")
    assert code == 1
    assert "2 problem(s)" in text
    assert str(bad_a) in text and "unreadable" in text
    assert str(bad_b) in text and "unexpected mask values" in text
    assert checksums(data_copy) == before and not (tmp_path / "r").exists()


def test_cli_caps_very_long_messages_with_a_count():
    from mambaseg.cli._common import MAX_ERROR_LINES, _message

    msg = _message(ValueError("\n".join(f"line {i}" for i in range(100))))
    lines = msg.splitlines()
    assert len(lines) == MAX_ERROR_LINES and lines[-1] == f"... and {100 - MAX_ERROR_LINES + 1} more line(s)"


def test_cli_names_every_tensor_of_a_checkpoint_that_does_not_fit(trained, tmp_path):
    ckpt = load_checkpoint(trained / "checkpoints" / "best.pt")
    ckpt["model"] = {**ckpt["model"], "kwargs": {**(ckpt["model"].get("kwargs") or {}), "width": 4}}
    path = tmp_path / "misfit.pt"
    save_checkpoint(path, ckpt)
    code, text = cli("predict", "-k", path, "-i", tmp_path, "-o", tmp_path / "o")
    assert code == 1 and str(path) in text
    for name in ("body.0.weight", "body.0.bias", "body.3.weight"):
        assert name in text


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "no space left on device"),
                                         (errno.EACCES, "permission denied"),
                                         (errno.EROFS, "read-only file system"),
                                         (errno.EDQUOT, "quota exceeded")])
def test_write_errors_name_the_path_and_the_cause(code, cause, syn_data, tmp_path, monkeypatch):
    def failing(obj, f, *a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", failing)
    out = tmp_path / "r"
    code_, text = cli("train", "-m", "_engine_test_tinyconv", "-d", syn_data, "-o", out, "--epochs", "1",
                      "--image-size", "32", "--device", "cpu", "--no-progress", "--set", "data.validate=false")
    assert code_ == 1
    assert str(out / "checkpoints") in text and cause in text.lower()


def test_torch_disk_full_error_is_translated(tmp_path, monkeypatch):
    import shutil

    def full(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 960")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(CheckpointWriteError) as exc:
        save_checkpoint(tmp_path / "ck.pt", {"state_dict": {}})
    assert str(tmp_path / "ck.pt") in str(exc.value) and "no space left on device" in str(exc.value)


def test_the_atomic_writer_names_the_target_not_its_temporary_file(tmp_path):
    from mambaseg.utils.files import atomic_path, atomic_write_json

    target = tmp_path / "out" / "metrics.json"
    with pytest.raises(OSError) as exc:  # a write failing inside the block (e.g. disk full)
        with atomic_path(target) as tmp:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert exc.value.filename == str(target) and exc.value.errno == errno.ENOSPC and ".tmp" not in str(exc.value)
    assert list(target.parent.iterdir()) == []  # the temporary file is gone
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as exc:  # the folder cannot be made: a file stands where it should be
        atomic_write_json(blocker / "metrics.json", {"a": 1})
    assert exc.value.filename == str(blocker / "metrics.json")
    with pytest.raises(ValueError, match="boom"):  # other errors pass through unchanged
        with atomic_path(target):
            raise ValueError("boom")


def test_real_read_only_folder(syn_data, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    from mambaseg.engine import train

    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(OSError) as exc:
            train(tiny_config(syn_data, out, **{"train.epochs": 1}), show_progress=False)
        assert str(out) in str(exc.value)
    finally:
        out.chmod(0o755)


def test_crafted_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "mambaseg-checkpoint", "x": Evil()}, path)
    code, text = cli("evaluate", "-k", path)
    assert code == 1 and str(path) in text
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_checkpoint_is_named(keep, trained, tmp_path):
    src = (trained / "checkpoints" / "best.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(src[: int(len(src) * keep)])
    code, text = cli("predict", "-k", path, "-i", tmp_path, "-o", tmp_path / "o")
    assert code == 1 and str(path) in text and "corrupt, truncated" in text


def test_a_file_that_is_not_a_checkpoint_is_named_as_such(tmp_path):
    # e.g. a run's train.log given as the checkpoint: the message said "... : pop from empty list"
    path = tmp_path / "train.log"
    path.write_text("2026-12-07 start: model vmunet_tiny\n")
    code, text = cli("evaluate", "-k", path)
    assert code == 1 and str(path) in text and "is not a checkpoint" in text and "pop from" not in text, text


@pytest.mark.parametrize("version", ["x", -3, 99])
def test_bad_format_version_names_the_file(version, trained, tmp_path):
    ckpt = load_checkpoint(trained / "checkpoints" / "best.pt")
    path = tmp_path / "v.pt"
    torch.save({**ckpt, "format_version": version}, path)
    code, text = cli("evaluate", "-k", path)
    assert code == 1 and str(path) in text and "format version" in text.replace("_", " ")


def test_folder_passed_as_checkpoint(trained):
    code, text = cli("predict", "-k", trained, "-i", trained, "-o", trained / "p")
    assert code == 1 and "is a folder" in text and "best.pt" in text and "does not exist" not in text


def test_corrupt_hdf5_volume_is_named(trained, tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    code, text = cli("predict", "-k", trained / "checkpoints" / "best.pt", "-i", path, "-o", tmp_path / "o")
    assert code == 1 and str(path) in text and "HDF5" in text


def test_decompression_bomb_is_named(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from mambaseg.data import DatasetError, read_image

    path = tmp_path / "big.png"
    PILImage.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DatasetError, match=r"big\.png.*decompression bomb"):
        read_image(path)


def test_truncated_image_is_named(tmp_path):
    from mambaseg.data import DatasetError, read_image

    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"cut\.png.*corrupt"):
        read_image(path)
