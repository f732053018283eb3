"""The training loop: one function, :func:`train`, driven by a :class:`~mambaseg.configs.RunConfig`.

What it does, in order:

1. picks the device (``train.device``; under ``torchrun`` the CUDA device named by ``LOCAL_RANK``) and joins the
   process group started by the launcher (gloo on CPU, NCCL on CUDA); it never sets environment variables;
2. opens the data with :func:`mambaseg.engine.open_data` (the layout's datasets, evaluator and label map; the
   input normalisation is computed from the training split, or taken from the checkpoint when resuming);
3. builds the model with ``create_model`` (seeded), the loss (``mambaseg.losses.create_loss``), AdamW/Adam/SGD and
   the schedule (:mod:`mambaseg.engine.optim`);
4. trains with bf16 autocast on CUDA (the scan kernels compute in fp32 whatever autocast says), gradient clipping,
   a finite-loss/gradient check every step (a NaN/inf stops the run with a clear message and leaves the last good
   checkpoint untouched), and an optional cap on optimizer steps (``train.max_steps``);
5. validates every ``train.val_every`` epochs (and after the last one) with the task's evaluator on the
   VALIDATION split, keeps ``best.pt`` by ``train.best_metric`` (exported to ``best.safetensors`` at the end) and
   ``last.pt`` every ``train.checkpoint_every`` epochs;
6. writes ``config.yaml``, ``metrics.json``, ``history.json``, ``progress.png``, ``train.log`` and TensorBoard events.

Reproducibility: every epoch reseeds Python/NumPy/torch from ``(seed, epoch, rank)`` and the shuffling comes from a
``DistributedSampler`` seeded with ``seed`` (also in a single process), so an interrupted run resumed from
``last.pt`` ends with the same weights as an uninterrupted one on CPU. Under DDP ``train.batch_size`` is the GLOBAL
batch (each of the N processes takes ``batch_size / N`` samples), so N processes follow the same optimisation as
one process up to floating-point summation order (when augmentation and stochastic layers are off).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from mambaseg.configs import RunConfig, config_from_dict, config_to_dict, save_config
from mambaseg.engine.checkpoint import (
    CheckpointError,
    export_safetensors,
    load_checkpoint,
    save_checkpoint,
    unwrap_model,
)
from mambaseg.engine.evaluator import EvalContext, autocast_for, flatten_metrics, lookup_metric
from mambaseg.engine.optim import build_optimizer, build_scheduler
from mambaseg.engine.run_logger import RunLogger
from mambaseg.engine.tasks import DataTask, open_data
from mambaseg.utils.distributed import DistContext, all_reduce_sum, barrier, init_distributed
from mambaseg.utils.files import atomic_write_json
from mambaseg.utils.seed import get_rng_state, seed_everything, seed_worker, set_rng_state

__all__ = [
    "train",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "resolve_device",
    "resolve_amp",
    "build_model_from_config",
]


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN/inf; the run stopped and kept its last good checkpoint."""


class TrainingInterrupted(RuntimeError):
    """Raised by a callback to stop a run after an epoch (tests use it to simulate a killed run)."""


class EpochCallback(Protocol):
    def __call__(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    """What :func:`train` returns (on every process).

    Attributes:
        run_dir: the run directory.
        metrics: validation metrics of the best checkpoint (the content of ``metrics.json``).
        best_epoch: epoch (1-based) of the best checkpoint.
        best_value: its ``best_metric`` value.
        epochs: epochs completed.
        steps: optimizer steps done.
        seconds: wall time of the training loop.
        images_per_second: training throughput over all processes.
        history: per-epoch records.
        rank: this process's rank (0 in a single process).
    """

    run_dir: Path
    metrics: dict[str, Any]
    best_epoch: int
    best_value: float
    epochs: int
    steps: int
    seconds: float
    images_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0


def resolve_device(spec: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """Device for ``spec`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``).

    Under ``torchrun`` with ``cuda``/``auto`` the device is ``cuda:LOCAL_RANK`` (the one the launcher gave this
    process). Raises ``ValueError`` with the fix when CUDA is requested but unavailable.
    """
    s = (spec or "auto").strip().lower()
    if s == "auto":
        s = "cuda" if torch.cuda.is_available() else "cpu"
    if s.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {spec!r} requested but CUDA is not available (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda or 'none'}); use --device cpu or install a CUDA build of torch"
            )
        if s == "cuda":
            index = local_rank if world_size > 1 else torch.cuda.current_device()
        else:
            try:
                index = int(s.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"device {spec!r} is not valid; use cuda or cuda:N") from None
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    if s == "cpu":
        return torch.device("cpu")
    if s == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' requested but MPS is not available; use --device cpu")
        return torch.device("mps")
    raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps")


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use GradScaler)`` for ``train.amp`` on ``device``.

    ``auto`` = bf16 on CUDA devices that support it, off elsewhere; ``fp16`` uses a GradScaler.
    """
    a = (amp or "auto").lower()
    if a == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return None, False
    if a in ("off", "none", "fp32", "false", "no"):
        return None, False
    if a == "bf16":
        return torch.bfloat16, False
    if a == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs a CUDA device; use bf16 or off on CPU")
        return torch.float16, True
    raise ValueError(f"unknown train.amp {amp!r}; valid: auto, bf16, fp16, off")


def build_model_from_config(cfg: RunConfig, num_classes: int, in_chans: int) -> nn.Module:
    """``create_model`` with the model section, the task's classes/channels and the training image size."""
    import inspect

    from mambaseg.models import create_model, model_info

    kwargs = dict(cfg.model.kwargs or {})
    # models built for one input size (their entrypoint names ``img_size``) get the training size
    if "img_size" in inspect.signature(model_info(cfg.model.name).fn).parameters:
        kwargs.setdefault("img_size", tuple(int(s) for s in cfg.data.image_size))
    if cfg.model.arch is not None:
        kwargs["arch"] = cfg.model.arch
    return create_model(cfg.model.name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _collate_train(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": torch.stack([torch.as_tensor(b["mask"]) for b in batch]),
    }


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 10_007 + int(rank) * 101) % (2**63 - 1)


def _better(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return best is None
    if best is None or not math.isfinite(best):
        return True
    return value > best if mode == "max" else value < best


class _Progress:
    """Rich progress bars for epochs and steps on the main process (no-op elsewhere)."""

    def __init__(self, console: Any, enabled: bool, epochs: int, start: int) -> None:
        self.enabled = enabled and console is not None
        self.console = console
        self._p = None
        if not self.enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._p = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.epoch_task = self._p.add_task("epochs", total=epochs, completed=start, info="")
        self.step_task = self._p.add_task("steps", total=1, info="")

    def __enter__(self) -> _Progress:
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.stop()

    def new_epoch(self, epoch: int, total_steps: int) -> None:
        if self._p is not None:
            self._p.reset(self.step_task, total=total_steps, description=f"epoch {epoch}", info="")

    def step(self, info: str) -> None:
        if self._p is not None:
            self._p.update(self.step_task, advance=1, info=info)

    def epoch_done(self, info: str) -> None:
        if self._p is not None:
            self._p.update(self.epoch_task, advance=1, info=info)

    def print(self, msg: str) -> None:
        if self._p is not None:
            self._p.console.print(msg)
        elif self.console is not None:
            self.console.print(msg)


def train(
    cfg: RunConfig,
    *,
    resume: str | Path | bool | None = None,
    console: Any = None,
    callbacks: tuple[EpochCallback, ...] | list[EpochCallback] = (),
    show_progress: bool = True,
) -> TrainResult:
    """Train a model as described by ``cfg`` and write the run directory ``cfg.train.out``.

    Args:
        cfg: resolved run configuration (``data.path`` must be set).
        resume: ``True`` (resume from ``OUT/checkpoints/last.pt``) or a checkpoint path to continue from; the
            weights, optimizer, scheduler, scaler, RNG states, best-so-far and history are restored and training
            continues at the next epoch. ``cfg`` should be the checkpoint's config (``train.epochs`` and
            ``train.max_steps`` may be raised).
        console: a ``rich.console.Console`` for progress bars, per-epoch lines and the summary table (``None`` =
            silent).
        callbacks: functions called on every process after each epoch with a state dict (``epoch``, ``step``,
            ``history``, ``model``); returning ``True`` stops the run cleanly after this epoch (``metrics.json`` is
            written; e.g. a time budget), raising :class:`TrainingInterrupted` aborts it (as a crash would).
        show_progress: draw rich progress bars (needs ``console``).

    Returns:
        :class:`TrainResult` (metrics of the best checkpoint).

    Raises:
        TrainingDiverged: non-finite loss/gradients; ``last.pt`` still holds the last good epoch.
        ValueError: invalid configuration (device, batch size, metric name, ...).
    """
    tc = cfg.train
    local_rank = _env_int("LOCAL_RANK", 0)
    world_env = _env_int("WORLD_SIZE", 1)
    device = resolve_device(tc.device, local_rank, world_env)
    if device.type == "cuda" and world_env > 1:
        torch.cuda.set_device(device)
    ctx = init_distributed(device.type)
    try:
        return _train(cfg, ctx, device, resume=resume, console=console if ctx.is_main else None,
                      callbacks=callbacks, show_progress=show_progress)
    finally:
        ctx.close()


def _env_int(name: str, default: int) -> int:
    import os

    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _train(
    cfg: RunConfig,
    ctx: DistContext,
    device: torch.device,
    *,
    resume: str | Path | bool | None,
    console: Any,
    callbacks: Any,
    show_progress: bool,
) -> TrainResult:
    from mambaseg.data import Normalization
    from mambaseg.losses import create_loss

    tc = cfg.train
    if tc.epochs < 1:
        raise ValueError(f"train.epochs must be >= 1, got {tc.epochs}")
    if tc.max_steps is not None and tc.max_steps < 1:
        raise ValueError(f"train.max_steps must be >= 1 (or null), got {tc.max_steps}")
    if tc.best_mode not in ("max", "min"):
        raise ValueError(f"train.best_mode must be 'max' or 'min', got {tc.best_mode!r}")
    if tc.batch_size < 1 or tc.batch_size % ctx.world_size:
        raise ValueError(
            f"train.batch_size={tc.batch_size} must be a positive multiple of the number of processes "
            f"({ctx.world_size}); it is the global batch split across them"
        )
    if tc.val_every < 1:
        raise ValueError(f"train.val_every must be >= 1, got {tc.val_every}")
    if tc.time_limit_s is not None and tc.time_limit_s <= 0:
        raise ValueError(f"train.time_limit_s must be a positive number of seconds (or null), got {tc.time_limit_s}")
    run_dir = Path(tc.out)
    ckpt_dir = run_dir / "checkpoints"

    # ---- resume state
    state: dict[str, Any] | None = None
    if resume:
        rpath = ckpt_dir / "last.pt" if resume is True else Path(resume)
        state = load_checkpoint(rpath, map_location="cpu")
        if "optimizer" not in state:
            raise CheckpointError(f"{rpath} holds weights only (no optimizer state); resume needs a last.pt")
    amp_dtype, use_scaler = resolve_amp(tc.amp, device)
    # fail fast on names before touching the data
    from mambaseg.models import model_info

    model_info(cfg.model.name)
    loss_fn = create_loss(cfg.loss.name, **(cfg.loss.kwargs or {}))

    # ---- data
    norm = Normalization.from_dict(state["normalization"]) if state and state.get("normalization") else None
    task: DataTask = open_data(cfg.data.path, cfg, splits=("train", "val"), normalization=norm)
    num_classes = cfg.model.num_classes or task.num_classes
    in_chans = cfg.model.in_chans or task.in_chans
    if num_classes != task.num_classes:
        raise ValueError(f"model.num_classes={num_classes} but the data has {task.num_classes} output channel(s)")
    train_ds, val_ds = task.train, task.val
    if train_ds is None or len(train_ds) == 0:  # type: ignore[arg-type]
        raise ValueError(f"the training split of {cfg.data.path} is empty")

    # ---- model, loss, optimisation
    seed_everything(tc.seed)
    model = build_model_from_config(cfg, num_classes, in_chans).to(device)
    _check_image_size(model, cfg)
    spec = dict(getattr(model, "mambaseg_spec", {}) or {})
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(device)
    per_rank_bs = tc.batch_size // ctx.world_size
    sampler = DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=tc.seed, drop_last=False)
    loader = DataLoader(
        train_ds, batch_size=per_rank_bs, sampler=sampler, num_workers=cfg.data.num_workers,
        collate_fn=_collate_train, worker_init_fn=seed_worker, pin_memory=device.type == "cuda",
        drop_last=False, persistent_workers=bool(cfg.data.persistent_workers and cfg.data.num_workers > 0),
    )
    steps_per_epoch = len(loader)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, epochs=tc.epochs, steps_per_epoch=steps_per_epoch,
                                max_steps=tc.max_steps, best_mode=tc.best_mode)
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    scaler = torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=use_scaler)

    start_epoch, step = 0, 0
    best_value: float | None = None
    best_epoch = 0
    best_metrics: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    if state is not None:
        unwrap_model(model).load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        best = state.get("best") or {}
        best_value = best.get("value")
        best_epoch = int(best.get("epoch", 0))
        history = list(state.get("history") or [])
        best_metrics = dict(state.get("best_metrics") or {})
        if state.get("rng"):
            set_rng_state(state["rng"])

    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_kw: dict[str, Any] = {"find_unused_parameters": tc.find_unused_parameters}
        if device.type == "cuda":
            ddp_kw["device_ids"] = [device.index]
        train_model: nn.Module = DDP(model, **ddp_kw)
    else:
        train_model = model
    if tc.compile:
        train_model = torch.compile(train_model)
    eval_ctx = EvalContext(device=device, dist=ctx, amp_dtype=amp_dtype, batch_size=tc.val_batch_size,
                           num_workers=cfg.data.num_workers, loss_fn=loss_fn)

    # ---- run directory
    logger = RunLogger(run_dir if ctx.is_main else None)
    resolved = config_from_dict(config_to_dict(cfg))
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(resolved, run_dir / "config.yaml")
        n_params = sum(p.numel() for p in model.parameters())
        logger.log(
            f"{'resume' if state else 'start'}: model {cfg.model.name} ({n_params:,} params), data {cfg.data.path} "
            f"[{task.name}: {task.info}], device {device}, amp {amp_dtype}, processes {ctx.world_size}, "
            f"global batch {tc.batch_size}, {steps_per_epoch} steps/epoch"
        )
    base_payload = {
        "model": spec,
        "normalization": task.normalization.to_dict() if task.normalization is not None else None,
        "label_map": dict(task.label_map),
        "image_size": [int(s) for s in cfg.data.image_size],
        "task": {"layout": task.name, "num_classes": num_classes, "in_chans": in_chans,
                 "evaluator": getattr(task.evaluator, "name", "")},
        "config": config_to_dict(resolved),
    }

    def payload(epoch_done: int, metrics: dict[str, Any], *, training: bool) -> dict[str, Any]:
        p = dict(base_payload)
        p.update({
            "state_dict": {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()},
            "epoch": epoch_done,
            "step": step,
            "metrics": metrics,
            "best": {"metric": tc.best_metric, "mode": tc.best_mode, "value": best_value, "epoch": best_epoch},
        })
        if training:
            p.update({
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": get_rng_state(),
                "history": history,
                "best_metrics": best_metrics,
            })
        return p

    n_seen = 0
    t0 = time.perf_counter()
    stop_reason = ""
    last_metrics: dict[str, Any] = {}
    clip = float(tc.grad_clip) if tc.grad_clip else math.inf
    params = [p for p in model.parameters() if p.requires_grad]
    det_ctx = _deterministic(tc.deterministic)
    try:
        with det_ctx, _Progress(console, show_progress, tc.epochs, start_epoch) as bar:
            for epoch in range(start_epoch, tc.epochs):
                if tc.max_steps is not None and step >= tc.max_steps:
                    stop_reason = f"max_steps={tc.max_steps} reached"
                    break
                seed_everything(_epoch_seed(tc.seed, epoch, ctx.rank))
                sampler.set_epoch(epoch)
                if hasattr(train_ds, "set_epoch"):
                    train_ds.set_epoch(epoch)  # per-(seed, epoch, sample) augmentation, same for any process count
                train_model.train()
                te = time.perf_counter()
                bar.new_epoch(epoch + 1, steps_per_epoch)
                loss_sum = torch.zeros((), dtype=torch.float64)
                count = 0
                capped = False
                for batch in loader:
                    x = batch["image"].to(device, non_blocking=True)
                    y = batch["mask"].to(device, non_blocking=True).long()
                    with autocast_for(device, amp_dtype):
                        logits = train_model(x)
                    loss = loss_fn(logits.float(), y)
                    bs = x.shape[0]
                    # one small all-reduce per step, on the device: global loss sum, sample count and a non-finite
                    # flag; then one copy to the host
                    lv = loss.detach().double()
                    finite = torch.isfinite(lv)
                    red = all_reduce_sum(torch.stack([torch.where(finite, lv * bs, 0.0), torch.full_like(lv, bs),
                                                      (~finite).double()]), ctx).cpu()
                    if red[2] > 0:
                        _diverged(logger, bar, ckpt_dir, epoch, step, "loss", optimizer)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    gnorm = torch.nn.utils.clip_grad_norm_(params, clip)
                    if not use_scaler and not bool(torch.isfinite(gnorm)):
                        _diverged(logger, bar, ckpt_dir, epoch, step, "gradient norm", optimizer)
                    scaler.step(optimizer)
                    scaler.update()
                    if not plateau and cfg.schedule.interval == "step":
                        scheduler.step()
                    step += 1
                    loss_sum += red[0]
                    count += int(red[1])
                    n_seen += int(red[1])
                    if ctx.is_main and step % max(tc.log_every, 1) == 0:
                        logger.scalars({"loss": float(red[0] / red[1]), "lr": optimizer.param_groups[0]["lr"],
                                        "grad_norm": float(gnorm)}, step, prefix="train_step/")
                    bar.step(f"loss {float(red[0] / max(red[1], 1)):.4f}")
                    if tc.max_steps is not None and step >= tc.max_steps:
                        capped = True
                        break
                lr_used = optimizer.param_groups[0]["lr"]
                if not plateau and cfg.schedule.interval == "epoch":
                    scheduler.step()
                train_loss = float(loss_sum / max(count, 1))
                last_epoch = epoch + 1 == tc.epochs or capped
                record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "train_loss": train_loss,
                                          "lr": lr_used, "best_metric": tc.best_metric}
                if (epoch + 1) % tc.val_every == 0 or last_epoch:
                    metrics = task.evaluator.evaluate(model, val_ds, eval_ctx)  # type: ignore[arg-type]
                    value = lookup_metric(metrics, tc.best_metric)
                    if plateau:
                        scheduler.step(value)
                    last_metrics = metrics
                    record["val"] = task.evaluator.headline(metrics)
                    record["val"][tc.best_metric] = value
                    if _better(value, best_value, tc.best_mode):
                        best_value, best_epoch, best_metrics = value, epoch + 1, metrics
                        record["best"] = True
                        if ctx.is_main:
                            save_checkpoint(ckpt_dir / "best.pt", payload(epoch + 1, metrics, training=False))
                record["time"] = time.perf_counter() - te
                history.append(record)
                saved = (epoch + 1) % max(tc.checkpoint_every, 1) == 0 or last_epoch
                if ctx.is_main and saved:
                    save_checkpoint(ckpt_dir / "last.pt", payload(epoch + 1, last_metrics, training=True))
                if ctx.is_main:
                    logger.scalars({"loss": train_loss, "lr": lr_used, "epoch_time": record["time"]}, epoch + 1,
                                   prefix="train/")
                    if "val" in record:
                        logger.scalars(flatten_metrics(last_metrics), epoch + 1, prefix="val/")
                    logger.history(history, final=last_epoch)
                    line = _epoch_line(record, tc.epochs)
                    logger.log(line)
                    bar.print(line)
                bar.epoch_done(f"best {tc.best_metric} {best_value:.4f}" if best_value is not None else "")
                barrier(ctx)
                cb_state = {"epoch": epoch + 1, "step": step, "history": history, "model": model,
                            "metrics": last_metrics, "run_dir": run_dir}
                want_stop = any([cb(cb_state) is True for cb in callbacks])
                over_time = tc.time_limit_s is not None and time.perf_counter() - t0 > tc.time_limit_s
                # every process must take the same decision (a time budget may differ between processes)
                votes = all_reduce_sum(torch.tensor([float(want_stop), float(over_time)]), ctx)
                want_stop, over_time = bool(votes[0] > 0), bool(votes[1] > 0)
                if (want_stop or over_time) and epoch + 1 < tc.epochs:
                    stop_reason = (f"train.time_limit_s={tc.time_limit_s:g} reached" if over_time
                                   else "stopped by a callback (e.g. a time budget)")
                    if ctx.is_main:
                        if not saved:
                            save_checkpoint(ckpt_dir / "last.pt", payload(epoch + 1, last_metrics, training=True))
                        logger.history(history, final=True)
                    break
                if capped:
                    stop_reason = f"max_steps={tc.max_steps} reached"
                    break
    except BaseException:
        logger.close()
        raise
    seconds = time.perf_counter() - t0
    ips = n_seen / seconds if seconds > 0 else 0.0
    result_metrics = dict(best_metrics)
    summary = {
        **result_metrics,
        "checkpoint": "checkpoints/best.pt",
        "best_metric": tc.best_metric,
        "best_mode": tc.best_mode,
        "best_value": best_value,
        "best_epoch": best_epoch,
        "last": last_metrics,
        "train": {"epochs": len(history), "steps": step, "seconds": round(seconds, 3),
                  "images_per_second": round(ips, 3), "processes": ctx.world_size, "device": str(device),
                  "amp": str(amp_dtype) if amp_dtype else "off", "stop_reason": stop_reason or "completed"},
        "data": {"path": str(cfg.data.path), "layout": task.name, "split": "val", **task.info},
        "model": {"name": cfg.model.name, "params": sum(p.numel() for p in model.parameters())},
    }
    if ctx.is_main:
        if (ckpt_dir / "best.pt").is_file():  # exported once at the end: best.pt changes often early in a run
            export_safetensors(ckpt_dir / "best.safetensors", load_checkpoint(ckpt_dir / "best.pt"))
        atomic_write_json(run_dir / "metrics.json", summary)
        logger.log(f"done: {len(history)} epochs, {step} steps, {seconds:.1f} s, {ips:.3g} img/s; "
                   f"best {tc.best_metric} = {best_value} at epoch {best_epoch}")
        logger.close()
        if console is not None:
            console.print(task.evaluator.summary_table(summary, run_dir))
    barrier(ctx)
    return TrainResult(run_dir=run_dir, metrics=summary, best_epoch=best_epoch,
                       best_value=float(best_value) if best_value is not None else float("nan"),
                       epochs=len(history), steps=step, seconds=seconds, images_per_second=ips, history=history,
                       rank=ctx.rank)


def _check_image_size(model: nn.Module, cfg: RunConfig) -> None:
    """Fail before training when ``data.image_size`` does not suit the model (clear message with a valid size)."""
    check = getattr(model, "check_size", None)
    if check is None:
        return
    h, w = (int(v) for v in cfg.data.image_size)
    try:
        check(h, w)
    except ValueError as exc:
        hh, ww = model.valid_size(h, w)
        raise ValueError(f"--image-size {h},{w} does not suit {cfg.model.name!r}: {exc}; "
                         f"use --image-size {hh},{ww}") from None


def _deterministic(enabled: bool):
    if not enabled:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def cm():
        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before)

    return cm()


def _diverged(logger: RunLogger, bar: _Progress, ckpt_dir: Path, epoch: int, step: int, what: str,
              optimizer: torch.optim.Optimizer) -> None:
    last = ckpt_dir / "last.pt"
    keep = (f"the last good checkpoint {last} (end of the previous epoch) is kept" if last.is_file()
            else "no checkpoint was written yet")
    msg = (f"training diverged: the {what} became NaN/inf at epoch {epoch + 1}, step {step + 1} "
           f"(lr {optimizer.param_groups[0]['lr']:.3g}); stopped; {keep}. Lower the learning rate (--lr), "
           f"enable gradient clipping (--set train.grad_clip=1.0) or turn AMP off (--set train.amp=off)")
    logger.log(msg)
    logger.close()
    raise TrainingDiverged(msg)


def _epoch_line(rec: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {rec['epoch']}/{epochs}", f"step {rec['step']}", f"train loss {rec['train_loss']:.4f}",
             f"lr {rec['lr']:.3g}", f"{rec.get('time', 0):.1f}s"]
    if "val" in rec:
        parts.append(" ".join(f"val {k} {v:.4f}" for k, v in rec["val"].items()))
    if rec.get("best"):
        parts.append("(best)")
    return " | ".join(parts)


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path | None = None,
    *,
    split: str = "val",
    out: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of a dataset with the same preprocessing as training.

    Args:
        checkpoint: ``best.pt``/``last.pt``/``best.safetensors`` written by :func:`train`.
        data: dataset path (default: the one recorded in the checkpoint's config).
        split: ``val``, ``test`` or ``train``.
        out: folder for ``metrics.json`` (optional).
        device: ``auto``/``cpu``/``cuda``/...
        batch_size: evaluation batch size (default: the run's ``train.val_batch_size``).
        console: optional rich console for a summary table.

    Returns:
        The evaluator's metrics dict (plus ``checkpoint``, ``split`` and ``data``).
    """
    from mambaseg.data import Normalization
    from mambaseg.engine.checkpoint import build_model

    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    if ckpt.get("config"):
        cfg = config_from_dict(ckpt["config"])
    else:  # safetensors export: rebuild a minimal config from the metadata
        cfg = RunConfig()
        cfg.data.image_size = list(ckpt.get("image_size") or cfg.data.image_size)
    if data is not None:
        cfg.data.path = str(data)
    cfg.data.augment = False
    dev = resolve_device(device)
    norm = Normalization.from_dict(ckpt["normalization"]) if ckpt.get("normalization") else None
    layout = (ckpt.get("task") or {}).get("layout")
    task = open_data(cfg.data.path, cfg, splits=(split,), normalization=norm, layout=layout)
    model = build_model(ckpt).to(dev)
    amp_dtype, _ = resolve_amp(cfg.train.amp, dev)
    loss_fn = None
    try:
        from mambaseg.losses import create_loss

        loss_fn = create_loss(cfg.loss.name, **(cfg.loss.kwargs or {}))
    except (ValueError, KeyError, TypeError, ImportError) as exc:
        # e.g. a loss registered by a plugin that is not importable here: metrics are still exact, say so loudly
        warnings.warn(f"evaluating without a loss value: loss {cfg.loss.name!r} cannot be built here ({exc})",
                      RuntimeWarning, stacklevel=2)
        loss_fn = None
    ectx = EvalContext(device=dev, amp_dtype=amp_dtype, batch_size=batch_size or cfg.train.val_batch_size,
                       num_workers=cfg.data.num_workers, loss_fn=loss_fn)
    metrics = task.evaluator.evaluate(model, task.datasets[split], ectx)
    result = {**metrics, "checkpoint": str(checkpoint), "split": split, "data": str(cfg.data.path),
              "epoch": ckpt.get("epoch"), "model": (ckpt.get("model") or {}).get("name")}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / "metrics.json", result)
    if console is not None:
        table = task.evaluator.summary_table({**result, "best_epoch": ckpt.get("epoch"), "train": {}},
                                             Path(str(checkpoint)))
        table.title = f"{split} metrics of {checkpoint} (epoch {ckpt.get('epoch')})"
        console.print(table)
    return result
