"""SliceMamba search pipeline: search split, SPOS supernet training, evolutionary search, ``arch.json``.

:func:`run_search` does, in order (every step resumable from the output folder):

1. opens the data with :func:`mambaseg.engine.open_data` (folder datasets or ``.npz`` caches); the input
   normalisation comes from the training split;
2. carves a **search split** out of the training ids with a seed (never touching val/test) and saves it to
   ``OUT/search_split.json`` (reused when present); the supernet trains on the rest of ``train``;
3. trains the :class:`~mambaseg.nas.supernet.SliceMambaSupernet` with single-path one-shot sampling (a new
   uniformly random path every iteration; only that path runs and is updated) using the run config's
   optimizer, schedule and loss (the SliceMamba recipe: AdamW 1e-3, cosine T_max 50, BCE + Dice), validating
   every epoch on the val split with a random path; ``OUT/supernet/last.pt`` (resumable) and ``best.pt``
   (lowest val loss, as the original) are written each epoch;
4. freezes the best supernet and runs :class:`~mambaseg.nas.evolution.EvolutionSearch` with fitness
   ``(pooled IoU, pooled DSC)`` (lexicographic) on the search split, evaluated with the deterministic
   evaluation transform (resize only); the state is saved after every candidate
   (``OUT/search_state.json``) and every score is logged to ``OUT/search_log.jsonl``;
5. writes ``OUT/arch.json``: the best gene tuple and its slices, its fitness, the top candidates, the search
   split, the seeds and the settings. ``mambaseg train --model slicemamba --arch OUT/arch.json`` retrains it.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mambaseg.configs import RunConfig, config_to_dict
from mambaseg.models.slicemamba import arch_slices
from mambaseg.nas.evolution import EvolutionConfig, EvolutionSearch
from mambaseg.nas.supernet import SliceMambaSupernet
from mambaseg.utils.files import atomic_path, atomic_write_json

__all__ = ["SearchSettings", "carve_search_split", "run_search", "train_supernet", "supernet_fitness"]


@dataclass
class SearchSettings:
    """Settings of a SliceMamba search (the training side lives in the :class:`RunConfig`).

    Attributes:
        supernet_epochs: SPOS training epochs of the supernet.
        evolution: evolutionary-search hyper-parameters (paper defaults).
        search_fraction: fraction of the training ids carved out as the search split.
        search_seed: seed of the search-split carving (default: ``train.seed``).
        sampler_seed: seed of the supernet's path sampler (default: ``train.seed``).
        eval_batch_size: batch size of the fitness evaluation (default: ``train.val_batch_size``).
        model_kwargs: extra supernet options (``dims``, ``depths``, ``d_state``, ... for small test runs).
        progress: show rich progress bars.
        save_every: write the supernet checkpoints every N epochs (and at the end); the supernet with its
            optimizer state is 4x a SliceMamba, so writing it every epoch can dominate short epochs.
        supernet_time_limit_s: stop supernet training after the first epoch that ends past this budget.
        search_time_limit_s: stop the evolution after the first generation that ends past this budget.
    """

    supernet_epochs: int = 300
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    search_fraction: float = 0.2
    search_seed: int | None = None
    sampler_seed: int | None = None
    eval_batch_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    save_every: int = 1
    supernet_time_limit_s: float | None = None
    search_time_limit_s: float | None = None


# ----------------------------------------------------------------------------------------------- split
def carve_search_split(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split training ids into (remaining train ids, search ids), reproducibly.

    The ids are sorted, shuffled with ``random.Random(seed)`` and the first ``round(fraction * n)`` (at least
    one, leaving at least one for training) form the search split. Both lists come back sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"search_fraction must be in (0, 1), got {fraction}")
    ids = sorted(str(i) for i in ids)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 training images to carve a search split, got {len(ids)}")
    order = list(ids)
    random.Random(seed).shuffle(order)
    k = min(max(1, round(fraction * len(ids))), len(ids) - 1)
    search = sorted(order[:k])
    keep = set(search)
    return [i for i in ids if i not in keep], search


def _load_or_make_split(path: Path, ids: list[str], fraction: float, seed: int) -> dict[str, Any]:
    if path.is_file():
        data = json.loads(path.read_text())
        known = set(ids)
        missing = [i for i in data.get("search", []) + data.get("train", []) if i not in known]
        if missing:
            raise ValueError(f"{path}: ids {missing[:5]} are not in the training split of this dataset; "
                             "use a new --out folder for a different dataset")
        if data.get("seed") != seed or data.get("fraction") != fraction:
            raise ValueError(f"{path} was carved with seed {data.get('seed')} / fraction {data.get('fraction')}, "
                             f"not {seed} / {fraction}; use the same settings or a new --out folder")
        return data
    train, search = carve_search_split(ids, fraction, seed)
    data = {"seed": seed, "fraction": fraction, "n_train": len(train), "n_search": len(search),
            "train": train, "search": search}
    atomic_write_json(path, data)
    return data


# ----------------------------------------------------------------------------------------------- data
def _open_search_data(cfg: RunConfig) -> tuple[Any, Dataset, Dataset, Dataset]:
    """(task, augmented train dataset, eval-transform train dataset, val dataset)."""
    from mambaseg.engine.tasks import open_data

    task = open_data(cfg.data.path, cfg, splits=("train", "val"))
    cfg_eval = copy.deepcopy(cfg)
    cfg_eval.data.augment = False
    cfg_eval.data.validate = False
    plain = open_data(cfg.data.path, cfg_eval, splits=("train",), normalization=task.normalization)
    return task, task.train, plain.train, task.val


def _ids(ds: Dataset) -> list[str]:
    ids = getattr(ds, "ids", None)
    if ids is None:
        raise TypeError(f"{type(ds).__name__} has no .ids; the search split needs datasets that name their samples")
    return [str(i) for i in ids]


def _collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"image": torch.stack([b["image"] for b in batch]),
            "mask": torch.stack([torch.as_tensor(b["mask"]) for b in batch]).long()}


# ------------------------------------------------------------------------------------------- supernet
def _resolve(cfg: RunConfig) -> tuple[torch.device, torch.dtype | None]:
    from mambaseg.engine.trainer import resolve_amp, resolve_device

    device = resolve_device(cfg.train.device)
    amp_dtype, use_scaler = resolve_amp(cfg.train.amp, device)
    if use_scaler:
        raise ValueError(
            "the supernet search supports train.amp auto/bf16/off (fp16 with a GradScaler is not supported)"
        )
    return device, amp_dtype


def _save(path: Path, obj: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train_supernet(
    net: SliceMambaSupernet,
    train_ds: Dataset,
    val_ds: Dataset,
    cfg: RunConfig,
    epochs: int,
    out_dir: Path,
    *,
    evaluator: Any,
    progress: bool = True,
    log: Any = print,
    save_every: int = 1,
    time_limit_s: float | None = None,
) -> dict[str, Any]:
    """SPOS training of ``net`` (one random path per iteration), resumable from ``out_dir/last.pt``.

    Args:
        save_every: write ``last.pt``/``best.pt`` every N epochs and at the end (a resumed run restarts after
            the last written epoch).
        time_limit_s: stop after the first epoch that ends past this many seconds of this call.

    Returns:
        ``{"epochs", "steps", "best_epoch", "best_val_loss", "history", "stopped_early"}``; ``out_dir/best.pt``
        holds the weights with the lowest validation loss (random path).
    """
    from mambaseg.engine.evaluator import EvalContext, autocast_for
    from mambaseg.engine.optim import build_optimizer, build_scheduler
    from mambaseg.losses import create_loss

    device, amp_dtype = _resolve(cfg)
    net.to(device)
    loss_fn = create_loss(cfg.loss.name, **(cfg.loss.kwargs or {}))
    bs = int(cfg.train.batch_size)
    steps_per_epoch = max(1, len(train_ds) // bs) if len(train_ds) >= bs else 1
    opt = build_optimizer(net, cfg.optim)
    sched = build_scheduler(opt, cfg.schedule, epochs=epochs, steps_per_epoch=steps_per_epoch,
                            max_steps=cfg.train.max_steps)
    start, step, history = 0, 0, []
    best = {"epoch": None, "val_loss": math.inf}
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if last_path.is_file():
        ck = torch.load(last_path, map_location="cpu", weights_only=True)
        net.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        net.sampler.load_state_dict(ck["sampler"])
        start, step, history, best = int(ck["epoch"]), int(ck["step"]), list(ck["history"]), dict(ck["best"])
        log(f"supernet: resuming after epoch {start}/{epochs}")
    gclip = cfg.train.grad_clip
    save_every = max(1, int(save_every))
    t_call = time.perf_counter()
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early = False
    bar = None
    if progress and start < epochs:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("[bold]supernet[/] epoch {task.fields[ep]}/{task.fields[eps]}"), BarColumn(),
                       MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn())
        bar.start()
        tid = bar.add_task("supernet", total=(epochs - start) * steps_per_epoch, ep=start + 1, eps=epochs, loss="-")
    try:
        for epoch in range(start, epochs):
            if cfg.train.max_steps is not None and step >= cfg.train.max_steps:
                break
            net.train()
            net.set_arch(None)
            g = torch.Generator().manual_seed(int(cfg.train.seed) * 100003 + epoch)
            torch.manual_seed(int(cfg.train.seed) * 1000003 + epoch)  # drop-path masks; reproducible on resume
            if hasattr(train_ds, "set_epoch"):
                train_ds.set_epoch(epoch)
            loader = DataLoader(train_ds, batch_size=bs, shuffle=True, generator=g, drop_last=len(train_ds) >= bs,
                                num_workers=int(cfg.data.num_workers), collate_fn=_collate,
                                pin_memory=device.type == "cuda")
            t0, loss_sum, n = time.perf_counter(), 0.0, 0
            for batch in loader:
                x = batch["image"].to(device, non_blocking=True)
                y = batch["mask"].to(device, non_blocking=True)
                with autocast_for(device, amp_dtype):
                    logits = net(x)  # a fresh uniformly random path
                loss = loss_fn(logits.float(), y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"supernet loss is {float(loss)} at epoch {epoch + 1}, step {step + 1} "
                                             f"(path {net.last_arch}); lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if gclip:
                    torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.grad is not None], float(gclip))
                opt.step()
                if cfg.schedule.interval == "step":
                    sched.step()
                step += 1
                loss_sum += float(loss.detach()) * x.shape[0]
                n += x.shape[0]
                if bar is not None:
                    bar.update(tid, advance=1, loss=f"{loss_sum / max(n, 1):.4f}")
                if cfg.train.max_steps is not None and step >= cfg.train.max_steps:
                    break
            if cfg.schedule.interval == "epoch":
                sched.step()
            net.eval()
            net.set_arch(None)  # validation on a random path (one per batch), as the original
            torch.manual_seed(int(cfg.train.seed) * 7919 + epoch)
            ctx = EvalContext(device=device, amp_dtype=amp_dtype, batch_size=int(cfg.train.val_batch_size),
                              num_workers=int(cfg.data.num_workers), loss_fn=loss_fn)
            res = evaluator.evaluate(net, val_ds, ctx)
            rec = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(n, 1), "val_loss": res["loss"],
                   "val_dice_random_path": res["dice"], "val_iou_random_path": res["iou"],
                   "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 2)}
            history.append(rec)
            if res["loss"] < best["val_loss"]:
                best = {"epoch": epoch + 1, "val_loss": float(res["loss"])}
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
            capped = cfg.train.max_steps is not None and step >= cfg.train.max_steps
            if time_limit_s is not None and time.perf_counter() - t_call > time_limit_s and epoch + 1 < epochs:
                stopped_early = True
            if stopped_early or capped or (epoch + 1) % save_every == 0 or epoch + 1 == epochs:
                if best_state is not None:
                    _save(best_path, {"state_dict": best_state, "epoch": best["epoch"], "val_loss": best["val_loss"]})
                    best_state = None
                _save(last_path, {"state_dict": net.state_dict(), "optimizer": opt.state_dict(),
                                  "scheduler": sched.state_dict(), "sampler": net.sampler.state_dict(),
                                  "epoch": epoch + 1, "step": step, "history": history, "best": best})
                atomic_write_json(out_dir / "history.json", history)
            log(f"supernet epoch {epoch + 1}/{epochs}: train loss {rec['train_loss']:.4f}, val loss "
                f"{rec['val_loss']:.4f}, val dice (random path) {rec['val_dice_random_path']:.4f}")
            if bar is not None:
                bar.update(tid, ep=min(epoch + 2, epochs))
            if stopped_early:
                log(f"supernet: time budget of {time_limit_s:.0f} s used after epoch {epoch + 1}; stopping")
                break
    finally:
        if bar is not None:
            bar.stop()
    return {"epochs": len(history), "steps": step, "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
            "history": history, "stopped_early": stopped_early}


class _MemoryDataset(Dataset):
    """The items of a dataset read once and kept in memory (the search split is scored hundreds of times with
    the deterministic evaluation transform, so decoding it once is enough)."""

    def __init__(self, dataset: Dataset) -> None:
        keep = ("image", "mask", "id")
        self.items = [{k: v for k, v in dataset[i].items() if k in keep} for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def supernet_fitness(net: SliceMambaSupernet, dataset: Dataset, evaluator: Any, *, device: torch.device,
                     amp_dtype: torch.dtype | None, batch_size: int):
    """Fitness function ``arch -> (pooled IoU, pooled DSC)`` of the frozen supernet on ``dataset``.

    ``dataset`` must use a deterministic transform; it is read once into memory.
    """
    from mambaseg.engine.evaluator import EvalContext

    dataset = _MemoryDataset(dataset)
    ctx = EvalContext(device=device, amp_dtype=amp_dtype, batch_size=batch_size, num_workers=0)

    def fitness(arch: tuple[int, ...]) -> tuple[float, float]:
        with net.use_arch(arch):
            res = evaluator.evaluate(net, dataset, ctx)
        return float(res["iou"]), float(res["dice"])

    return fitness


# ---------------------------------------------------------------------------------------------- search
def run_search(cfg: RunConfig, settings: SearchSettings, out: str | Path, *, log: Any = print) -> dict[str, Any]:
    """Full search (see the module docstring); returns the content written to ``OUT/arch.json``.

    Args:
        cfg: run configuration (``data.path``, ``data.image_size``, ``train.batch_size``/``seed``/``device``/
            ``amp``, ``optim``, ``schedule``, ``loss``), e.g. the ``slicemamba_polyp`` recipe with overrides.
        settings: search settings.
        out: output folder (an existing one is resumed).
        log: callable receiving one-line progress messages.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed = int(cfg.train.seed)
    search_seed = seed if settings.search_seed is None else int(settings.search_seed)
    sampler_seed = seed if settings.sampler_seed is None else int(settings.sampler_seed)
    evo = settings.evolution.resolved()
    atomic_write_json(out / "search_config.json", {"run_config": config_to_dict(cfg),
                                                    "settings": {**asdict(settings), "evolution": asdict(evo)}})
    task, train_aug, train_plain, val_ds = _open_search_data(cfg)
    ids = _ids(train_plain)
    if _ids(train_aug) != ids:
        raise RuntimeError("augmented and plain training datasets list different ids")
    split = _load_or_make_split(out / "search_split.json", ids, settings.search_fraction, search_seed)
    index = {i: k for k, i in enumerate(ids)}
    train_sub = Subset(train_aug, [index[i] for i in split["train"]])
    search_sub = Subset(train_plain, [index[i] for i in split["search"]])
    log(f"data: {len(train_sub)} supernet-training images, {len(search_sub)} search images, "
        f"{len(val_ds)} validation images ({task.name})")

    torch.manual_seed(seed)
    net = SliceMambaSupernet(num_classes=task.num_classes, in_chans=task.in_chans, seed=sampler_seed,
                             **settings.model_kwargs)
    sn_dir = out / "supernet"
    sn = train_supernet(net, train_sub, val_ds, cfg, int(settings.supernet_epochs), sn_dir,
                        evaluator=task.evaluator, progress=settings.progress, log=log,
                        save_every=settings.save_every, time_limit_s=settings.supernet_time_limit_s)
    if not (sn_dir / "best.pt").is_file():
        raise RuntimeError(f"{sn_dir / 'best.pt'} was not written: the supernet never reached a finite validation "
                           "loss; check the data and lower the learning rate")
    best = torch.load(sn_dir / "best.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(best["state_dict"])
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    device, amp_dtype = _resolve(cfg)
    net.to(device)
    fitness = supernet_fitness(net, search_sub, task.evaluator, device=device, amp_dtype=amp_dtype,
                               batch_size=int(settings.eval_batch_size or cfg.train.val_batch_size))
    search = EvolutionSearch(fitness, num_genes=net.num_positions, num_choices=net.num_choices, config=evo,
                             state_path=out / "search_state.json", log_path=out / "search_log.jsonl",
                             fitness_names=("iou", "dsc"), progress=settings.progress)
    t0 = time.perf_counter()
    res = search.run(time_limit_s=settings.search_time_limit_s)
    log(f"search: best {list(res.best)} with pooled IoU {res.fitness[0]:.4f}, DSC {res.fitness[1]:.4f} "
        f"({res.num_evaluated} candidates, {res.generations_done} generations, {time.perf_counter() - t0:.1f} s)")
    result = {
        "arch": list(res.best),
        "slices": [list(s) for s in arch_slices(res.best)],
        "fitness": {"iou": res.fitness[0], "dsc": res.fitness[1]},
        "fitness_definition": "(pooled IoU, pooled DSC) of the frozen supernet on the search split, threshold 0.5, "
                              "deterministic evaluation transform; compared lexicographically",
        "top": [{"arch": list(g), "iou": f[0], "dsc": f[1]} for g, f in res.top],
        "num_evaluated": res.num_evaluated,
        "generations": res.generations_done,
        "search_stopped_early": bool(search.stopped_early),
        "model": "slicemamba",
        "model_kwargs": dict(settings.model_kwargs),
        "search_split": {"file": "search_split.json", "seed": search_seed, "fraction": settings.search_fraction,
                         "n_search": len(split["search"]), "n_supernet_train": len(split["train"]),
                         "search_ids": split["search"]},
        "seeds": {"train": seed, "search_split": search_seed, "path_sampler": sampler_seed, "evolution": evo.seed},
        "evolution": asdict(evo),
        "supernet": {"epochs": sn["epochs"], "steps": sn["steps"], "best_epoch": sn["best_epoch"],
                     "best_val_loss": sn["best_val_loss"], "stopped_early": sn["stopped_early"],
                     "checkpoint": "supernet/best.pt"},
        "data": {"path": str(cfg.data.path), "image_size": list(cfg.data.image_size), "layout": task.name,
                 "n_val": len(val_ds)},
        "log": "search_log.jsonl",
    }
    atomic_write_json(out / "arch.json", result)
    return result
