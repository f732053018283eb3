"""schedule.warmup: negative refused, one not shorter than the schedule kept with a warning, ignored by plateau;
the shipped recipes fit their own runs."""

from __future__ import annotations

import pytest
import torch

from mambaseg.configs import ScheduleConfig, list_recipes, load_recipe
from mambaseg.engine.optim import build_scheduler, schedule_length, warmup_note


def _opt():
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)


def test_schedule_length():
    step, epoch = ScheduleConfig(interval="step"), ScheduleConfig(interval="epoch")
    assert schedule_length(step, epochs=3, steps_per_epoch=5) == 15
    assert schedule_length(step, epochs=3, steps_per_epoch=5, max_steps=7) == 7
    assert schedule_length(epoch, epochs=3, steps_per_epoch=5, max_steps=7) == 2


def test_a_negative_warmup_is_refused():
    with pytest.raises(ValueError, match=r"schedule\.warmup must be >= 0 \(0 = no warm-up\), got -1"):
        build_scheduler(_opt(), ScheduleConfig(interval="step", warmup=-1), epochs=3, steps_per_epoch=5)


@pytest.mark.parametrize("warmup, interval, total, unit", [(15, "step", 15, "steps"), (40, "step", 15, "steps"),
                                                           (3, "epoch", 3, "epochs")])
def test_a_warmup_not_shorter_than_the_schedule_is_kept_with_a_warning(warmup, interval, total, unit):
    cfg = ScheduleConfig(name="cosine", interval=interval, warmup=warmup)
    notes: list[str] = []
    sched = build_scheduler(_opt(), cfg, epochs=3, steps_per_epoch=5, notes=notes)
    assert len(notes) == 1
    assert f"schedule.warmup={warmup} {unit} is not shorter than this run's schedule of {total} {unit}" in notes[0]
    assert sched.lr_lambdas[0](total - 1) == pytest.approx(min(total, warmup) / warmup)  # still climbing: kept
    with pytest.warns(UserWarning, match="is not shorter than this run's schedule"):
        build_scheduler(_opt(), cfg, epochs=3, steps_per_epoch=5)


def test_a_warmup_that_fits_has_no_note_also_for_one_cycle():
    for name in ("cosine", "one_cycle"):
        assert warmup_note(ScheduleConfig(name=name, interval="step", warmup=14), 15) == ""
        assert "not shorter" in warmup_note(ScheduleConfig(name=name, interval="step", warmup=15), 15)


def test_plateau_ignores_the_warmup_and_says_so():
    notes: list[str] = []
    cfg = ScheduleConfig(name="plateau", warmup=5)
    sched = build_scheduler(_opt(), cfg, epochs=2, steps_per_epoch=1, notes=notes)
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert len(notes) == 1 and "ignored by the plateau schedule" in notes[0]
    with pytest.warns(UserWarning, match="ignored by the plateau schedule"):
        build_scheduler(_opt(), cfg, epochs=2, steps_per_epoch=1)
    notes.clear()
    build_scheduler(_opt(), ScheduleConfig(name="plateau"), epochs=2, steps_per_epoch=1, notes=notes)
    assert notes == []


@pytest.mark.parametrize("name", list_recipes())
def test_shipped_recipes_fit_their_own_runs(name):
    cfg = load_recipe(name)
    for steps_per_epoch in (5, 37):  # short and typical epochs
        notes: list[str] = []
        build_scheduler(_opt(), cfg.schedule, epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch,
                        max_steps=cfg.train.max_steps, notes=notes)
        assert notes == []


def test_one_cycle_too_short_for_its_own_decay_says_so():
    # 2 epochs: the 30 % rise takes 1, so the last epoch trained at the peak rate without a word (audit)
    note = warmup_note(ScheduleConfig(name="one_cycle", interval="epoch"), 2)
    assert "one_cycle over 2 epochs rises for 1 and trains its last epoch at the peak" in note
    assert warmup_note(ScheduleConfig(name="one_cycle", interval="epoch"), 5) == ""  # 2 epochs of decay inside
    assert warmup_note(ScheduleConfig(name="cosine", interval="epoch"), 2) == ""
