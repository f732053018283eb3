"""SliceMamba search pipeline: search split, SPOS supernet training, evolutionary search, ``arch.json``.

:func:`run_search` does, in order (every step resumable from the output folder):

1. opens the data with :func:`mambaseg.engine.open_data` (folder datasets or ``.npz`` caches); the input
   normalisation comes from the training split;
2. carves a **search split** out of the training ids with a seed (never touching val/test) and saves it to
   ``OUT/search_split.json`` (reused when present); the supernet trains on the rest of ``train``;
3. trains the :class:`~mambaseg.nas.supernet.SliceMambaSupernet` through the engine's training loop
   (:func:`mambaseg.engine.train` with :class:`SupernetHooks`) with single-path one-shot sampling (a new
   uniformly random path every iteration; only that path runs and is updated) using the run config's
   optimizer, schedule and loss (the SliceMamba recipe: AdamW 1e-3, cosine T_max 50, BCE + Dice), validating
   every epoch on the val split with a random path; ``OUT/supernet/last.pt`` (resumable, same format as any
   run's) and ``best.pt`` (lowest val loss, as the original) are written as in any run. What they hold: ``best.pt``
   the supernet's weights (every parameter once, no optimizer state; no buffers to recompute: the supernet has
   none); ``last.pt`` the weights plus the optimizer state an exact resume needs (AdamW's two moments and step of
   every parameter that has been on a sampled path) and the small training state (schedule, RNG, path sampler,
   history). No safetensors copy is exported, and on CPU no in-memory copy is made to write them;
4. freezes the best supernet and runs :class:`~mambaseg.nas.evolution.EvolutionSearch` with fitness
   ``(pooled IoU, pooled DSC)`` (lexicographic) on the search split, evaluated with the deterministic
   evaluation transform (resize only); the state is saved after every candidate
   (``OUT/search_state.json``) and every score is logged to ``OUT/search_log.jsonl``;
5. writes the found network as a normal mambaseg checkpoint, ``OUT/checkpoints/best.pt`` (where ``mambaseg train``
   puts its best weights): a ``slicemamba`` with the searched ``arch`` (the same self-describing model spec
   ``mambaseg train --model slicemamba --arch OUT/arch.json`` records) holding the supernet's best weights of the
   chosen candidate of every position (:meth:`SliceMambaSupernet.subnet_state_dict`), plus the input
   normalisation, label map, image size and task of the supernet run; weights only, sized like the model (no
   optimizer state, no safetensors copy). ``mambaseg predict``/``evaluate --checkpoint`` and ``--init-from`` load
   it. Its ``metrics`` are empty (the network itself was never validated); ``search`` holds the fitness;
6. writes ``OUT/arch.json``: the best gene tuple and its slices, its fitness, the top candidates, the search
   split, the seeds and the settings. ``mambaseg train --model slicemamba --arch OUT/arch.json`` retrains it;
7. once the search has **finished** (every supernet epoch trained and every generation scored, no time limit cut
   it short), deletes the supernet's checkpoints ``OUT/supernet/last.pt`` and ``best.pt`` (1.6 GB + 535 MB at the
   default width), unless ``SearchSettings.keep_supernet`` (``--keep-supernet``). An interrupted or time-limited
   search keeps them, so calling it again resumes. Calling a finished search whose supernet files were removed
   again returns its result (nothing is trained or scored); other settings need the supernet, hence a new folder.

Files a finished search leaves: ``arch.json``, ``checkpoints/best.pt`` (the found network), ``search_log.jsonl``,
``search_state.json``, ``search_split.json``, ``search_config.json`` and ``supernet/`` with the supernet run's
``train.log``, ``history.json``, ``metrics.json``, ``config.yaml`` and ``progress.png`` (its checkpoints only with
``keep_supernet``).
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from mambaseg.configs import RunConfig, config_to_dict
from mambaseg.engine.trainer import TrainHooks
from mambaseg.models._registry import check_model_kwargs
from mambaseg.models.slicemamba import arch_slices
from mambaseg.nas.evolution import EvolutionConfig, EvolutionSearch, check_state_config
from mambaseg.nas.supernet import SliceMambaSupernet
from mambaseg.runtime import resolve_amp, resolve_device
from mambaseg.utils.files import atomic_write_json, json_safe

__all__ = ["SUBNET_CHECKPOINT", "SUPERNET_CHECKPOINTS", "SearchSettings", "SupernetHooks", "carve_search_split",
           "run_search", "save_subnet", "supernet_fitness", "train_supernet"]


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
        save_every: write the supernet checkpoints every N epochs (and at the end); the supernet holds four
            candidate blocks per position (3.7x the weights of a SliceMamba) and ``last.pt`` also its AdamW
            moments (3x the weights), so writing it every epoch can dominate short epochs.
        supernet_time_limit_s: stop supernet training after the first epoch that ends past this budget.
        search_time_limit_s: stop the evolution after the first generation that ends past this budget.
        keep_supernet: keep ``OUT/supernet/last.pt`` and ``best.pt`` after a finished search (by default they are
            deleted once the found network is written to ``OUT/checkpoints/best.pt``).
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
    keep_supernet: bool = False


#: the found network, where ``mambaseg train`` keeps its best weights (relative to the output folder)
SUBNET_CHECKPOINT = "checkpoints/best.pt"
#: the supernet's checkpoints (relative to the output folder), deleted after a finished search unless kept
SUPERNET_CHECKPOINTS = ("supernet/last.pt", "supernet/best.pt")


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
    """The split stored in ``path`` (checked against ``ids``, ``fraction`` and ``seed``) or a new one, not written."""
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
    return {"seed": seed, "fraction": fraction, "n_train": len(train), "n_search": len(search),
            "train": train, "search": search}


# ----------------------------------------------------------------------------------------------- data
def _open_search_data(cfg: RunConfig) -> tuple[Any, Dataset]:
    """(task with the un-augmented train and val splits, the training split with the evaluation transform).

    The normalisation is computed on the un-augmented training split, as the engine does for the supernet."""
    from mambaseg.engine import open_data

    cfg_eval = copy.deepcopy(cfg)
    cfg_eval.data.augment = False
    task = open_data(cfg.data.path, cfg_eval, splits=("train", "val"))
    return task, task.train


def _ids(ds: Dataset) -> list[str]:
    ids = getattr(ds, "ids", None)
    if ids is None:
        raise TypeError(f"{type(ds).__name__} has no .ids; the search split needs datasets that name their samples")
    return [str(i) for i in ids]


# ------------------------------------------------------------------------------------------- supernet
class SupernetHooks(TrainHooks):
    """Trains the SPOS supernet through :func:`mambaseg.engine.train`.

    The engine's loop does the optimisation, validation, checkpoints, resume and divergence handling; these hooks
    build the supernet instead of a registered model, restrict the training split to the supernet-training ids,
    draw a new uniformly random path before every step and validate on a random path (one per batch, as the
    original), and keep the path sampler's state in ``last.pt`` so a resumed run draws the same paths.

    Args:
        sampler_seed: seed of the path sampler.
        train_ids: ids of the training split the supernet trains on (the rest is the search split).
        model_kwargs: extra :class:`~mambaseg.nas.supernet.SliceMambaSupernet` options.
    """

    #: the supernet is no registered model: a safetensors export would only be one more copy of its ~4x weights
    export_safetensors = False

    def __init__(self, sampler_seed: int, train_ids: list[str], model_kwargs: dict[str, Any]) -> None:
        self.sampler_seed = int(sampler_seed)
        self.train_ids = list(train_ids)
        self.model_kwargs = dict(model_kwargs)
        self.net: SliceMambaSupernet | None = None

    def build_model(self, cfg: RunConfig, num_classes: int, in_chans: int) -> SliceMambaSupernet:
        self.net = SliceMambaSupernet(num_classes=num_classes, in_chans=in_chans, seed=self.sampler_seed,
                                      **self.model_kwargs)
        self.net.mambaseg_spec = {"name": "slicemamba_supernet", "num_classes": num_classes, "in_chans": in_chans,
                                  "kwargs": {**self.model_kwargs, "seed": self.sampler_seed}}
        return self.net

    def prepare_task(self, task: Any) -> Any:
        index = {i: k for k, i in enumerate(_ids(task.train))}
        task.datasets["train"] = Subset(task.train, [index[i] for i in self.train_ids])
        return task

    def before_step(self, model: Any, step: int) -> None:
        model.set_arch(None)  # a fresh uniformly random path at every forward call

    def before_validation(self, model: Any, epoch: int) -> None:
        model.set_arch(None)  # validation on a random path, one per batch

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.net.sampler.state_dict()} if self.net is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.net is not None and state.get("sampler"):
            self.net.sampler.load_state_dict(state["sampler"])

    def checkpoint_dir(self, run_dir: Path) -> Path:
        return run_dir  # OUT/supernet/{last,best}.pt


def _supernet_config(cfg: RunConfig, out_dir: Path, epochs: int, save_every: int) -> RunConfig:
    """The run config of the supernet's engine run (lowest validation loss is best; the search keeps the time)."""
    sn_cfg = copy.deepcopy(cfg)
    sn_cfg.train.out = str(out_dir)
    sn_cfg.train.epochs = int(epochs)
    sn_cfg.train.best_metric, sn_cfg.train.best_mode = "loss", "min"
    sn_cfg.train.checkpoint_every = max(1, int(save_every))
    sn_cfg.train.time_limit_s = None
    return sn_cfg


def train_supernet(
    cfg: RunConfig,
    out_dir: Path,
    hooks: SupernetHooks,
    epochs: int,
    *,
    progress: bool = True,
    log: Any = print,
    save_every: int = 1,
    time_limit_s: float | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """SPOS training of the supernet with the engine's loop, resumable from ``out_dir/last.pt``.

    Args:
        cfg: the run configuration (optimizer, schedule, loss, batch size, device, ...).
        out_dir: run directory of the supernet (``last.pt``, ``best.pt``, ``history.json``, ``train.log``).
        hooks: :class:`SupernetHooks`.
        epochs: training epochs.
        save_every: write ``last.pt`` every N epochs and at the end (a resumed run restarts after the last
            written epoch).
        time_limit_s: stop after the first epoch that ends past this many seconds of this call (0 = after one).

    Returns:
        ``{"epochs", "steps", "best_epoch", "best_val_loss", "history", "stopped_early"}``; ``out_dir/best.pt``
        holds the weights with the lowest validation loss (random path).
    """
    from mambaseg.engine import train

    sn_cfg = _supernet_config(cfg, out_dir, epochs, save_every)
    last = Path(out_dir) / "last.pt"
    resume = last.is_file()
    if resume:
        from mambaseg.checkpoint import load_checkpoint

        log(f"supernet: resuming after epoch {int(load_checkpoint(last)['epoch'])}/{epochs}")
    t_call = time.perf_counter()

    def budget(state: dict[str, Any]) -> bool:
        return time_limit_s is not None and time.perf_counter() - t_call >= time_limit_s

    res = train(sn_cfg, resume=resume, hooks=hooks, callbacks=[budget], console=console,
                show_progress=progress and console is not None)
    stopped = res.metrics["train"]["stop_reason"].startswith("stopped by a callback")
    if stopped:
        log(f"supernet: time budget of {time_limit_s:.0f} s used after epoch {res.epochs}; stopping")
    return {"epochs": res.epochs, "steps": res.steps, "best_epoch": res.best_epoch, "best_val_loss": res.best_value,
            "history": res.history, "stopped_early": stopped}


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


# ---------------------------------------------------------------------------------------------- subnet
def save_subnet(net: SliceMambaSupernet, arch: Any, path: str | Path, *, cfg: RunConfig, model_kwargs: dict[str, Any],
                supernet_ckpt: dict[str, Any], search: dict[str, Any] | None = None) -> Path:
    """Write the network of path ``arch`` as a normal mambaseg checkpoint holding the supernet's current weights.

    The model is built as ``mambaseg train --model slicemamba --arch ...`` builds it
    (:func:`~mambaseg.engine.trainer.build_model_from_config` with ``model.name = "slicemamba"``, ``model.arch`` the
    genes and ``model.kwargs = model_kwargs``), so the checkpoint's model spec is the one a training run records; its
    weights are the chosen candidate of every position (:meth:`SliceMambaSupernet.subnet_state_dict`, loaded
    strictly). The input normalisation, label map, image size, task, epoch and step come from ``supernet_ckpt``
    (the supernet checkpoint the weights were loaded from, without its ``state_dict``). Weights only: no optimizer
    state, no safetensors copy. Written with :func:`mambaseg.checkpoint.save_checkpoint` (atomic).

    Args:
        net: the supernet holding the weights to inherit.
        arch: the path (anything :func:`~mambaseg.models.slicemamba.parse_arch` accepts).
        path: destination ``.pt`` file.
        cfg: the search's run configuration (its model section is replaced).
        model_kwargs: the supernet's model options (``dims``, ``depths``, ...), also the subnet's.
        supernet_ckpt: metadata of the supernet checkpoint (``normalization``, ``label_map``, ``image_size``, ...).
        search: what the checkpoint's ``search`` entry records (architecture, fitness, ...).

    Returns:
        The path written.
    """
    from mambaseg.checkpoint import save_checkpoint
    from mambaseg.engine.trainer import build_model_from_config
    from mambaseg.models.slicemamba import parse_arch

    genes = parse_arch(arch, net.num_positions)
    sub_cfg = copy.deepcopy(cfg)
    sub_cfg.model.name = "slicemamba"
    sub_cfg.model.arch = list(genes)
    sub_cfg.model.kwargs = dict(model_kwargs)
    model = build_model_from_config(sub_cfg, net.num_classes, net.in_chans)
    model.load_state_dict({k: v.detach().cpu() for k, v in net.subnet_state_dict(genes).items()})
    payload = {
        "model": dict(model.mambaseg_spec),
        "state_dict": model.state_dict(),
        "normalization": supernet_ckpt.get("normalization"),
        "label_map": supernet_ckpt.get("label_map"),
        "image_size": supernet_ckpt.get("image_size"),
        "task": supernet_ckpt.get("task"),
        "config": config_to_dict(sub_cfg),
        "epoch": supernet_ckpt.get("epoch"),
        "step": supernet_ckpt.get("step"),
        "metrics": {},
        "search": dict(search or {}),
        "source": "SliceMamba search: the found architecture with the weights inherited from the supernet's best "
                  "checkpoint (one candidate block per position), not retrained",
    }
    return save_checkpoint(path, payload)


def _json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from a file written by :func:`atomic_write_json` (which applies :func:`json_safe`)."""
    return json.loads(json.dumps(json_safe(obj)))


#: run settings a finished search's result depends on: (config section, key; None = the whole section)
_SEARCH_SHAPING = (("data", "image_size"), ("data", "augmentation"), ("train", "batch_size"), ("model", "name"),
                   ("optim", None), ("schedule", None), ("loss", None))


def _finished_search(out: Path, cfg: RunConfig, settings: SearchSettings, evo: EvolutionConfig,
                     seeds: dict[str, int], log: Any) -> dict[str, Any] | None:
    """The stored result of a finished search in ``out`` whose supernet checkpoints were removed, else ``None``.

    Raises:
        ValueError: the settings differ from the finished search's (they would need the removed supernet).
    """
    arch_path = out / "arch.json"
    if not arch_path.is_file() or (out / "supernet" / "last.pt").is_file():
        return None
    prev = json.loads(arch_path.read_text())
    if not (prev.get("supernet") or {}).get("files_removed"):
        return None
    want = {
        "supernet epochs": (prev["supernet"].get("requested_epochs"), int(settings.supernet_epochs)),
        "evolution": (prev.get("evolution"), _json_roundtrip(asdict(evo))),
        "model_kwargs": (prev.get("model_kwargs"), _json_roundtrip(dict(settings.model_kwargs))),
        "seeds": ({k: v for k, v in (prev.get("seeds") or {}).items() if k in seeds}, seeds),
        "search_fraction": ((prev.get("search_split") or {}).get("fraction"), settings.search_fraction),
        "data": ((prev.get("data") or {}).get("path"), str(cfg.data.path)),
    }
    # the run settings that shaped the supernet and its scores, as search_config.json recorded them (written once
    # the supernet's run was accepted)
    saved = out / "search_config.json"
    if saved.is_file():
        before, now = json.loads(saved.read_text()).get("run_config") or {}, _json_roundtrip(config_to_dict(cfg))
        for section, key in _SEARCH_SHAPING:
            old = (before.get(section) or {}) if key is None else (before.get(section) or {}).get(key)
            new = (now.get(section) or {}) if key is None else (now.get(section) or {}).get(key)
            want[section if key is None else f"{section}.{key}"] = (old, new)
    differ = [name for name, (old, new) in want.items() if old != new]
    if differ:
        raise ValueError(
            f"{out} holds a finished search whose supernet checkpoints were removed; this call changes "
            f"{', '.join(differ)}, which needs the supernet: use a new --out folder (--keep-supernet keeps the "
            "supernet of a finished search for such continuations)")
    if not (out / SUBNET_CHECKPOINT).is_file():
        raise ValueError(f"{out} holds a finished search, but its network {out / SUBNET_CHECKPOINT} is missing and "
                         "the supernet checkpoints were removed; run the search again in a new --out folder")
    log(f"search: already finished in {out} (architecture {prev['arch']}, network {out / SUBNET_CHECKPOINT}); "
        "nothing to do")
    return prev


# ---------------------------------------------------------------------------------------------- search
def _check_continuation(out: Path, cfg: RunConfig, settings: SearchSettings, evo: EvolutionConfig) -> None:
    """Refuse, before anything is written, a call that the search state in ``out`` cannot continue with: a supernet
    checkpoint to resume with changed options (the engine's own check, read from ``supernet/config.yaml``, which
    matches ``last.pt`` in every option a resume may not change) or an evolution state with other settings."""
    import yaml

    from mambaseg.engine.preflight import check_resume_config

    sn_dir = out / "supernet"
    if (sn_dir / "last.pt").is_file() and (sn_dir / "config.yaml").is_file():
        given = _supernet_config(cfg, sn_dir, settings.supernet_epochs, settings.save_every)
        check_resume_config(yaml.safe_load((sn_dir / "config.yaml").read_text()), config_to_dict(given),
                            sn_dir / "last.pt")
    state = out / "search_state.json"
    if state.is_file():
        check_state_config(json.loads(state.read_text()).get("config"), evo, str(state))


def _stamp(path: Path) -> tuple[int, int] | None:
    """Identity of a file's current version (written atomically: a new inode each time)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def run_search(cfg: RunConfig, settings: SearchSettings, out: str | Path, *, log: Any = print,
               console: Any = None) -> dict[str, Any]:
    """Full search (see the module docstring); returns the content written to ``OUT/arch.json``.

    Leaves the found network as ``OUT/checkpoints/best.pt`` (a normal, model-sized checkpoint; see
    :func:`save_subnet`) and, once the search has finished, deletes the supernet's ``OUT/supernet/last.pt`` and
    ``best.pt`` unless ``settings.keep_supernet``; a search cut short by a time limit or an interruption keeps them
    so that calling it again resumes. A call refused before its supernet run starts (settings the search in ``out``
    cannot continue with, unknown model options, options the engine refuses) leaves no new file and changes none.

    Args:
        cfg: run configuration (``data.path``, ``data.image_size``, ``train.batch_size``/``seed``/``device``/
            ``amp``, ``optim``, ``schedule``, ``loss``), e.g. the ``slicemamba_polyp`` recipe with overrides.
        settings: search settings.
        out: output folder (an existing one is resumed).
        log: callable receiving one-line progress messages.
        console: optional rich console for the supernet's per-epoch lines and progress bars.
    """
    out = Path(out)
    seed = int(cfg.train.seed)
    search_seed = seed if settings.search_seed is None else int(settings.search_seed)
    sampler_seed = seed if settings.sampler_seed is None else int(settings.sampler_seed)
    evo = settings.evolution.resolved()
    seeds = {"train": seed, "search_split": search_seed, "path_sampler": sampler_seed, "evolution": evo.seed}
    done = _finished_search(out, cfg, settings, evo, seeds, log)
    if done is not None:
        return done
    # what can refuse this call is checked before anything is written: a refused call leaves no file behind
    if settings.model_kwargs:  # the found network is a slicemamba with these (none: nothing to refuse)
        check_model_kwargs("slicemamba", settings.model_kwargs)
    _check_continuation(out, cfg, settings, evo)
    task, train_plain = _open_search_data(cfg)
    val_ds = task.val
    ids = _ids(train_plain)
    split = _load_or_make_split(out / "search_split.json", ids, settings.search_fraction, search_seed)
    index = {i: k for k, i in enumerate(ids)}
    search_sub = Subset(train_plain, [index[i] for i in split["search"]])

    hooks = SupernetHooks(sampler_seed, split["train"], settings.model_kwargs)
    sn_dir = out / "supernet"
    log(f"data: {len(split['train'])} supernet-training images, {len(search_sub)} search images, "
        f"{len(val_ds)} validation images ({task.name})")
    # the engine's own checks (loss, labels, ...) come at the start of the supernet's run; the search's files are
    # written once it has accepted the run (it then writes supernet/config.yaml), so a refused call writes nothing
    accepted = sn_dir / "config.yaml"
    before, new_out = _stamp(accepted), not out.exists()
    try:
        sn = train_supernet(cfg, sn_dir, hooks, int(settings.supernet_epochs), progress=settings.progress, log=log,
                            save_every=settings.save_every, time_limit_s=settings.supernet_time_limit_s,
                            console=console)
    finally:
        if _stamp(accepted) != before:
            atomic_write_json(out / "search_config.json", {"run_config": config_to_dict(cfg),
                                                            "settings": {**asdict(settings), "evolution": asdict(evo)}})
            if not (out / "search_split.json").is_file():
                atomic_write_json(out / "search_split.json", split)
        elif new_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # made for the supernet's run lock (its parent folder), which the engine then refused
    if not (sn_dir / "best.pt").is_file():
        raise RuntimeError(f"{sn_dir / 'best.pt'} was not written: the supernet never reached a finite validation "
                           "loss; check the data and lower the learning rate")
    from mambaseg.checkpoint import load_checkpoint

    device = resolve_device(cfg.train.device)
    amp_dtype, _ = resolve_amp(cfg.train.amp, device)
    # the supernet the engine trained takes the best weights in place of its own (assign: no second supernet and
    # no copy of the loaded tensors stays in memory)
    net, hooks.net = hooks.net, None
    if net is None:
        net = SliceMambaSupernet(num_classes=task.num_classes, in_chans=task.in_chans, seed=sampler_seed,
                                 **settings.model_kwargs)
    net.zero_grad(set_to_none=True)
    sn_best = load_checkpoint(sn_dir / "best.pt", map_location=device)
    net.load_state_dict(sn_best.pop("state_dict"), assign=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
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
    finished = not sn["stopped_early"] and bool(search.done)
    remove = finished and not settings.keep_supernet
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
        "finished": finished,
        "model": "slicemamba",
        "model_kwargs": dict(settings.model_kwargs),
        "search_split": {"file": "search_split.json", "seed": search_seed, "fraction": settings.search_fraction,
                         "n_search": len(split["search"]), "n_supernet_train": len(split["train"]),
                         "search_ids": split["search"]},
        "seeds": seeds,
        "evolution": asdict(evo),
        "supernet": {"epochs": sn["epochs"], "requested_epochs": int(settings.supernet_epochs), "steps": sn["steps"],
                     "best_epoch": sn["best_epoch"], "best_val_loss": sn["best_val_loss"],
                     "stopped_early": sn["stopped_early"],
                     "checkpoint": None if remove else "supernet/best.pt",
                     "resume_checkpoint": None if remove else "supernet/last.pt",
                     "files_removed": remove},
        "checkpoint": SUBNET_CHECKPOINT,
        "data": {"path": str(cfg.data.path), "image_size": list(cfg.data.image_size), "layout": task.name,
                 "n_val": len(val_ds)},
        "log": "search_log.jsonl",
    }
    # the found network first, then arch.json naming it, then (finished search only) the supernet's checkpoints go
    save_subnet(net, res.best, out / SUBNET_CHECKPOINT, cfg=cfg, model_kwargs=settings.model_kwargs,
                supernet_ckpt=sn_best, search={k: result[k] for k in ("arch", "slices", "fitness", "fitness_definition",
                                                                      "num_evaluated", "generations")})
    atomic_write_json(out / "arch.json", result)
    if remove:
        for rel in SUPERNET_CHECKPOINTS:
            (out / rel).unlink(missing_ok=True)
        log(f"search: finished; removed the supernet checkpoints ({', '.join(SUPERNET_CHECKPOINTS)}; "
            "--keep-supernet keeps them)")
    else:
        why = "--keep-supernet" if finished else "the search stopped early (time limit): calling it again resumes"
        log(f"search: kept the supernet checkpoints ({', '.join(SUPERNET_CHECKPOINTS)}): {why}")
    log(f"search: the found network is {out / SUBNET_CHECKPOINT} (weights inherited from the supernet)")
    return result
