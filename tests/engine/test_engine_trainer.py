"""Trainer: run-directory outputs, resume equality, NaN stop, max-steps, best-checkpoint selection."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from engine_helpers import tiny_config
from mambaseg.engine import TrainingDiverged, TrainingInterrupted, evaluate_checkpoint, load_checkpoint, train


def _weights(path):
    return load_checkpoint(path)["state_dict"]


def test_run_directory_outputs(tiny_model, synthetic_data, tmp_path):
    out = tmp_path / "run"
    res = train(tiny_config(synthetic_data, out, **{"train.epochs": 2}))
    for name in ("config.yaml", "metrics.json", "history.json", "progress.png", "train.log",
                 "checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/best.safetensors"):
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0
    assert metrics["dice"] == pytest.approx(metrics["pooled"]["dsc"])
    assert {"pooled", "per_case", "best_epoch", "train"} <= set(metrics)
    assert metrics["per_case"]["reduction"] == "per_case"
    assert metrics["train"]["device"] == "cpu" and metrics["train"]["device_name"] == "cpu"
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["name"] == tiny_model and cfg["train"]["epochs"] == 2
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["model"]["name"] == tiny_model
    assert ck["normalization"] is not None and len(ck["normalization"]["mean"]) == 3
    assert ck["label_map"] == {"background": 0, "foreground": 255}
    assert {"optimizer", "scheduler", "scaler", "rng", "config", "library_version"} <= set(ck)
    assert len(res.history) == 2 and res.steps == 4


def _full_and_resumed_runs(data, tmp_path, sets=None, *, resume_from_file=False, before_resume=None):
    """Train ``full`` uninterrupted; train ``part`` with the same settings, killed after epoch 1, call
    ``before_resume(part)``, then resume it (``resume=True``, or its ``last.pt`` path) to the end. Returns both
    run directories."""
    sets = sets or {}
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(data, full, **sets))

    def kill_after_first_epoch(state):
        if state["epoch"] == 1:
            raise TrainingInterrupted("simulated kill")

    with pytest.raises(TrainingInterrupted):
        train(tiny_config(data, part, **sets), callbacks=[kill_after_first_epoch])
    if before_resume is not None:
        before_resume(part)
    train(tiny_config(data, part, **sets), resume=part / "checkpoints" / "last.pt" if resume_from_file else True)
    return full, part


def test_resume_equals_uninterrupted(tiny_model, synthetic_data, tmp_path):
    def check_then_scramble_rng(part):
        assert load_checkpoint(part / "checkpoints" / "last.pt")["epoch"] == 1
        # scramble the global RNG: resume must not depend on the state of the resuming process
        torch.manual_seed(12345)

    full, part = _full_and_resumed_runs(synthetic_data, tmp_path, before_resume=check_then_scramble_rng)
    a, b = _weights(full / "checkpoints" / "last.pt"), _weights(part / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma = json.loads((full / "metrics.json").read_text())
    mb = json.loads((part / "metrics.json").read_text())
    assert ma["dice"] == mb["dice"] and ma["best_epoch"] == mb["best_epoch"]
    assert len(load_checkpoint(part / "checkpoints" / "last.pt")["history"]) == 3
    # the time of the whole run survives the resume: epoch_seconds_total sums all 3 epochs' times (the one done
    # before the interruption, restored from its checkpoint, included); 'seconds' is the resumed process's loop
    hist = json.loads((part / "history.json").read_text())
    times = [r["time"] for r in hist]
    assert len(times) == 3 and all(s > 0 for s in times)
    assert mb["train"]["epoch_seconds_total"] == pytest.approx(sum(times), abs=2e-3)
    assert mb["train"]["resumed"] and not ma["train"]["resumed"]
    assert mb["train"]["seconds"] >= sum(times[1:]) - 2e-3


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_model, synthetic_data, tmp_path):
    out = tmp_path / "nan"
    # 2 steps per epoch: the 4th training forward (epoch 2, step 2) returns NaN
    cfg = tiny_config(synthetic_data, out, **{"model.kwargs": {"nan_after": 4}})
    with pytest.raises(TrainingDiverged, match=r"NaN/inf at epoch 2, step 4.*last good checkpoint"):
        train(cfg)
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert "diverged" in (out / "train.log").read_text()


def test_max_steps_caps_optimizer_steps(tiny_model, synthetic_data, tmp_path):
    res = train(tiny_config(synthetic_data, tmp_path / "cap", **{"train.max_steps": 3, "train.epochs": 10}))
    assert res.steps == 3 and res.epochs == 2
    m = json.loads((tmp_path / "cap" / "metrics.json").read_text())
    assert "max_steps" in m["train"]["stop_reason"]


def test_best_checkpoint_tracks_validation_metric(tiny_model, synthetic_data, tmp_path):
    out = tmp_path / "best"
    res = train(tiny_config(synthetic_data, out, **{"train.best_metric": "loss", "train.best_mode": "min"}))
    vals = [r["val"]["loss"] for r in res.history]
    assert res.best_epoch == 1 + vals.index(min(vals))
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["epoch"] == res.best_epoch and "optimizer" not in best
    # the evaluator reproduces the numbers stored for the best checkpoint
    ev = evaluate_checkpoint(out / "checkpoints" / "best.pt", synthetic_data, device="cpu")
    m = json.loads((out / "metrics.json").read_text())
    assert ev["dice"] == m["dice"] and ev["per_case"]["dsc"] == m["per_case"]["dsc"]
    assert ev["loss"] == pytest.approx(m["loss"], rel=1e-6)


def test_unknown_best_metric_is_a_clear_error(tiny_model, synthetic_data, tmp_path):
    with pytest.raises(KeyError, match="available"):
        train(tiny_config(synthetic_data, tmp_path / "x", **{"train.best_metric": "nope", "train.epochs": 1}))


def test_resume_equals_uninterrupted_with_vmunet(synthetic_data, tmp_path):
    # the same check with a real (narrow) VM-UNet: drop path on, so RNG restoration matters
    sets = {"model.name": "vmunet_tiny", "model.kwargs": {"dims": 8, "d_state": 2, "drop_path_rate": 0.2},
            "train.epochs": 2}
    full, part = _full_and_resumed_runs(synthetic_data, tmp_path, sets, resume_from_file=True)
    a, b = _weights(full / "checkpoints" / "last.pt"), _weights(part / "checkpoints" / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_every_and_callback_stop(tiny_model, synthetic_data, tmp_path):
    out = tmp_path / "every"
    saved_epochs = []

    def watch(state):
        p = out / "checkpoints" / "last.pt"
        saved_epochs.append(load_checkpoint(p)["epoch"] if p.is_file() else None)
        return state["epoch"] == 3  # a clean stop request (e.g. a time budget) after epoch 3

    res = train(tiny_config(synthetic_data, out, **{"train.epochs": 5, "train.checkpoint_every": 2}),
                callbacks=[watch])
    assert saved_epochs == [None, 2, 2]
    assert res.epochs == 3 and "callback" in res.metrics["train"]["stop_reason"]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 3  # written when stopping
    assert (out / "progress.png").is_file() and (out / "metrics.json").is_file()


def test_persistent_workers_draw_the_run_from_one_iterator_with_the_same_batches(tiny_model, synthetic_data, tmp_path,
                                                                                 monkeypatch):
    import mambaseg.engine.trainer as trainer_mod

    starts = []

    class RecordingLoader(trainer_mod.DataLoader):
        def __iter__(self):
            starts.append(self.num_workers)
            return super().__iter__()

    monkeypatch.setattr(trainer_mod, "DataLoader", RecordingLoader)
    runs = {}
    for name, persistent in (("a", True), ("b", True), ("c", False)):
        starts.clear()
        sets = {"train.epochs": 3, "data.num_workers": 1, "data.persistent_workers": persistent}
        res = train(tiny_config(synthetic_data, tmp_path / name, **sets))
        assert res.epochs == 3
        # the training loader: one iterator for the run (workers live across epoch ends), or one per epoch
        assert starts == ([1] if persistent else [1, 1, 1]), (name, starts)
        runs[name] = _weights(tmp_path / name / "checkpoints" / "last.pt")
    for other in ("b", "c"):  # same batches and augmentation draws whether workers persist or not
        assert all(torch.equal(runs["a"][k], runs[other][k]) for k in runs["a"]), other


def test_time_limit_stops_after_the_epoch_that_crosses_it(tiny_model, synthetic_data, tmp_path):
    out = tmp_path / "timed"
    res = train(tiny_config(synthetic_data, out, **{"train.epochs": 4, "train.time_limit_s": 1e-6}))
    assert res.epochs == 1  # the first epoch already ends past the limit
    assert "time_limit_s" in res.metrics["train"]["stop_reason"]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert (out / "metrics.json").is_file()
    log = (out / "train.log").read_text()  # says why it stopped and how to go on
    assert "stopped after epoch 1 of 4: train.time_limit_s=1e-06 reached; --resume continues the run from last.pt " \
           "(with a new train.time_limit_s budget)" in log
    with pytest.raises(ValueError, match="time_limit_s"):
        train(tiny_config(synthetic_data, tmp_path / "bad", **{"train.time_limit_s": 0}))


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run(synthetic_data, tmp_path):
    # train.compile with a real (narrow) VM-UNet: compiled forward and backward give the eager losses (epoch 2's
    # loss depends on epoch 1's gradients) up to float reassociation; no drop path (compiled random draws differ).
    # AdamW turns last-bit gradient differences of near-zero gradients into visible weight differences, so the
    # weights are compared loosely.
    sets = {"model.name": "vmunet_tiny", "model.kwargs": {"dims": 8, "d_state": 2, "drop_path_rate": 0.0},
            "train.epochs": 2}
    eager = train(tiny_config(synthetic_data, tmp_path / "eager", **sets))
    compiled = train(tiny_config(synthetic_data, tmp_path / "compiled", **{**sets, "train.compile": True}))
    assert compiled.steps == eager.steps > 1
    for he, hc in zip(eager.history, compiled.history, strict=True):
        assert abs(he["train_loss"] - hc["train_loss"]) <= 1e-4 * abs(he["train_loss"]), (he, hc)
    a = _weights(tmp_path / "eager" / "checkpoints" / "last.pt")
    b = _weights(tmp_path / "compiled" / "checkpoints" / "last.pt")
    for k in a:
        assert float((a[k] - b[k]).norm()) <= 0.1 * float(a[k].norm()) + 1e-6, k


def test_an_interrupted_run_says_which_epoch_resume_continues_from(tiny_model, synthetic_data, tmp_path):
    # Ctrl-C does not write last.pt: the message names the epoch it holds and the epochs a resume trains again
    out = tmp_path / "int"

    def interrupt(state):
        if state["epoch"] == 3:
            raise KeyboardInterrupt

    cfg = tiny_config(synthetic_data, out, **{"train.epochs": 5, "train.checkpoint_interval_s": 1e6})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[interrupt])
    log = (out / "train.log").read_text()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert "interrupted in epoch 3 (step " in log and f"{out / 'checkpoints' / 'last.pt'} holds epoch 1, so " \
           "--resume continues from there and trains epochs 2..3 again" in log


def test_the_run_header_says_what_each_split_counts():
    # the info's n_train / n_val counted slices beside volumes without saying so (audit)
    from types import SimpleNamespace

    from mambaseg.data.volumetric import SliceDataset2D, VolumeDataset
    from mambaseg.engine.trainer import _sizes

    class Slices(SliceDataset2D):
        def __init__(self):
            pass

        def __len__(self):
            return 658

    class Volumes(VolumeDataset):
        def __init__(self):
            pass

        def __len__(self):
            return 20

    assert _sizes(SimpleNamespace(datasets={"train": Slices(), "val": Volumes(), "test": None})) == \
        "train 658 slices, val 20 volumes"
