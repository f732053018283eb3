"""Optimizers and learning-rate schedules built from :class:`~mambaseg.configs.OptimConfig` / ``ScheduleConfig``.

Schedules are expressed as a factor of the base learning rate per schedule step (``torch.optim.lr_scheduler.LambdaLR``),
stepped once per epoch or once per optimizer step (``schedule.interval``); ``plateau`` wraps
``ReduceLROnPlateau`` and is stepped with the selection metric after each validation. All scheduler states are
plain dicts, so they fit in weights-only checkpoints.

Precisely, with ``lr`` the peak (``optim.lr``), ``T`` the schedule length (``train.epochs``, or epochs x steps per
epoch with ``interval: step``, either capped by ``train.max_steps``) and ``W`` = ``schedule.warmup``:

* warm-up: schedule step ``t < W`` trains at ``lr * (t + 1) / W``: linear, starting at ``lr / W`` and reaching the
  peak at its last unit (``t = W - 1``). It precedes ``cosine``, ``cosine_restarts``, ``poly`` and ``constant``.
* ``cosine`` follows PyTorch's ``CosineAnnealingLR`` closed form
  ``eta_min + (lr - eta_min) * (1 + cos(pi * t / P)) / 2`` with ``t`` counted from the end of the warm-up, which
  keeps oscillating beyond ``P`` (with VM-UNet's T_max 50 over 300 epochs the rate returns to its peak at epochs 100
  and 200, as in the original). ``t_max: null`` makes ``P = T - W``, one half-period over the rest of the run: the
  first step after the warm-up trains at the peak again, and ``eta_min`` is the value reached AFTER the final step
  (the last step trains slightly above it).
* ``poly`` is ``lr * (1 - t/(T - W))**power`` after the warm-up (0 after the final step).
* ``one_cycle`` is PyTorch's ``OneCycleLR`` shape: a cosine rise from lr/25 to the peak over ``W`` steps (30% of the
  run when ``W`` is 0) -- here ``warmup`` is the length of that rise, not an extra linear warm-up -- then a cosine
  decay over the remaining ``T - W`` steps to ``eta_min``, again the value after the final step.
* ``plateau`` ignores ``warmup`` (a warm-up set with it is reported when the run starts).

``warmup`` must be ``>= 0``. One that is not shorter than ``T`` is kept as configured (a smoke run of a long
recipe with ``--epochs 1``) but the run warns on the console and in ``train.log``, with the numbers: the
rate then only climbs and never decays (:func:`warmup_note`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
import torch.nn as nn

from mambaseg.configs import OptimConfig, ScheduleConfig

__all__ = [
    "build_optimizer",
    "build_scheduler",
        "schedule_factor",
    "schedule_length",
    "warmup_note",
    "OPTIMIZERS",
    "SCHEDULES",
]

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "cosine_restarts", "poly", "one_cycle", "constant", "plateau")


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """One parameter group with every trainable parameter (the recipes of the papers decay all weights)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    name = cfg.name.lower()
    if cfg.lr <= 0:
        raise ValueError(f"optim.lr must be > 0, got {cfg.lr}")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer optim.name={cfg.name!r}; valid: {', '.join(OPTIMIZERS)}")


def schedule_factor(cfg: ScheduleConfig, base_lr: float, total: int) -> Callable[[int], float]:
    """Factor of ``base_lr`` at schedule step ``t`` (0-based) for the non-plateau schedules.

    Args:
        cfg: schedule section.
        base_lr: the optimizer's peak learning rate.
        total: number of schedule steps in the run (epochs or optimizer steps); used when ``t_max`` is None.
    """
    name = cfg.name.lower()
    warm = max(int(cfg.warmup), 0)
    period = int(cfg.t_max) if cfg.t_max else max(total - warm, 1)
    floor = cfg.eta_min / base_lr

    def cosine(t: int) -> float:
        return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * t / period)) / 2.0

    def restarts(t: int) -> float:
        t_i, t_cur = period, t
        while t_cur >= t_i:
            t_cur -= t_i
            t_i *= max(int(cfg.t_mult), 1)
        return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * t_cur / t_i)) / 2.0

    def poly(t: int) -> float:
        span = max(total - warm, 1)
        return max(1.0 - t / span, 0.0) ** cfg.power

    def one_cycle(t: int) -> float:
        # PyTorch OneCycleLR (anneal_strategy="cos", div_factor=25): cosine rise from base/25 to base over the
        # warm-up (schedule.warmup, default 30% of the run), then cosine decay to eta_min over the rest
        rise = warm if warm else _one_cycle_rise(total)
        start = 1.0 / 25.0
        if t < rise:
            return start + (1.0 - start) * (1.0 - math.cos(math.pi * t / rise)) / 2.0
        span = max(total - rise, 1)
        return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * min(t - rise, span) / span)) / 2.0

    if name == "one_cycle":
        return one_cycle

    shapes: dict[str, Callable[[int], float]] = {
        "cosine": cosine,
        "cosine_restarts": restarts,
        "poly": poly,
        "constant": lambda t: 1.0,
    }
    if name not in shapes:
        raise ValueError(f"unknown schedule schedule.name={cfg.name!r}; valid: {', '.join(SCHEDULES)}")
    shape = shapes[name]

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        return shape(t - warm)

    return factor


def schedule_length(cfg: ScheduleConfig, *, epochs: int, steps_per_epoch: int, max_steps: int | None = None) -> int:
    """Schedule steps of the run (``T`` of the module docstring): epochs (``interval: epoch``) or optimizer steps
    (``interval: step``), capped by ``max_steps``; at least 1."""
    if cfg.interval == "epoch":
        total = epochs
        if max_steps:
            total = min(total, math.ceil(max_steps / max(steps_per_epoch, 1)))
    else:
        total = epochs * steps_per_epoch
        if max_steps:
            total = min(total, max_steps)
    return max(int(total), 1)


def _one_cycle_rise(total: int) -> int:
    """Steps of one_cycle's rise without a ``schedule.warmup``: 30 % of the run (OneCycleLR's pct_start), at least 1."""
    return max(int(round(0.3 * total)), 1)


def warmup_note(cfg: ScheduleConfig, total: int) -> str:
    """A warning about ``schedule.warmup`` for a run of ``total`` schedule steps ("" = none): a warm-up that is not
    shorter than the schedule (the rate never reaches ``optim.lr`` and never decays), or one ``plateau`` ignores.
    The run keeps the configured warm-up either way; the trainer prints the note and writes it to ``train.log``.

    Raises:
        ValueError: a negative warm-up.
    """
    warm = int(cfg.warmup)
    unit = "steps" if cfg.interval == "step" else "epochs"
    if warm < 0:
        raise ValueError(f"schedule.warmup must be >= 0 (0 = no warm-up), got {warm}")
    if cfg.name.lower() == "plateau":
        return (f"warning: schedule.warmup={warm} is ignored by the plateau schedule (it starts at optim.lr); "
                "set schedule.warmup=0 to silence this") if warm else ""
    if cfg.name.lower() == "one_cycle" and not warm and total - _one_cycle_rise(total) < 2:
        # its own rise (30 % of the run) leaves fewer than 2 steps of decay: the last epoch/step runs at the peak
        return (f"warning: schedule one_cycle over {total} {unit} rises for {_one_cycle_rise(total)} and "
                f"trains its last {unit[:-1]} at the peak optim.lr (the decay to eta_min comes after the final step); "
                "--set schedule.interval=step, or more epochs, for a decay inside the run")
    if warm >= total:
        return (f"warning: schedule.warmup={warm} {unit} is not shorter than this run's schedule of {total} {unit}: "
                f"the learning rate only climbs (to {min(warm, total)}/{warm} of optim.lr) and never decays; "
                f"--set schedule.warmup=N with N < {total} (0 = none) for a short run")
    return ""


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, *, epochs: int, steps_per_epoch: int,
    max_steps: int | None = None, best_mode: str = "max", notes: list[str] | None = None,
) -> Any:
    """Scheduler for the run; see the module docstring.

    Args:
        optimizer: the optimizer.
        cfg: schedule section (``interval`` ``epoch`` or ``step``).
        epochs: planned epochs.
        steps_per_epoch: optimizer steps per epoch.
        max_steps: optional cap on optimizer steps.
        best_mode: ``max``/``min`` direction of the selection metric (for ``plateau``).
        notes: a list that receives the warnings about the schedule (:func:`warmup_note`); ``None`` = issue them
            with :func:`warnings.warn`.

    Raises:
        ValueError: unknown interval or schedule, or a negative warm-up.
    """
    if cfg.interval not in ("epoch", "step"):
        raise ValueError(f"schedule.interval must be 'epoch' or 'step', got {cfg.interval!r}")
    total = schedule_length(cfg, epochs=epochs, steps_per_epoch=steps_per_epoch, max_steps=max_steps)
    note = warmup_note(cfg, total)
    if note and notes is not None:
        notes.append(note)
    elif note:
        warnings.warn(note, stacklevel=2)
    if cfg.name.lower() == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=best_mode, factor=cfg.factor, patience=cfg.patience, min_lr=cfg.eta_min
        )
    base = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(cfg, base, total))
