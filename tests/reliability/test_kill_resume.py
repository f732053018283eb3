"""What already holds and must keep holding: a run killed (SIGKILL, SIGTERM, Ctrl-C, or in the middle of a
checkpoint write) resumes to bit-identical weights on CPU, and leaves no temporary file behind. Slow: each case
runs the CLI in child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow

_CHILD = r"""
import os, sys, time
sys.path.insert(0, {engine!r})
from engine_helpers import register_tiny
register_tiny()
if os.environ.get("STALL_SAVE_AT"):
    import torch
    real, calls = torch.save, [0]
    def slow_save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == int(os.environ["STALL_SAVE_AT"]):
            with open(f, "wb") as fh:
                fh.write(b"partial checkpoint")
            time.sleep(600)
        return real(obj, f, *a, **k)
    torch.save = slow_save
from mambaseg.cli import app
app()
"""


def _child(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    code = _CHILD.format(engine=str(REPO / "tests" / "engine"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-m", "_engine_test_tinyconv", "-d", str(data), "-o", str(out), "--epochs", "4",
            "--image-size", "32", "--device", "cpu", "--batch-size", "2", "--lr", "0.005", "--seed", "3",
            "--no-progress", "--set", "data.validate=false", "--threads", "1", *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def reference(syn_data, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = _child(_args(syn_data, out))
    assert proc.wait(timeout=600) == 0, proc.stdout.read()
    return _weights(out / "checkpoints" / "last.pt")


def _wait_for(pred, proc, timeout=300.0):
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT", "during_checkpoint_write"])
def test_killed_run_resumes_bit_identically(how, reference, syn_data, tmp_path):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"
    if how == "during_checkpoint_write":
        # the 3rd torch.save is last.pt after epoch 2 (best.pt, last.pt, [best.pt], last.pt ...): stall inside it
        proc = _child(_args(syn_data, out), {"STALL_SAVE_AT": "3"})
        # saves 1-2 are done once last.pt exists; a temporary file then is the stalled 3rd (an earlier one, seen
        # before last.pt, would be killed with no last.pt to resume from)
        _wait_for(lambda: last.is_file() and any(p.name.endswith(".tmp") for p in (out / "checkpoints").glob(".*")),
                  proc)
        proc.send_signal(signal.SIGKILL)
    else:
        proc = _child(_args(syn_data, out))
        _wait_for(last.is_file, proc)
        proc.send_signal(getattr(signal, how))
    rc = proc.wait(timeout=120)
    assert rc != 0
    if how == "SIGINT":
        assert rc == 130 and "interrupted" in proc.stdout.read()
    if how == "SIGTERM":
        assert rc == 143 and "error: terminated (SIGTERM)" in proc.stdout.read()
        assert "terminated (SIGTERM) in epoch" in (out / "train.log").read_text()
    # the same thread count as the reference (--threads auto counts idle cores: another count, another sum order)
    resumed = _child(["train", "--resume", "--out", str(out), "--no-progress", "--threads", "1"])
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    got = _weights(last)
    for k, v in reference.items():
        assert torch.equal(v, got[k]), k
    assert not [p for p in out.rglob("*.tmp")]
