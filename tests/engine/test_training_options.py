"""EMA of weights (validated and saved as the average, exact resume), the one_cycle schedule."""

from __future__ import annotations

import json

import pytest
import torch

from engine_helpers import tiny_config
from mambaseg.configs import ScheduleConfig
from mambaseg.engine import TrainingInterrupted, evaluate_checkpoint, load_checkpoint, train
from mambaseg.engine.ema import WeightEMA
from mambaseg.engine.optim import schedule_factor

EMA = {"train.ema_decay": 0.9}


def test_weight_ema_update_rule():
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = WeightEMA(lin, 0.5)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    ema.update(lin)  # decay warm-up: min(0.5, 1/10) = 0.1 -> 0.1 * 1 + 0.9 * 3
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 2.8))
    ema.updates = 100
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema.update(lin)  # min(0.5, 101/110) = 0.5
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 1.4))
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEMA(lin, 1.0)


def test_ema_is_validated_and_saved_and_resumes_exactly(tiny_model, synthetic_data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(synthetic_data, full, **EMA))

    def kill(state):
        if state["epoch"] == 1:
            raise TrainingInterrupted("simulated kill")

    with pytest.raises(TrainingInterrupted):
        train(tiny_config(synthetic_data, part, **EMA), callbacks=[kill])
    torch.manual_seed(999)
    train(tiny_config(synthetic_data, part, **EMA), resume=True)
    a, b = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(part / "checkpoints" / "last.pt")
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
        assert torch.equal(a["ema"]["live_state_dict"][key], b["ema"]["live_state_dict"][key]), key
    assert a["ema"]["updates"] == b["ema"]["updates"] == 6
    # the saved state_dict is the average, not the live weights
    assert any(not torch.equal(a["state_dict"][k], a["ema"]["live_state_dict"][k]) for k in a["state_dict"]
               if a["state_dict"][k].is_floating_point())
    # metrics.json (validation of the average) = evaluating the saved best.pt
    m = json.loads((full / "metrics.json").read_text())
    ev = evaluate_checkpoint(full / "checkpoints" / "best.pt", synthetic_data, device="cpu")
    assert ev["dice"] == m["dice"]


def test_ema_resume_of_a_run_without_ema_is_refused(tiny_model, synthetic_data, tmp_path):
    out = tmp_path / "r"
    train(tiny_config(synthetic_data, out, **{"train.epochs": 1}))
    with pytest.raises(ValueError, match="ema_decay"):
        train(tiny_config(synthetic_data, out, **{"train.epochs": 2, **EMA}), resume=True)


def test_one_cycle_shape():
    f = schedule_factor(ScheduleConfig(name="one_cycle", eta_min=1e-6), 1e-3, 100)
    assert f(0) == pytest.approx(1 / 25)
    assert f(30) == pytest.approx(1.0)
    assert max(f(t) for t in range(100)) == pytest.approx(1.0)
    assert all(f(t) <= f(t - 1) for t in range(31, 101))
    assert f(100) == pytest.approx(1e-3)
    g = schedule_factor(ScheduleConfig(name="one_cycle", warmup=10, eta_min=0.0), 1e-3, 100)
    assert g(10) == pytest.approx(1.0) and g(5) < 1.0
