"""SIGTERM (a scheduler's preemption, ``kill``) during a CLI command: exit code 143 and a message, and a training
run says which epoch ``--resume`` continues from, as on Ctrl-C (it ended Python silently before)."""

from __future__ import annotations

import os
import signal

import pytest
from typer.testing import CliRunner

from mambaseg.cli import app
from mambaseg.utils.signals import Terminated, sigterm_raises

runner = CliRunner()
TINY = ["--model", "vmunet_tiny", "--set", "model.kwargs.dims=8", "--set", "model.kwargs.d_state=2",
        "--image-size", "32", "--batch-size", "2", "--threads", "1", "--device", "cpu", "--no-progress"]


def test_sigterm_during_training_exits_143_and_names_the_resume_epoch(tmp_path, monkeypatch):
    import mambaseg.engine.trainer as trainer_mod
    from mambaseg.data import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "syn", n_train=4, n_val=2, size=(32, 32), seed=0)
    out = tmp_path / "run"
    real, sent = trainer_mod._train_epoch, []

    def epoch(run, e, bar):
        if e == 2 and not sent:  # once, at the start of the third epoch
            sent.append(e)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(run, e, bar)

    monkeypatch.setattr(trainer_mod, "_train_epoch", epoch)
    before = signal.getsignal(signal.SIGTERM)
    res = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), "--epochs", "5", *TINY,
                              "--set", "train.checkpoint_interval_s=1e6"])
    assert res.exit_code == 143, res.output
    assert "error: terminated (SIGTERM)" in res.output
    log = (out / "train.log").read_text()
    assert f"terminated (SIGTERM) in epoch 3 (step 4): {out / 'checkpoints' / 'last.pt'} holds epoch 1, so " \
           "--resume continues from there and trains epochs 2..3 again" in log
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handler is gone with it
    res = runner.invoke(app, ["train", "--resume", "--out", str(out), "--threads", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert '"epoch": 5' in (out / "history.json").read_text()


def test_sigterm_raises_only_inside_the_block():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info:
        with sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at a bytecode boundary soon after the signal
                pass
    assert isinstance(info.value, KeyboardInterrupt) and Terminated.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_terminated_survives_pickling():
    # a process-pool worker (HD95 of volumes) that gets SIGTERM sends it back pickled
    import pickle

    back = pickle.loads(pickle.dumps(Terminated()))
    assert isinstance(back, Terminated) and str(back) == "terminated by SIGTERM"


def test_a_second_sigterm_while_unwinding_is_ignored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with sigterm_raises():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    pass
            finally:  # the unwinding (queued checkpoint writes) is not cut by another SIGTERM
                assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    pass
    assert signal.getsignal(signal.SIGTERM) is before


def test_importing_the_library_sets_no_signal_handler():
    import subprocess
    import sys

    code = ("import signal, mambaseg, mambaseg.cli, mambaseg.engine.trainer, mambaseg.inference; "
            "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "
            "signal.getsignal(signal.SIGINT) is signal.default_int_handler)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
