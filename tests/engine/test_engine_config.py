"""Config schema, recipes, overrides and the learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from mambaseg.configs import (
    ConfigError,
    RunConfig,
    ScheduleConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    list_recipes,
    load_config,
    load_recipe,
    save_config,
)
from mambaseg.engine.optim import build_optimizer, build_scheduler, schedule_factor


def test_recipes_load_and_match_the_vmunet_isic_recipe():
    names = list_recipes()
    assert {"vmunet_isic17", "vmunet_isic18", "vmunet_ph2", "demo"} <= set(names)
    for n in names:
        assert isinstance(load_recipe(n), RunConfig)
    c = load_recipe("vmunet_ph2")
    assert c.model.name == "vmunet" and c.data.image_size == [256, 256]
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.betas) == ("adamw", 1e-3, 1e-2, [0.9, 0.999])
    assert (c.schedule.name, c.schedule.t_max, c.schedule.eta_min, c.schedule.interval) == ("cosine", 50, 1e-5, "epoch")
    assert (c.train.epochs, c.train.batch_size, c.loss.name) == (300, 32, "bce_dice")


def test_overrides_types_and_errors():
    c = apply_overrides(RunConfig(), ["optim.lr=5e-4", "train.max_steps=10", "data.image_size=[192,256]",
                                      "model.kwargs.drop_path_rate=0.1", "train.grad_clip=null", "data.augment=false"])
    assert c.optim.lr == 5e-4 and c.train.max_steps == 10 and c.data.image_size == [192, 256]
    assert c.model.kwargs == {"drop_path_rate": 0.1} and c.train.grad_clip is None and c.data.augment is False
    with pytest.raises(ConfigError, match="unknown config field 'train.epoch'"):
        apply_overrides(c, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        apply_overrides(c, ["train.epochs=three"])
    with pytest.raises(ConfigError, match="section.field=value"):
        apply_overrides(c, ["train.epochs"])
    with pytest.raises(ConfigError, match="unknown field"):
        config_from_dict({"optim": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_recipe("nope")


def test_save_and_load_round_trip(tmp_path):
    c = apply_overrides(load_recipe("demo"), ["train.epochs=7", "model.arch={'genes': [1, 2]}"])
    save_config(c, tmp_path / "config.yaml")
    assert config_to_dict(load_config(tmp_path / "config.yaml")) == config_to_dict(c)
    child = tmp_path / "child.yaml"
    child.write_text("base: vmunet_isic17\ntrain:\n  epochs: 5\n")
    cc = load_config(child)
    assert cc.train.epochs == 5 and cc.optim.lr == 1e-3


def test_cosine_matches_torch_cosine_annealing_beyond_t_max():
    p = torch.nn.Parameter(torch.zeros(1))
    ours = torch.optim.SGD([p], lr=1e-3)
    ref = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    s_ours = build_scheduler(ours, ScheduleConfig(name="cosine", t_max=50, eta_min=1e-5), epochs=300, steps_per_epoch=3)
    s_ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=50, eta_min=1e-5)
    for _ in range(250):  # periodic: back at the peak at epochs 100 and 200 (VM-UNet's 300-epoch behaviour)
        assert ours.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        ours.step()
        ref.step()
        s_ours.step()
        s_ref.step()
    f = schedule_factor(ScheduleConfig(name="cosine", t_max=50, eta_min=1e-5), 1e-3, 300)
    assert f(100) == pytest.approx(1.0) and f(50) == pytest.approx(1e-2)


def test_warmup_poly_and_restarts():
    f = schedule_factor(ScheduleConfig(name="poly", warmup=4, power=1.0, t_max=None), 1.0, 14)
    assert [f(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(9) == pytest.approx(0.5) and f(14) == 0.0
    p = torch.nn.Parameter(torch.zeros(1))
    ref_opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(ref_opt, T_0=5, T_mult=2, eta_min=0.01)
    g = schedule_factor(ScheduleConfig(name="cosine_restarts", t_max=5, t_mult=2, eta_min=0.01), 1.0, 100)
    for t in range(40):
        assert g(t) == pytest.approx(ref_opt.param_groups[0]["lr"], abs=1e-9)
        ref_opt.step()
        ref.step()
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_factor(ScheduleConfig(name="linear"), 1.0, 10)


def test_optimizer_from_config():
    m = torch.nn.Linear(2, 2)
    opt = build_optimizer(m, RunConfig().optim)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["weight_decay"] == 1e-2 and opt.param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(m, apply_overrides(RunConfig(), ["optim.name=lion"]).optim)
    assert math.isclose(build_optimizer(m, apply_overrides(RunConfig(), ["optim.name=sgd"]).optim)
                        .param_groups[0]["momentum"], 0.9)


def test_bare_yaml_off_on_in_a_string_field():
    """YAML reads a bare off/on as a boolean: a string field takes it back as the word ('train.amp=off')."""
    import yaml

    assert apply_overrides(RunConfig(), ["train.amp=off"]).train.amp == "off"
    assert apply_overrides(RunConfig(), ["train.amp=on"]).train.amp == "on"
    assert config_from_dict(yaml.safe_load("train: {amp: off}")).train.amp == "off"
    # boolean fields are unchanged
    cfg = apply_overrides(RunConfig(), ["train.deterministic=on", "train.cuda_graph=off"])
    assert cfg.train.deterministic is True and cfg.train.cuda_graph is False
