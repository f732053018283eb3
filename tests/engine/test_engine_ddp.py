"""DDP under torchrun (gloo, CPU, 2 processes): same training and the same metrics as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine_helpers import tiny_config
from mambaseg.engine import evaluate_checkpoint, load_checkpoint, train

HERE = Path(__file__).resolve().parent


def test_torchrun_two_processes_match_one(tiny_model, synthetic_data, tmp_path):
    single = tmp_path / "single"
    train(tiny_config(synthetic_data, single, **{"model.kwargs": {"p_drop": 0.0}, "train.epochs": 2}))

    ddp = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_train_script.py"), str(synthetic_data), str(ddp)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # only rank 0 wrote: one log, one set of checkpoints
    assert (ddp / "metrics.json").is_file() and (ddp / "checkpoints" / "best.pt").is_file()
    m1 = json.loads((single / "metrics.json").read_text())
    m2 = json.loads((ddp / "metrics.json").read_text())
    assert m2["train"]["processes"] == 2 and m1["train"]["processes"] == 1

    # same optimisation: global batch split over 2 processes, gradients averaged by DDP
    w1 = load_checkpoint(single / "checkpoints" / "last.pt")["state_dict"]
    w2 = load_checkpoint(ddp / "checkpoints" / "last.pt")["state_dict"]
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
    h1 = load_checkpoint(single / "checkpoints" / "last.pt")["history"]
    h2 = load_checkpoint(ddp / "checkpoints" / "last.pt")["history"]
    for a, b in zip(h1, h2):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    for key in ("dice", "iou", "per_case_dice"):
        assert m2[key] == pytest.approx(m1[key], abs=1e-3)

    # metric reduction across processes: the 2-process evaluation of best.pt equals a 1-process evaluation
    ev = evaluate_checkpoint(ddp / "checkpoints" / "best.pt", synthetic_data, device="cpu")
    for key in ("dice", "iou", "per_case_dice", "n_images"):
        assert ev[key] == m2[key], key
    assert ev["pooled"] == m2["pooled"] and ev["per_case"] == m2["per_case"]
    assert ev["loss"] == pytest.approx(m2["loss"], rel=1e-6)
