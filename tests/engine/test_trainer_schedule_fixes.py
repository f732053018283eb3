"""Trainer: early rejection of invalid options (grad_clip, ema_decay, warm-up), the rebuilt schedule after a resume
with more epochs, the learning rate logged per step, a warm-up longer than the run (kept, with a warning), and the
TensorBoard curves of a resumed run (no point twice)."""

from __future__ import annotations

import json

import pytest
import yaml

import mambaseg.engine.trainer as trainer_mod
from engine_helpers import tiny_config
from mambaseg.engine import TrainingInterrupted, train
from mambaseg.engine.run_logger import RunLogger


@pytest.mark.parametrize("sets, message", [
    ({"train.grad_clip": -1.0}, r"train\.grad_clip must be > 0, or 0/null for no clipping; got -1"),
    ({"train.grad_clip": float("nan")}, r"train\.grad_clip must be > 0, or 0/null for no clipping"),
    ({"train.grad_clip": float("inf")}, r"train\.grad_clip must be > 0, or 0/null for no clipping"),
    ({"train.ema_decay": 1.5}, r"train\.ema_decay must be in \(0, 1\)"),
    ({"schedule.warmup": -2}, r"schedule\.warmup must be >= 0"),
])
def test_invalid_options_fail_before_a_run_folder_is_written(tiny_model, synthetic_data, tmp_path, sets, message):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train(tiny_config(synthetic_data, out, **sets), show_progress=False)
    assert not out.exists()  # no config.yaml / train.log left behind


def test_grad_clip_zero_and_null_mean_no_clipping(tiny_model, synthetic_data, tmp_path):
    for i, clip in enumerate((0.0, None)):
        train(tiny_config(synthetic_data, tmp_path / f"r{i}", **{"train.grad_clip": clip, "train.epochs": 1}))


def _record_lrs(monkeypatch):
    """The learning rate each training step runs with (read at its forward), and the ``train_step/lr`` scalars."""
    used, logged = [], []
    forward = trainer_mod._forward

    def spy(run, x):
        used.append(run.optimizer.param_groups[0]["lr"])
        return forward(run, x)

    scalars = RunLogger.scalars

    def spy_scalars(self, values, step, prefix="", **kw):
        if prefix == "train_step/":
            logged.append(values["lr"])
        return scalars(self, values, step, prefix, **kw)

    monkeypatch.setattr(trainer_mod, "_forward", spy)
    monkeypatch.setattr(RunLogger, "scalars", spy_scalars)
    return used, logged


def test_logged_lr_is_the_rate_of_the_step(tiny_model, synthetic_data, tmp_path, monkeypatch):
    used, logged = _record_lrs(monkeypatch)
    out = tmp_path / "run"
    train(tiny_config(synthetic_data, out, **{"schedule.warmup": 2}))  # 3 epochs x 2 steps, per-step cosine
    assert len(used) == len(logged) == 6 and len(set(used)) > 2
    assert logged == used
    hist = json.loads((out / "history.json").read_text())
    # an epoch's record: the rate of its last step (not the next epoch's first)
    assert [r["lr"] for r in hist] == [used[1], used[3], used[5]]


def test_resume_with_more_epochs_follows_the_rebuilt_schedule(tiny_model, synthetic_data, tmp_path, monkeypatch):
    used, _ = _record_lrs(monkeypatch)
    train(tiny_config(synthetic_data, tmp_path / "long", **{"train.epochs": 4}))
    long_run = list(used)
    used.clear()
    part = tmp_path / "part"
    train(tiny_config(synthetic_data, part, **{"train.epochs": 2}))
    assert len(used) == 4
    used.clear()
    train(tiny_config(synthetic_data, part, **{"train.epochs": 4}), resume=True)
    # the resumed steps 5-8 run on the 4-epoch schedule, the first one included (not the 2-epoch run's last rate)
    assert used == long_run[4:]


def test_exact_resume_keeps_the_same_rates(tiny_model, synthetic_data, tmp_path, monkeypatch):
    used, _ = _record_lrs(monkeypatch)
    train(tiny_config(synthetic_data, tmp_path / "full"))
    full = list(used)
    used.clear()

    def kill(state):
        if state["epoch"] == 1:
            raise TrainingInterrupted("simulated kill")

    part = tmp_path / "part"
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(synthetic_data, part), callbacks=[kill])
    train(tiny_config(synthetic_data, part), resume=True)
    assert used == full  # bit for bit


def test_a_warmup_longer_than_the_run_is_kept_with_a_warning(tiny_model, synthetic_data, tmp_path, monkeypatch):
    used, _ = _record_lrs(monkeypatch)
    out = tmp_path / "run"
    # a smoke run of 2 epochs x 2 steps (4 steps) with a 10-step warm-up: kept as configured, said loudly
    train(tiny_config(synthetic_data, out, **{"schedule.warmup": 10, "train.epochs": 2}))
    log = " ".join((out / "train.log").read_text().split())
    assert "schedule.warmup=10 steps is not shorter than this run's schedule of 4 steps" in log
    assert yaml.safe_load((out / "config.yaml").read_text())["schedule"]["warmup"] == 10
    assert used == pytest.approx([5e-3 * (t + 1) / 10 for t in range(4)])  # the linear climb, never the peak


def test_plateau_with_a_warmup_says_it_is_ignored(tiny_model, synthetic_data, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(synthetic_data, out, **{"schedule.name": "plateau", "schedule.warmup": 3, "train.epochs": 1}))
    assert "schedule.warmup=3 is ignored by the plateau schedule" in (out / "train.log").read_text()


def _tb_points(folder, tag):
    """(step, value) of ``tag`` as TensorBoard reads ``folder`` (its purge of orphaned points applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_resumed_run_has_no_tensorboard_point_twice(tiny_model, synthetic_data, tmp_path):
    """A run killed after its last checkpoint logged an epoch that ``--resume`` trains again: TensorBoard shows
    that epoch (and its steps) once, with the values of the resumed run, on both axes (epoch and step)."""
    import shutil

    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    cfg = {"train.epochs": 2, "train.log_every": 1}
    train(tiny_config(synthetic_data, out, **cfg))  # epochs 1-2, steps 1-4; last.pt holds epoch 2
    shutil.copy(out / "checkpoints" / "last.pt", tmp_path / "epoch2.pt")
    cfg["train.epochs"] = 3
    train(tiny_config(synthetic_data, out, **cfg), resume=True)  # epoch 3 (steps 5-6) logged ...
    shutil.copy(tmp_path / "epoch2.pt", out / "checkpoints" / "last.pt")  # ... then lost with its checkpoint
    train(tiny_config(synthetic_data, out, **cfg), resume=True)  # epoch 3 again
    hist = json.loads((out / "history.json").read_text())
    epochs = _tb_points(out / "tb", "train/loss")
    assert [s for s, _ in epochs] == [1, 2, 3]
    assert [v for _, v in epochs] == pytest.approx([r["train_loss"] for r in hist], rel=1e-6)
    steps = _tb_points(out / "tb" / "steps", "train_step/loss")
    assert [s for s, _ in steps] == [1, 2, 3, 4, 5, 6]


def test_run_logger_resume_point_comes_before_the_first_scalars(tmp_path):
    log = RunLogger(tmp_path)
    log.scalars({"loss": 1.0}, step=1, prefix="train/")
    with pytest.raises(RuntimeError, match="before the first scalars"):
        log.resume_at(epoch=1, step=2)
    with pytest.raises(ValueError, match="axis must be one of"):
        log.scalars({"loss": 1.0}, step=1, axis="batch")
    log.close()


def test_resuming_a_run_of_the_one_folder_layout_keeps_its_step_history(tmp_path):
    """A run whose tb/ holds per-step points beside the per-epoch ones (written before tb/steps/): the resumed
    run keeps logging there, with one purge at the step, so no earlier step point disappears."""
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    old = SummaryWriter(log_dir=str(tmp_path / "tb"))
    for s in range(1, 9):
        old.add_scalar("train_step/loss", 1.0 / s, s)
    for e in (1, 2):
        old.add_scalar("train/loss", 1.0 / e, e)
    old.close()
    log = RunLogger(tmp_path)
    log.resume_at(epoch=2, step=8)
    for s in (9, 10):
        log.scalars({"loss": 0.05}, s, prefix="train_step/", axis="step")
    log.scalars({"loss": 0.3}, 3, prefix="train/")
    log.close()
    assert not (tmp_path / "tb" / "steps").exists()
    assert [s for s, _ in _tb_points(tmp_path / "tb", "train_step/loss")] == list(range(1, 11))
    assert [s for s, _ in _tb_points(tmp_path / "tb", "train/loss")] == [1, 2, 3]
    assert "earlier layout" in (tmp_path / "train.log").read_text()
