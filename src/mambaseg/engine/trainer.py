"""The training loop: :func:`train`, driven by a :class:`~mambaseg.configs.RunConfig`.

Read it top to bottom: :func:`train` joins the process group, :func:`_setup` builds everything a run needs (data,
model, loss, optimizer, schedule, resume state, run directory) into one :class:`_Run`, and the epoch loop in
:func:`_loop` calls :func:`_train_epoch` (the optimizer steps), :func:`_validate` (the task's evaluator on the
VALIDATION split; the best weights are kept by ``train.best_metric``) and :func:`_checkpoint` (``best.pt`` then
``last.pt``, after the first epoch and then every ``train.checkpoint_interval_s`` seconds or
``train.checkpoint_every`` epochs, and after the last one); :func:`_finish` writes ``metrics.json``,
``best.safetensors`` and the summary. Each epoch record times its parts (``time_data``, ``time_step``,
``time_val``, ``time_ckpt``) and ``metrics.json`` the seconds from process start to the first optimizer step.

Details that matter:

* device: ``train.device``; under ``torchrun`` the CUDA device named by ``LOCAL_RANK``, process group gloo on CPU
  / NCCL on CUDA. Nothing here sets environment variables.
* precision: bf16 autocast on CUDA (the scan kernels compute in fp32 whatever autocast says), gradient clipping, a
  finite-loss/gradient check every step (a NaN/inf stops the run with a clear message and leaves the last good
  checkpoint untouched), an optional cap on optimizer steps (``train.max_steps``) and on wall time
  (``train.time_limit_s``).
* scan backend: ``train.scan_backend`` is applied around the model for the whole run (runtime choice; never stored
  in the model or the checkpoint's model description).
* reproducibility: every epoch reseeds Python/NumPy/torch from ``(seed, epoch, rank)`` and the shuffling comes from
  a ``DistributedSampler`` seeded with ``seed`` (also in a single process), so an interrupted run resumed from
  ``last.pt`` ends with the same weights as an uninterrupted one on CPU. Under DDP ``train.batch_size`` is the
  GLOBAL batch (each of the N processes takes ``batch_size / N`` samples).
* checkpoint memory: on CUDA (with ``train.async_checkpoints``) a background thread writes device snapshots of the
  weights and optimizer state while training goes on, and the best weights wait in a device snapshot until the next
  ``last.pt``. On CPU a snapshot would be a second copy of the weights and optimizer state in the same RAM, so the
  checkpoints are written synchronously from the live tensors and ``best.pt`` is written when validation improves:
  a CPU run holds one copy of its state (weights, gradients, optimizer moments) at every moment.
* hooks: :class:`TrainHooks` lets a caller replace the model, the training split, or act before each step and each
  validation, with its own state saved in ``last.pt`` (the SliceMamba supernet search trains through this loop).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from mambaseg.checkpoint import (
    CheckpointError,
    CheckpointWriter,
    export_safetensors,
    load_checkpoint,
    snapshot,
    unwrap_model,
)
from mambaseg.configs import RunConfig, config_from_dict, config_to_dict, save_config
from mambaseg.data.task import DataTask
from mambaseg.engine.evaluate import open_data
from mambaseg.engine.evaluator import EvalContext, flatten_metrics, lookup_metric
from mambaseg.engine.optim import build_optimizer, build_scheduler
from mambaseg.engine.preflight import check_best_metric, check_label_map, check_resume_config, check_samples
from mambaseg.engine.run_logger import RunLogger
from mambaseg.runtime import (
    autocast_for,
    env_int,
    resolve_amp,
    resolve_device,
    resolve_workers,
    scan_backend,
    seconds_since_process_start,
)
from mambaseg.utils.distributed import DistContext, all_reduce_sum, barrier, init_distributed
from mambaseg.utils.files import atomic_write_json
from mambaseg.utils.runlock import RunLock, remove_stale_temporaries
from mambaseg.utils.progress import ProgressReporter, is_terminal
from mambaseg.utils.seed import get_rng_state, seed_everything, seed_worker, set_rng_state
from mambaseg.utils.signals import Terminated

__all__ = [
    "train",
    "TrainHooks",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_model_from_config",
]


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN/inf; the run stopped and kept its last good checkpoint."""


class TrainingInterrupted(RuntimeError):
    """Raised by a callback to stop a run after an epoch (tests use it to simulate a killed run)."""


class EpochCallback(Protocol):
    def __call__(self, state: dict[str, Any]) -> None: ...


class TrainHooks:
    """Extension points of :func:`train`; every method's default does nothing.

    Subclass it to train something other than a registered model through the same loop (same checkpoint format,
    resume, divergence handling and progress output). ``state_dict``/``load_state_dict`` are saved in and
    restored from ``last.pt`` (weights-only-safe content: tensors and primitive containers).

    ``export_safetensors = False`` skips the ``best.safetensors`` export at the end (for models no registry entry
    rebuilds, e.g. the SliceMamba supernet, whose export would be one more copy of its weights).
    """

    export_safetensors: bool = True

    def build_model(self, cfg: RunConfig, num_classes: int, in_chans: int) -> nn.Module | None:
        """The model to train (``None``: ``create_model`` from ``cfg.model``). Set ``model.mambaseg_spec``."""
        return None

    def prepare_task(self, task: DataTask) -> DataTask:
        """Adjust the opened task (e.g. train on a subset of the training split)."""
        return task

    def before_step(self, model: nn.Module, step: int) -> None:
        """Called before every training forward pass."""

    def before_validation(self, model: nn.Module, epoch: int) -> None:
        """Called before every validation."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def checkpoint_dir(self, run_dir: Path) -> Path:
        """Folder of ``last.pt`` / ``best.pt`` / ``best.safetensors`` (default ``RUN/checkpoints``)."""
        return run_dir / "checkpoints"


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
        seconds: wall time of the training loop in this process (after a resume: since the resume; metrics.json
            also has ``epoch_seconds_total``, the per-epoch times of the whole run).
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


def build_model_from_config(cfg: RunConfig, num_classes: int, in_chans: int) -> nn.Module:
    """``create_model`` with the model section, the task's classes/channels and the training image size."""
    from mambaseg.models import create_model

    kwargs = dict(cfg.model.kwargs or {})
    kwargs.setdefault("image_size", tuple(int(s) for s in cfg.data.image_size))
    if cfg.model.arch is not None:
        kwargs["arch"] = cfg.model.arch
    return create_model(cfg.model.name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _collate_train(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": torch.stack([torch.as_tensor(b["mask"]) for b in batch]),
    }


class _RunBatches(torch.utils.data.Sampler):
    """Batches of ``(epoch, index)`` keys for the epochs ``[first, last)``: each epoch is one pass of a
    ``DistributedSampler`` re-shuffled with that epoch, cut into batches (the last one may be short).

    The trainer draws every epoch of a run from one iterator over this sampler (``data.persistent_workers``), so
    loader workers prepare the next epoch's first batches while the current one ends, validates and saves. The
    epoch travels with every index, so the batches and augmentation draws are those of one fresh iterator per
    epoch."""

    def __init__(self, base: DistributedSampler, batch_size: int) -> None:
        self.base = base
        self.batch_size = int(batch_size)
        self.first, self.last = 0, 1

    @property
    def per_epoch(self) -> int:
        return max(1, math.ceil(len(self.base) / self.batch_size))

    def __iter__(self) -> Any:
        for epoch in range(self.first, self.last):
            self.base.set_epoch(epoch)
            indices = list(self.base)
            for k in range(0, len(indices), self.batch_size):
                yield [(epoch, i) for i in indices[k:k + self.batch_size]]

    def __len__(self) -> int:
        return max(0, self.last - self.first) * self.per_epoch


class _EpochDataset(torch.utils.data.Dataset):
    """Reads ``(epoch, index)`` keys: sets the epoch of the wrapped dataset (its augmentation seed) in whichever
    process reads the item, so persistent loader workers draw the same augmentations as fresh ones."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        inner = dataset
        while not hasattr(inner, "set_epoch") and hasattr(inner, "dataset"):  # Subset and similar wrappers
            inner = inner.dataset
        self._epoch_target = inner if hasattr(inner, "set_epoch") else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if self._epoch_target is not None:
            self._epoch_target.set_epoch(epoch)
        return self.dataset[index]


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
        self._plain: ProgressReporter | None = None  # not a terminal: plain step lines (utils/progress.py)
        self._plain_on = self.enabled and not is_terminal(console)
        if not self.enabled or self._plain_on:
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
        if self._plain_on:
            self._plain = ProgressReporter(self.console, f"epoch {epoch}", total=total_steps).__enter__()
        if self._p is not None:
            self._p.reset(self.step_task, total=total_steps, description=f"epoch {epoch}", info="")

    def step(self, info: str) -> None:
        if self._plain is not None:
            self._plain.advance(1, info)
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
    hooks: TrainHooks | None = None,
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
            ``history``, ``model``); returning ``True`` (or a non-empty string, recorded as the stop reason) stops
            the run cleanly after this epoch (``metrics.json`` is written; e.g. a time budget), raising :class:`TrainingInterrupted` aborts it (as a crash would).
        show_progress: draw rich progress bars (needs ``console``).
        hooks: :class:`TrainHooks` (a different model, a subset of the training split, per-step actions).

    Returns:
        :class:`TrainResult` (metrics of the best checkpoint).

    Raises:
        TrainingDiverged: non-finite loss/gradients; ``last.pt`` still holds the last good epoch.
        ValueError: invalid configuration (device, batch size, metric name, ...).
    """
    local_rank, world_env = env_int("LOCAL_RANK", 0), env_int("WORLD_SIZE", 1)
    device = resolve_device(cfg.train.device, local_rank, world_env)
    if device.type == "cuda" and world_env > 1:
        torch.cuda.set_device(device)
    ctx = init_distributed(device.type)
    hooks = hooks or TrainHooks()
    claim: _Claim | None = None
    try:
        with scan_backend(cfg.train.scan_backend):
            claim = _claim_run_dir(cfg, ctx, resume, hooks, console if ctx.is_main else None)
            run = _setup(cfg, ctx, device, resume=resume, hooks=hooks, console=console if ctx.is_main else None)
            for note in claim.notes:
                run.logger.log(note)
            _loop(run, callbacks, show_progress)
            return _finish(run)
    finally:
        if claim is not None:
            claim.release()
        ctx.close()


@dataclass
class _Claim:
    """The run directory's lock (main process) and what taking the directory over found."""

    lock: RunLock | None
    run_dir: Path
    created: bool
    notes: list[str] = field(default_factory=list)

    def release(self) -> None:
        if self.lock is None:
            return
        self.lock.release()
        if self.created:  # a run that failed before writing anything leaves no empty folder behind
            try:
                self.run_dir.rmdir()
            except OSError:
                pass


def _claim_run_dir(cfg: RunConfig, ctx: DistContext, resume: Any, hooks: TrainHooks, console: Any) -> _Claim:
    """Lock ``train.out`` for the life of the run (main process), refuse to start a new run over an existing one,
    and remove the temporary files of a writer killed in the middle of a write."""
    run_dir = Path(cfg.train.out)
    if not ctx.is_main:
        return _Claim(lock=None, run_dir=run_dir, created=False)
    created = not run_dir.exists()
    lock = RunLock(run_dir, command="mambaseg train").acquire()
    claim = _Claim(lock=lock, run_dir=run_dir, created=created)
    try:
        ckpt_dir = hooks.checkpoint_dir(run_dir)
        if not resume and (ckpt_dir / "last.pt").is_file():
            raise ValueError(f"{run_dir} already holds a run ({ckpt_dir / 'last.pt'}); resume it (--resume) or "
                             "choose another --out: starting over would overwrite its checkpoints and metrics")
        if lock.stale:
            claim.notes.append(f"took over the stale lock of a run that is no longer running ({lock.stale})")
        for p in remove_stale_temporaries(run_dir, ckpt_dir):
            claim.notes.append(f"removed {p}, a temporary file left by a run killed while writing")
    except BaseException:
        claim.release()
        raise
    if console is not None:
        for note in claim.notes:
            console.print(note, highlight=False, markup=False)
    return claim


def _check_config(cfg: RunConfig, ctx: DistContext) -> None:
    """Reject invalid training options before anything is built."""
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
    if tc.grad_clip is not None and not (math.isfinite(tc.grad_clip) and tc.grad_clip >= 0):
        # torch's clip_grad_norm_ with a negative max norm flips the gradients' sign (gradient ascent)
        raise ValueError(f"train.grad_clip must be > 0, or 0/null for no clipping; got {tc.grad_clip}")
    if tc.ema_decay is not None and not 0.0 < tc.ema_decay < 1.0:
        raise ValueError(f"train.ema_decay must be in (0, 1) (e.g. 0.999), or null for no EMA; got {tc.ema_decay}")
    if cfg.schedule.warmup < 0:
        raise ValueError(f"schedule.warmup must be >= 0 (0 = no warm-up), got {cfg.schedule.warmup}")


@dataclass
class _Run:
    """Everything one training run holds; built by :func:`_setup`, advanced by the epoch loop."""

    cfg: RunConfig
    ctx: DistContext
    device: torch.device
    task: DataTask
    model: nn.Module
    train_model: nn.Module  # model wrapped for training (DDP, torch.compile)
    loss_fn: Any
    loader: DataLoader
    batches: _RunBatches
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    eval_ctx: EvalContext
    logger: RunLogger
    hooks: TrainHooks
    base_payload: dict[str, Any]
    console: Any
    resumed: bool = False
    start_epoch: int = 0
    step: int = 0
    best_value: float | None = None
    best_epoch: int = 0
    best_metrics: dict[str, Any] = field(default_factory=dict)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    n_seen: int = 0
    seconds: float = 0.0
    stop_reason: str = ""
    writer: CheckpointWriter | None = None
    best_payload: dict[str, Any] | None = None  # snapshot of the best weights, written before the next last.pt
    copies: bool = True  # checkpoints are written in the background from snapshots (False: synchronously, live)
    last_write: float | None = None  # perf_counter() of the last checkpoint write
    first_step_s: float | None = None
    epoch_times: dict[str, float] = field(default_factory=dict)
    startup: dict[str, float] = field(default_factory=dict)
    graph: Any = None  # GraphedTraining once recorded (train.cuda_graph)
    graph_pending: bool = False  # record on the next training batch
    batch_iter: Any = None  # the training loader's iterator (one per run, or per epoch without persistent workers)
    ema: Any = None  # mambaseg.engine.ema.WeightEMA when train.ema_decay is set

    @property
    def ckpt_dir(self) -> Path:
        return self.hooks.checkpoint_dir(Path(self.cfg.train.out))

    @property
    def plateau(self) -> bool:
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _setup(cfg: RunConfig, ctx: DistContext, device: torch.device, *, resume: Any, hooks: TrainHooks,
           console: Any) -> _Run:
    """Data, model, loss, optimisation and resume state of a run; the run directory and its config."""
    from mambaseg.data import Normalization
    from mambaseg.losses import create_loss

    _check_config(cfg, ctx)
    tc = cfg.train
    run_dir = Path(tc.out)
    startup = {"setup": seconds_since_process_start()}  # seconds from process start at each step of the start-up
    state: dict[str, Any] | None = None
    resume_changes: list[str] = []
    if resume:
        rpath = hooks.checkpoint_dir(run_dir) / "last.pt" if resume is True else Path(resume)
        state = load_checkpoint(rpath, map_location="cpu")
        if "optimizer" not in state:
            raise CheckpointError(f"{rpath} holds weights only (no optimizer state); resume needs a last.pt")
        resume_changes = check_resume_config(state.get("config"), config_to_dict(cfg), rpath)
    amp_dtype, use_scaler = resolve_amp(tc.amp, device)
    # fail fast on names before touching the data
    from mambaseg.models import model_info

    model_info(cfg.model.name)
    if cfg.loss.name != "auto":
        try:
            create_loss(cfg.loss.name, **(cfg.loss.kwargs or {}))
        except ValueError as e:
            if not cfg.loss.kwargs or "unknown argument" not in str(e):
                raise
            # the kwargs often come from a recipe written for another loss (--set loss.name=... keeps them)
            raise ValueError(f"{e}. loss.kwargs = {dict(cfg.loss.kwargs)} (from the recipe or --set) do not fit "
                             f"loss.name={cfg.loss.name!r}: replace them, e.g. --set 'loss.kwargs={{}}'") from None

    # ---- data
    norm = Normalization.from_dict(state["normalization"]) if state and state.get("normalization") else None
    task = hooks.prepare_task(open_data(cfg.data.path, cfg, splits=("train", "val"), normalization=norm))
    startup["data"] = seconds_since_process_start()
    num_classes = cfg.model.num_classes or task.num_classes
    in_chans = cfg.model.in_chans or task.in_chans
    if num_classes != task.num_classes:
        raise ValueError(f"model.num_classes={num_classes} but the data has {task.num_classes} output channel(s) "
                         f"(--set model.num_classes={task.num_classes})")
    cfg = _follow_task(cfg, num_classes)
    loss_fn = create_loss(cfg.loss.name, **(cfg.loss.kwargs or {}))
    if num_classes > 1 and getattr(loss_fn, "binary_only", False):
        raise ValueError(f"loss.name={cfg.loss.name!r} takes one output channel (a binary task), but "
                         f"{cfg.data.path} has {num_classes} classes: use --set loss.name=ce_dice (or a recipe for "
                         "this kind of data)")
    train_ds = task.train
    if train_ds is None or len(train_ds) == 0:  # type: ignore[arg-type]
        raise ValueError(f"the training split of {cfg.data.path} is empty")
    preflight_notes = _preflight(cfg, task, num_classes, console)
    per_process = tc.batch_size // ctx.world_size
    if per_process > len(train_ds):  # type: ignore[arg-type]
        note = (f"warning: train.batch_size (--batch-size) {tc.batch_size} is larger than the {len(train_ds)} "
                f"training samples of {cfg.data.path}" + (f" ({per_process} per process)" if ctx.world_size > 1
                                                         else "")
                + f": every step sees all {len(train_ds)}, not the batch the learning rate is set for (--batch-size "
                f"{len(train_ds) * ctx.world_size} says what happens)")
        preflight_notes.append(note)
        if console is not None:
            console.print(note, highlight=False, markup=False, style="yellow")
    startup["preflight"] = seconds_since_process_start()

    # ---- model, loss, optimisation
    seed_everything(tc.seed)
    model = hooks.build_model(cfg, num_classes, in_chans)
    if model is None:
        model = build_model_from_config(cfg, num_classes, in_chans)
    if tc.init_from and state is None:
        from mambaseg.models._pretrained import init_from

        report = init_from(model, tc.init_from)
        preflight_init = f"init from {tc.init_from}:\n{report.summary()}"
    else:
        preflight_init = ""
    model = model.to(device)
    _check_image_size(model, cfg)
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(device)
    workers = resolve_workers(cfg.data.num_workers, device)
    batches = _RunBatches(DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                             seed=tc.seed, drop_last=False), tc.batch_size // ctx.world_size)
    # own generator: starting an iterator draws the workers' base seed from it, not from the global RNG (whose
    # stream the model's dropout follows, identical whether a run was resumed or not)
    loader = DataLoader(_EpochDataset(train_ds), batch_sampler=batches, num_workers=workers,
                        collate_fn=_collate_train, worker_init_fn=seed_worker, pin_memory=device.type == "cuda",
                        generator=torch.Generator())
    startup["model"] = seconds_since_process_start()
    optimizer = build_optimizer(model, cfg.optim)
    schedule_notes: list[str] = []
    scheduler = build_scheduler(optimizer, cfg.schedule, epochs=tc.epochs, steps_per_epoch=batches.per_epoch,
                                max_steps=tc.max_steps, best_mode=tc.best_mode, notes=schedule_notes)
    for note in schedule_notes:  # a warm-up too long for the run, or one plateau ignores: console and train.log
        preflight_notes.append(note)
        if console is not None:
            console.print(note, highlight=False, markup=False, style="yellow")
    scaler = torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=use_scaler)
    train_model: nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_kw: dict[str, Any] = {"find_unused_parameters": tc.find_unused_parameters}
        if device.type == "cuda":
            ddp_kw["device_ids"] = [device.index]
        train_model = DDP(model, **ddp_kw)
    if tc.compile:
        train_model = torch.compile(train_model)

    # ---- run directory
    resolved = config_from_dict(config_to_dict(cfg))
    logger = RunLogger(run_dir if ctx.is_main else None)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(resolved, run_dir / "config.yaml")
    run = _Run(
        cfg=cfg, ctx=ctx, device=device, task=task, model=model, train_model=train_model, loss_fn=loss_fn,
        loader=loader, batches=batches, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        amp_dtype=amp_dtype, logger=logger, hooks=hooks, console=console,
        eval_ctx=EvalContext(device=device, dist=ctx, amp_dtype=amp_dtype, batch_size=tc.val_batch_size,
                             num_workers=workers, loss_fn=loss_fn, keep_inputs=True),
        base_payload={
            "model": dict(getattr(model, "mambaseg_spec", {}) or {}),
            "normalization": task.normalization.to_dict() if task.normalization is not None else None,
            "label_map": dict(task.label_map),
            "image_size": [int(s) for s in cfg.data.image_size],
            "task": {"layout": task.name, "num_classes": num_classes, "in_chans": in_chans,
                     "evaluator": getattr(task.evaluator, "name", ""),
                     # how predictions must scale raw volumes (CT window or min-max per channel; nnU-Net layout)
                     **({"channel_names": list(task.info["channel_names"])} if task.info.get("channel_names")
                        else {})},
            "config": config_to_dict(resolved),
        },
    )
    run.startup = startup
    from mambaseg.engine.cuda_graph import graphs_wanted

    run.graph_pending, graph_off = graphs_wanted(
        tc.cuda_graph, device, distributed=ctx.enabled, compiled=tc.compile,
        static_steps=type(hooks).before_step is TrainHooks.before_step)
    if tc.cuda_graph is None and graph_off and device.type == "cuda":
        preflight_notes.append(f"train.cuda_graph (auto): off ({graph_off})")
    if tc.ema_decay is not None:
        from mambaseg.engine.ema import WeightEMA

        run.ema = WeightEMA(model, tc.ema_decay)
    if state is not None:
        _restore(run, state)
        if run.ema is not None:
            run.ema.restore(model, state, rpath)
        preflight_notes += [f"resume: {c} applied" for c in resume_changes]
    if ctx.is_main:
        # on CPU a snapshot for a background writer would double the RAM of the run (weights + optimizer state)
        run.copies = bool(tc.async_checkpoints) and device.type != "cpu"
        run.writer = CheckpointWriter(background=run.copies)
    if preflight_init:
        preflight_notes.append(preflight_init)
        if console is not None:
            console.print(preflight_init, highlight=False)
    for note in preflight_notes:
        logger.log(note)
    n_params = sum(p.numel() for p in model.parameters())
    header = (
        f"{'resume' if state else 'start'}: model {cfg.model.name} ({n_params:,} params), data {cfg.data.path} "
        f"[{task.name}: {task.info}] ({_sizes(task)}), device {device}{_threads_note(device)}, amp {amp_dtype}, "
        f"processes {ctx.world_size}, global batch {tc.batch_size}, {batches.per_epoch} steps/epoch, loss "
        f"{cfg.loss.name}"
    )
    logger.log(header)
    if console is not None:  # the same header on the console, TTY or not (nohup, SLURM)
        console.print(header, highlight=False, soft_wrap=True, markup=False)  # task.info has [brackets]
    startup["ready"] = seconds_since_process_start()
    return run


def _preflight(cfg: RunConfig, task: DataTask, num_classes: int, console: Any) -> list[str]:
    """Everything checkable before the first step: metric name, label map, every training and validation
    sample (with ``data.validate``); prints the files ``data.skip_bad`` left out and warnings. Returns log lines."""
    check_best_metric(task.evaluator, cfg.train.best_metric)
    check_label_map(task.label_map, num_classes, cfg.data.path)
    notes: list[str] = []
    skipped = list(task.info.get("skipped") or [])
    if skipped:
        notes.append(f"data.skip_bad: left out {len(skipped)} problem file(s) of {cfg.data.path}:")
        notes += [f"  - {s}" for s in skipped]
    if cfg.data.validate:
        notes += check_samples({"train": task.train, "val": task.val}, cfg.data.path)
    if task.info.get("in_sample_validation"):  # data.train_splits names the validation split too
        notes.append(f"warning: {task.info['in_sample_validation']}")
    if console is not None:
        for line in notes:
            console.print(line, highlight=False, markup=False,
                          style="yellow" if line.startswith(("warning", "data.skip_bad")) else None)
    return notes


def _sizes(task: DataTask) -> str:
    """``train 658 slices, val 20 volumes``: each split's size with what it counts (the info's n_* do not say)."""
    from mambaseg.data.volumetric import SliceDataset2D, VolumeDataset

    def unit(ds: Any) -> str:
        return "volumes" if isinstance(ds, VolumeDataset) else "slices" if isinstance(ds, SliceDataset2D) else "images"

    return ", ".join(f"{s} {len(d)} {unit(d)}" for s, d in task.datasets.items() if d is not None)


def _threads_note(device: torch.device) -> str:
    return f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""


def _follow_task(cfg: RunConfig, num_classes: int) -> RunConfig:
    """The fields left to the data, resolved once the task is known (``loss.name=auto``)."""
    from mambaseg.configs import apply_overrides
    from mambaseg.losses import resolve_loss_name

    name = resolve_loss_name(cfg.loss.name, num_classes)
    return cfg if name == cfg.loss.name else apply_overrides(cfg, {"loss.name": name})


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Continue from a ``last.pt``: weights, optimizer, schedule, scaler, counters, history, RNG, hooks."""
    unwrap_model(run.model).load_state_dict(state["state_dict"])
    run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scheduler"):
        run.scheduler.load_state_dict(state["scheduler"])
        _reapply_schedule(run.scheduler, run.optimizer)
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.step = int(state["epoch"]), int(state["step"])
    run.logger.resume_at(epoch=run.start_epoch, step=run.step)  # TensorBoard drops what came after the checkpoint
    best = state.get("best") or {}
    run.best_value = best.get("value")
    run.best_epoch = int(best.get("epoch", 0))
    run.history = list(state.get("history") or [])
    run.best_metrics = dict(state.get("best_metrics") or {})
    if state.get("hooks"):
        run.hooks.load_state_dict(state["hooks"])
    if state.get("rng"):
        set_rng_state(state["rng"])
    run.resumed = True


def _reapply_schedule(scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
    """Set the learning rates of a restored run from the REBUILT schedule at the restored position.

    The optimizer's state holds the rate of the schedule the checkpoint was written with; a resume with a raised
    ``train.epochs``/``train.max_steps`` has another schedule. ``LambdaLR`` computes ``base_lr * lr_lambda(t)``, the
    same expression as its own step, so an exact resume (same schedule) keeps the same rates bit for bit. The
    ``plateau`` schedule has no position to follow: its reductions live in the optimizer's rates."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return
    t = scheduler.last_epoch
    lrs = [base * fn(t) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)


def _loop(run: _Run, callbacks: Any, show_progress: bool) -> None:
    """The epoch loop: train, validate, save, log; stops on epochs, max_steps, time limit or a callback."""
    tc = run.cfg.train
    t0 = time.perf_counter()
    saved_epoch, epoch = run.start_epoch, run.start_epoch  # the epoch last.pt holds (a resumed run's start)
    try:
        with _deterministic(tc.deterministic), _Progress(run.console, show_progress, tc.epochs,
                                                          run.start_epoch) as bar:
            for epoch in range(run.start_epoch, tc.epochs):
                if tc.max_steps is not None and run.step >= tc.max_steps:
                    run.stop_reason = f"max_steps={tc.max_steps} reached"
                    break
                te = time.perf_counter()
                train_loss, lr_used, capped = _train_epoch(run, epoch, bar)
                last_epoch = epoch + 1 == tc.epochs or capped
                record: dict[str, Any] = {"epoch": epoch + 1, "step": run.step, "train_loss": train_loss,
                                          "lr": lr_used, "best_metric": tc.best_metric, **run.epoch_times}
                tv = time.perf_counter()
                if (epoch + 1) % tc.val_every == 0 or last_epoch:
                    record.update(_validate(run, epoch))
                record["time_val"] = time.perf_counter() - tv
                run.history.append(record)
                saved = _checkpoint_due(run, epoch + 1, last_epoch)
                tc0 = time.perf_counter()
                # the checkpoint's copy of this record gets its time so far (a resumed run keeps every epoch's time);
                # the in-memory record is updated below with the checkpoint write
                record["time_ckpt"], record["time"] = 0.0, tc0 - te
                if saved:
                    _checkpoint(run, epoch + 1)
                    saved_epoch = epoch + 1
                record["time_ckpt"] = time.perf_counter() - tc0
                record["time"] = time.perf_counter() - te
                _log_epoch(run, record, bar, final=last_epoch)
                barrier(run.ctx)
                stop = _should_stop(run, epoch, callbacks, t0)
                if stop and epoch + 1 < tc.epochs:
                    run.stop_reason = stop
                    if not saved:
                        _checkpoint(run, epoch + 1)
                    run.logger.history(run.history, final=True)
                    break
                if capped:
                    run.stop_reason = f"max_steps={tc.max_steps} reached"
                    break
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):  # say what an interrupted run keeps: last.pt is not written on Ctrl-C
            _interrupted(run, epoch + 1, saved_epoch, "terminated (SIGTERM)" if isinstance(exc, Terminated)
                         else "interrupted")
        run.logger.close()
        if run.writer is not None:
            with contextlib.suppress(Exception):  # finish the writes already queued; the original error wins
                run.writer.close()
        raise
    finally:
        run.batch_iter = None  # loader workers end with the loop
    run.seconds = time.perf_counter() - t0


def _interrupted(run: _Run, epoch: int, saved_epoch: int, word: str) -> None:
    """The console and ``train.log`` line of a run interrupted (Ctrl-C) or terminated (SIGTERM, from the CLI) in
    ``epoch``: what ``--resume`` continues from."""
    tc = run.cfg.train
    last = run.ckpt_dir / "last.pt"
    if saved_epoch:
        msg = (f"{word} in epoch {epoch} (step {run.step}): {last} holds epoch {saved_epoch}, so --resume "
               f"continues from there and trains epochs {saved_epoch + 1}..{epoch} again (last.pt is written after "
               f"the first epoch, then every train.checkpoint_interval_s = {tc.checkpoint_interval_s:g} s or "
               "train.checkpoint_every epochs, and at the end)")
    else:
        msg = f"{word} in epoch {epoch} (step {run.step}), before the first {last}: there is nothing to resume"
    _note(run, msg)


def _train_epoch(run: _Run, epoch: int, bar: _Progress) -> tuple[float, float, bool]:
    """One epoch of optimizer steps; returns (mean training loss, lr used, whether max_steps was reached).

    The lr used is the rate the epoch trained at (``interval: epoch``), or with a per-step schedule the rate of its
    last step; the per-step ``train_step/lr`` scalars are each step's own rate, read before the schedule steps."""
    tc, ctx, device = run.cfg.train, run.ctx, run.device
    seed_everything(_epoch_seed(tc.seed, epoch, ctx.rank))
    batches = _epoch_batches(run, epoch)
    run.train_model.train()
    bar.new_epoch(epoch + 1, run.batches.per_epoch)
    clip = float(tc.grad_clip) if tc.grad_clip else math.inf
    params = [p for p in run.model.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), dtype=torch.float64)
    count = 0
    capped = False
    lr_used: float | None = None  # the rate of the epoch's last step (interval=step: the schedule moves per step)
    t_data = 0.0
    t_epoch = time.perf_counter()
    for _ in range(run.batches.per_epoch):
        t_wait = time.perf_counter()
        batch = next(batches)
        t_data += time.perf_counter() - t_wait
        if run.first_step_s is None:
            run.startup.setdefault("first_batch", seconds_since_process_start())
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True).long()
        run.hooks.before_step(run.model, run.step)
        with autocast_for(device, run.amp_dtype):
            logits = _forward(run, x)
        loss = run.loss_fn(logits.float(), y)
        bs = x.shape[0]
        # one small all-reduce per step, on the device: global loss sum, sample count and a non-finite flag
        lv = loss.detach().double()
        finite = torch.isfinite(lv)
        red = all_reduce_sum(torch.stack([torch.where(finite, lv * bs, 0.0), torch.full_like(lv, bs),
                                          (~finite).double()]), ctx)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip)
        # one copy to the host per step, once the backward pass is queued (the checks come before the weights
        # change: a non-finite loss or gradient never reaches the optimizer)
        red = torch.cat([red, gnorm.detach().double().view(1)]).cpu()
        if red[2] > 0:
            _diverged(run, bar, epoch, "loss", inputs=x)
        if not run.scaler.is_enabled() and not math.isfinite(float(red[3])):
            _diverged(run, bar, epoch, "gradient norm")
        lr_used = run.optimizer.param_groups[0]["lr"]  # the rate of this step, read before the schedule moves on
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update(run.model)
        if not run.plateau and run.cfg.schedule.interval == "step":
            run.scheduler.step()
        run.step += 1
        if run.first_step_s is None:
            run.first_step_s = seconds_since_process_start()
        loss_sum += red[0]
        count += int(red[1])
        run.n_seen += int(red[1])
        if ctx.is_main and run.step % max(tc.log_every, 1) == 0:
            run.logger.scalars({"loss": float(red[0] / red[1]), "lr": lr_used,
                                "grad_norm": float(red[3])}, run.step, prefix="train_step/", axis="step")
        bar.step(f"loss {float(red[0] / max(red[1], 1)):.4f}")
        if tc.max_steps is not None and run.step >= tc.max_steps:
            capped = True
            break
    if run.cfg.schedule.interval == "epoch" or lr_used is None:
        lr_used = run.optimizer.param_groups[0]["lr"]
    if not run.plateau and run.cfg.schedule.interval == "epoch":
        run.scheduler.step()
    run.epoch_times = {"time_data": t_data, "time_step": time.perf_counter() - t_epoch - t_data}
    return float(loss_sum / max(count, 1)), lr_used, capped


def _forward(run: _Run, x: torch.Tensor) -> Any:
    """The training forward: replayed from the recorded CUDA graph when there is one (recorded on the first batch
    when ``train.cuda_graph`` allows it), else the (wrapped) model."""
    if run.graph_pending:
        run.graph_pending = False
        from mambaseg.engine.cuda_graph import GraphedTraining

        try:
            run.graph = GraphedTraining(run.model, x, run.amp_dtype)
        except RuntimeError as e:
            if run.cfg.train.cuda_graph:
                raise
            _note(run, f"train.cuda_graph (auto): {e}; training without CUDA graphs")
    return run.graph(x) if run.graph is not None else run.train_model(x)


def _note(run: _Run, line: str) -> None:
    """A line for ``train.log`` and, on the main process, the console."""
    run.logger.log(line)
    if run.console is not None and run.ctx.is_main:
        run.console.print(line, highlight=False, markup=False, style="yellow")


def _epoch_batches(run: _Run, epoch: int) -> Any:
    """The iterator the batches of ``epoch`` come from: with ``data.persistent_workers`` one iterator over all
    remaining epochs, started at the first epoch this process trains (workers keep preparing batches across epoch
    ends); without, a fresh iterator (and workers) per epoch."""
    persistent = run.cfg.data.persistent_workers
    if run.batch_iter is None or not persistent:
        run.batches.first, run.batches.last = epoch, (run.cfg.train.epochs if persistent else epoch + 1)
        run.loader.generator.manual_seed(_epoch_seed(run.cfg.train.seed, epoch, run.ctx.rank))
        run.batch_iter = None  # a previous iterator's workers end before new ones start
        run.batch_iter = iter(run.loader)
    return run.batch_iter


def _validate(run: _Run, epoch: int) -> dict[str, Any]:
    """Evaluate on the validation split; a better result keeps a snapshot of the weights for ``best.pt`` (written
    before the next ``last.pt``) or, with a synchronous writer (CPU), writes ``best.pt`` at once from the live weights.

    Returns the epoch record's ``val``/``best`` entries."""
    tc = run.cfg.train
    evaluated = run.ema.model if run.ema is not None else run.model  # EMA: the average is validated and saved
    run.hooks.before_validation(evaluated, epoch)
    metrics = run.task.evaluator.evaluate(evaluated, run.task.val, run.eval_ctx)  # type: ignore[arg-type]
    value = lookup_metric(metrics, tc.best_metric)
    if run.plateau:
        run.scheduler.step(value)
    run.last_metrics = metrics
    out: dict[str, Any] = {"val": {**run.task.evaluator.headline(metrics), tc.best_metric: value}}
    if _better(value, run.best_value, tc.best_mode):
        run.best_value, run.best_epoch, run.best_metrics = value, epoch + 1, metrics
        out["best"] = True
        if run.ctx.is_main and run.copies:
            run.best_payload = _payload(run, epoch + 1, metrics, training=False)
        elif run.ctx.is_main and run.writer is not None:
            run.writer.submit(run.ckpt_dir / "best.pt", _payload(run, epoch + 1, metrics, training=False))
    return out


def _payload(run: _Run, epoch_done: int, metrics: dict[str, Any], *, training: bool) -> dict[str, Any]:
    """Checkpoint content; ``training`` adds the resume state.

    The tensors are snapshots when a background writer saves them while training goes on (``run.copies``), else the
    live tensors (written synchronously before the next step changes them)."""
    tc = run.cfg.train
    keep = snapshot if run.copies else (lambda obj: obj)
    payload = dict(run.base_payload)
    payload.update({
        "state_dict": keep((run.ema.model if run.ema is not None else unwrap_model(run.model)).state_dict()),
        "epoch": epoch_done,
        "step": run.step,
        "metrics": metrics,
        "best": {"metric": tc.best_metric, "mode": tc.best_mode, "value": run.best_value, "epoch": run.best_epoch},
    })
    if training:
        payload.update({
            "optimizer": keep(run.optimizer.state_dict()),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "rng": get_rng_state(),
            "history": [dict(r) for r in run.history],
            "best_metrics": run.best_metrics,
            "hooks": run.hooks.state_dict(),
        })
        if run.ema is not None:
            payload["ema"] = keep(run.ema.state(unwrap_model(run.model)))
    return payload


def _checkpoint_due(run: _Run, epoch_done: int, last_epoch: bool) -> bool:
    """Whether ``last.pt`` is written after this epoch (see ``train.checkpoint_every`` / ``checkpoint_interval_s``)."""
    tc = run.cfg.train
    if last_epoch:
        return True
    if tc.checkpoint_every:
        return epoch_done % tc.checkpoint_every == 0
    return run.last_write is None or time.perf_counter() - run.last_write >= tc.checkpoint_interval_s


def _checkpoint(run: _Run, epoch_done: int) -> None:
    """Queue ``best.pt`` (when the best changed) and then ``last.pt`` (main process only; written in order)."""
    run.last_write = time.perf_counter()
    if not run.ctx.is_main or run.writer is None:
        return
    if run.best_payload is not None:
        run.writer.submit(run.ckpt_dir / "best.pt", run.best_payload)
        run.best_payload = None
    run.writer.submit(run.ckpt_dir / "last.pt", _payload(run, epoch_done, run.last_metrics, training=True))


def _log_epoch(run: _Run, record: dict[str, Any], bar: _Progress, *, final: bool) -> None:
    """TensorBoard scalars, ``history.json``/``progress.png``, ``train.log`` and the console line of an epoch."""
    if run.ctx.is_main:
        epoch = record["epoch"]
        run.logger.scalars({"loss": record["train_loss"], "lr": record["lr"], "epoch_time": record["time"]}, epoch,
                           prefix="train/")
        if "val" in record:
            run.logger.scalars(flatten_metrics(run.last_metrics), epoch, prefix="val/")
        run.logger.history(run.history, final=final)
        line = _epoch_line(record, run.cfg.train.epochs)
        run.logger.log(line)
        bar.print(line)
    best = run.best_value
    bar.epoch_done(f"best {run.cfg.train.best_metric} {best:.4f}" if best is not None else "")


def _should_stop(run: _Run, epoch: int, callbacks: Any, t0: float) -> str:
    """Reason to stop after this epoch (callbacks, time limit), the same on every process; ``""`` = go on."""
    tc = run.cfg.train
    if callbacks and run.writer is not None:
        run.writer.flush()  # callbacks may read the run directory: let them see the checkpoints of this epoch
    cb_state = {"epoch": epoch + 1, "step": run.step, "history": run.history, "model": run.model,
                "metrics": run.last_metrics, "run_dir": Path(tc.out)}
    answers = [cb(cb_state) for cb in callbacks]
    reasons = [a for a in answers if isinstance(a, str) and a]  # a non-empty string stops too and says why
    want_stop = any(a is True for a in answers) or bool(reasons)
    over_time = tc.time_limit_s is not None and time.perf_counter() - t0 > tc.time_limit_s
    # every process must take the same decision (a time budget may differ between processes)
    votes = all_reduce_sum(torch.tensor([float(want_stop), float(over_time)]), run.ctx)
    if votes[1] > 0:
        return f"train.time_limit_s={tc.time_limit_s:g} reached"
    if votes[0] > 0:
        return reasons[0] if reasons else "stopped by a callback (e.g. a time budget)"
    return ""


def _finish(run: _Run) -> TrainResult:
    """``metrics.json`` (best checkpoint's validation metrics + run facts), ``best.safetensors``, summary table."""
    cfg, tc, ctx = run.cfg, run.cfg.train, run.ctx
    run_dir = Path(tc.out)
    ips = run.n_seen / run.seconds if run.seconds > 0 else 0.0
    summary = {
        **dict(run.best_metrics),
        "checkpoint": "checkpoints/best.pt",
        "best_metric": tc.best_metric,
        "best_mode": tc.best_mode,
        "best_value": run.best_value,
        "best_epoch": run.best_epoch,
        "last": run.last_metrics,
        # seconds / images_per_second: this process's loop; epoch_seconds_total: every epoch of the run, those done
        # before a resume included (their per-epoch 'time' comes back with the history), without process start-up
        "train": {"epochs": len(run.history), "steps": run.step, "seconds": round(run.seconds, 3),
                  "epoch_seconds_total": round(sum(r.get("time", 0.0) for r in run.history), 3),
                  "resumed": run.resumed, "images_per_second": round(ips, 3), "processes": ctx.world_size,
                  "device": str(run.device), "device_name": _device_name(run.device),
                  "amp": str(run.amp_dtype) if run.amp_dtype else "off",
                  "stop_reason": run.stop_reason or "completed",
                  "first_step_s": round(run.first_step_s, 3) if run.first_step_s is not None else None,
                  "startup_s": {k: round(v, 3) for k, v in run.startup.items()}},
        "data": {"path": str(cfg.data.path), "layout": run.task.name, "split": "val", **run.task.info},
        "model": {"name": cfg.model.name, "params": sum(p.numel() for p in run.model.parameters())},
    }
    if ctx.is_main:
        if run.best_payload is not None:  # a best found after the last checkpoint (e.g. a run ended by max_steps)
            run.writer.submit(run.ckpt_dir / "best.pt", run.best_payload)
            run.best_payload = None
        run.writer.close()
        best_pt = run.ckpt_dir / "best.pt"
        if best_pt.is_file() and run.hooks.export_safetensors:  # once at the end: best.pt changes often early on
            export_safetensors(run.ckpt_dir / "best.safetensors", load_checkpoint(best_pt))
        atomic_write_json(run_dir / "metrics.json", summary)
        run.logger.log(f"done: {len(run.history)} epochs, {run.step} steps, {run.seconds:.1f} s, {ips:.3g} img/s; "
                       f"best {tc.best_metric} = {run.best_value} at epoch {run.best_epoch}")
        if run.stop_reason:  # stopped before train.epochs: say why, and how to go on
            note = (f"stopped after epoch {len(run.history)} of {tc.epochs}: {run.stop_reason}; --resume continues "
                    "the run from last.pt" + (" (with a new train.time_limit_s budget)" if "time_limit" in
                                              run.stop_reason else " with a larger train.max_steps"
                                              if "max_steps" in run.stop_reason else ""))
            _note(run, note)
        run.logger.close()
        if run.console is not None:
            run.console.print(run.task.evaluator.summary_table(summary, run_dir))
    barrier(ctx)
    best = run.best_value
    return TrainResult(run_dir=run_dir, metrics=summary, best_epoch=run.best_epoch,
                       best_value=float(best) if best is not None else float("nan"), epochs=len(run.history),
                       steps=run.step, seconds=run.seconds, images_per_second=ips, history=run.history,
                       rank=ctx.rank)


def _device_name(device: torch.device) -> str:
    """The accelerator's model name (``NVIDIA H100 80GB HBM3``) or the device type: results merged from runs made on
    different machines say which machine trained what."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


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


def _diverged(run: _Run, bar: _Progress, epoch: int, what: str, inputs: torch.Tensor | None = None) -> None:
    if run.writer is not None:
        run.writer.flush()  # the last good checkpoint is on disk before the message names it
    last = run.ckpt_dir / "last.pt"
    keep = (f"the last good checkpoint {last} (end of the previous epoch) is kept" if last.is_file()
            else "no checkpoint was written yet")
    n_bad = int((~torch.isfinite(inputs)).sum()) if inputs is not None and inputs.is_floating_point() else 0
    if n_bad:  # a data problem, not an optimisation one
        msg = (f"training stopped: the input batch at epoch {epoch + 1}, step {run.step + 1} holds {n_bad} NaN/inf "
               f"value(s), so the {what} became NaN/inf; {keep}. Check the training files (a NaN-free dataset "
               f"passes the pre-flight check), not the learning rate")
        run.logger.log(msg)
        run.logger.close()
        raise TrainingDiverged(msg)
    msg = (f"training diverged: the {what} became NaN/inf at epoch {epoch + 1}, step {run.step + 1} "
           f"(lr {run.optimizer.param_groups[0]['lr']:.3g}); stopped; {keep}. Lower the learning rate (--lr), "
           f"enable gradient clipping (--set train.grad_clip=1.0) or turn AMP off (--set train.amp=off)")
    run.logger.log(msg)
    raise TrainingDiverged(msg)


def _epoch_line(rec: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {rec['epoch']}/{epochs}", f"step {rec['step']}", f"train loss {rec['train_loss']:.4f}",
             f"lr {rec['lr']:.3g}", f"{rec.get('time', 0):.1f}s"]
    if "val" in rec:
        # counts (hd95_n_by_<rule>_rule: values an empty-mask rule decided) as integers, scores with 4 decimals
        parts.append(" ".join(f"val {k} {int(v)}" if k.startswith("hd95_n_by_") else f"val {k} {v:.4f}"
                              for k, v in rec["val"].items()))
    if rec.get("best"):
        parts.append("(best)")
    return " | ".join(parts)
