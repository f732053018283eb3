"""Class 1, lost work: a second run in the same --out, predictions over earlier outputs or ground truth,
colliding input names, and leftovers of killed writers (class 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import checksums, cli
from engine_helpers import tiny_config

from mambaseg.engine import train
from mambaseg.utils.runlock import LOCK_NAME, RunLock, RunLockedError


def _run_files(run: Path) -> list[Path]:
    return [run / "config.yaml", run / "metrics.json", run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"]


# ---------------------------------------------------------------- the run lock


@pytest.mark.parametrize("via", ["api", "cli"])
def test_second_run_in_a_locked_out_is_refused(via, syn_data, run_copy):
    before = checksums(run_copy)
    with RunLock(run_copy, command="the first run"):
        if via == "api":
            with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
                train(tiny_config(syn_data, run_copy, **{"train.epochs": 2}), resume=True, show_progress=False)
        else:
            code, text = cli("train", "--resume", "--out", run_copy, "--epochs", "2", "--no-progress")
            assert code == 1
            assert str(run_copy) in text and "in use by another run" in text and f"pid {os.getpid()}" in text
    after = checksums(run_copy)
    assert {k: v for k, v in after.items() if LOCK_NAME not in k} == before


def test_lock_is_held_during_the_run_and_released_after(syn_data, tmp_path):
    out = tmp_path / "r"
    seen = []

    def probe(state):
        with pytest.raises(RunLockedError):
            RunLock(out).acquire()
        seen.append(state["epoch"])

    train(tiny_config(syn_data, out, **{"train.epochs": 2}), callbacks=[probe], show_progress=False)
    assert seen == [1, 2]
    assert not (out / LOCK_NAME).exists()
    with RunLock(out):  # free again
        pass


def test_stale_lock_of_a_dead_process_is_named_and_taken_over(syn_data, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (out / LOCK_NAME).write_text(f'{{"pid": {pid}, "host": "h", "started": "2024-01-01T00:00:00"}}\n')
    train(tiny_config(syn_data, out, **{"train.epochs": 1}), show_progress=False)
    log = (out / "train.log").read_text()
    assert "stale lock" in log and f"pid {pid}" in log


def test_new_run_over_a_finished_run_is_refused(syn_data, run_copy):
    before = checksums(*_run_files(run_copy))
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny_config(syn_data, run_copy, **{"train.epochs": 1}), show_progress=False)
    assert checksums(*_run_files(run_copy)) == before


def test_failed_start_leaves_no_empty_run_folder(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(Exception, match="does not exist"):
        train(tiny_config(tmp_path / "missing_data", out), show_progress=False)
    assert not out.exists()


# ---------------------------------------------------------------- predict


def test_predict_refuses_existing_outputs_without_overwrite(trained, syn_data, tmp_path):
    ckpt = trained / "checkpoints" / "best.pt"
    out = tmp_path / "pred"
    code, _ = cli("predict", "-k", ckpt, "-i", syn_data / "val", "-o", out)
    assert code == 0
    before = checksums(out)
    code, text = cli("predict", "-k", ckpt, "-i", syn_data / "val", "-o", out)
    assert code == 1 and "already exist" in text and "--overwrite" in text
    assert str(out / "masks" / "syn_0000.png") in text
    assert checksums(out) == before
    code, _ = cli("predict", "-k", ckpt, "-i", syn_data / "val", "-o", out, "--overwrite")
    assert code == 0


@pytest.mark.parametrize("target", ["split", "images_folder", "one_image"])
def test_predict_never_writes_into_the_ground_truth(target, trained, data_copy):
    split = data_copy / "val"
    inp = {"split": split, "images_folder": split / "images", "one_image": split / "images" / "syn_0001.png"}[target]
    before = checksums(data_copy)
    code, text = cli("predict", "-k", trained / "checkpoints" / "best.pt", "-i", inp, "-o", split, "--overwrite")
    assert code == 1 and "ground-truth" in text and str(split / "masks") in text
    assert checksums(data_copy) == before


def test_predict_refuses_writing_into_the_input_folder(trained, tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(folder / "x.png")
    before = checksums(folder)
    code, text = cli("predict", "-k", trained / "checkpoints" / "best.pt", "-i", folder, "-o", tmp_path,
                     "--overwrite")
    assert code == 1 and "input folder" in text
    assert checksums(folder) == before


def test_predict_colliding_stems_get_unique_names(trained, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(inp / "a.png")
    Image.fromarray(rng.integers(0, 255, (28, 16, 3), dtype=np.uint8)).save(inp / "a.jpg")
    code, text = cli("predict", "-k", trained / "checkpoints" / "best.pt", "-i", inp, "-o", tmp_path / "o")
    assert code == 0, text
    masks = sorted(p.name for p in (tmp_path / "o" / "masks").iterdir())
    assert masks == ["a_jpg.png", "a_png.png"]
    assert Image.open(tmp_path / "o" / "masks" / "a_jpg.png").size == (16, 28)
    assert Image.open(tmp_path / "o" / "masks" / "a_png.png").size == (24, 20)


def test_colliding_stems_that_stay_ambiguous_are_refused_naming_both(tmp_path):
    from mambaseg.inference.predictor import output_names

    files = [tmp_path / "a.png", tmp_path / "a.PNG"]
    with pytest.raises(ValueError, match="a.png.*a.PNG"):
        output_names(files)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_volume_prediction_refuses_to_overwrite(suffix, trained, tmp_path):
    vol = np.random.default_rng(0).random((2, 20, 20)).astype(np.float32)
    src = tmp_path / f"case{suffix}"
    np.save(src, vol) if suffix == ".npy" else np.savez(src, image=vol)
    out = tmp_path / "o"
    code, text = cli("predict", "-k", trained / "checkpoints" / "best.pt", "-i", src, "-o", out)
    assert code == 0, text
    before = checksums(out)
    code, text = cli("predict", "-k", trained / "checkpoints" / "best.pt", "-i", src, "-o", out)
    assert code == 1 and f"case_pred{suffix}" in text and "--overwrite" in text
    assert checksums(out) == before


# ---------------------------------------------------------------- class 5: leftovers


def test_killed_checkpoint_write_leftovers_are_removed_on_the_next_start(syn_data, run_copy):
    ckpt_dir = run_copy / "checkpoints"
    tmp_ckpt = ckpt_dir / ".last.pt.k3j_9zq1.tmp"
    tmp_json = run_copy / ".metrics.json.ab12cd34.tmp"
    keep = [ckpt_dir / "notes.tmp", run_copy / ".hidden.tmp", ckpt_dir / "mine.txt"]
    for p in (tmp_ckpt, tmp_json, *keep):
        p.write_bytes(b"partial")
    train(tiny_config(syn_data, run_copy, **{"train.epochs": 2}), resume=True, show_progress=False)
    assert not tmp_ckpt.exists() and not tmp_json.exists()
    assert all(p.read_bytes() == b"partial" for p in keep)  # only the atomic writer's own temporaries go
    log = (run_copy / "train.log").read_text()
    assert str(tmp_ckpt) in log and "killed while writing" in log


def test_a_failed_write_leaves_no_temporary_and_keeps_the_previous_file(run_copy, monkeypatch):
    import errno

    import torch

    from mambaseg.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint

    target = run_copy / "checkpoints" / "last.pt"
    before = checksums(target)
    payload = load_checkpoint(target)

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointWriteError):
        save_checkpoint(target, payload)
    assert checksums(target) == before
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
