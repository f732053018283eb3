"""Opening a dataset with its evaluator, and evaluating a checkpoint on a split.

:func:`open_data` is :func:`mambaseg.data.layouts.open_task` plus the evaluator of the task's protocol
(:func:`mambaseg.engine.evaluator.evaluator_for`); the trainer, ``mambaseg evaluate`` and the search all open
their data through it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from mambaseg.checkpoint import CheckpointError, build_model, load_checkpoint
from mambaseg.configs import RunConfig, config_from_dict
from mambaseg.data.layouts import layout_of, open_task
from mambaseg.data.task import DataTask, image_size_of
from mambaseg.engine.evaluator import EvalContext, evaluator_for
from mambaseg.runtime import resolve_amp, resolve_device, resolve_workers, scan_backend
from mambaseg.utils.files import atomic_write_json
from mambaseg.utils.progress import ProgressReporter

__all__ = ["evaluate_checkpoint", "open_data"]


def open_data(path: str | Path | None, cfg: RunConfig, **options: Any) -> DataTask:
    """Open a dataset with :func:`mambaseg.data.layouts.open_task` (same arguments: ``splits``,
    ``normalization``, ``layout``) and attach the evaluator of its protocol (unless the layout brought its own)."""
    task = open_task(path, cfg, **options)
    if task.evaluator is None:
        task.evaluator = evaluator_for(task, image_size_of(cfg))
    return task


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path | None = None,
    *,
    split: str = "val",
    out: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    console: Any = None,
    backend: str | None = None,
    tta: str | None = None,
    show_progress: bool = True,
    postprocess: Any = None,
    fold_checkpoint: str = "last",
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of a dataset with the same preprocessing as training.

    Args:
        checkpoint: ``best.pt``/``last.pt``/``best.safetensors`` written by :func:`mambaseg.engine.train`.
        data: dataset path (default: the one recorded in the checkpoint's config).
        split: ``val``, ``test`` or ``train``.
        out: folder for ``metrics.json`` (optional).
        device: ``auto``/``cpu``/``cuda``/...
        batch_size: evaluation batch size (default: the run's ``train.val_batch_size``).
        console: optional rich console for the progress (a bar on a terminal, a plain line every 30 s
            otherwise) and a summary table.
        backend: selective-scan backend to run with (``None``: the usual resolution).
        tta: ``"flip"`` averages the probabilities of the mirrored inputs
            (:class:`mambaseg.inference.ProbabilityEnsemble`); ``checkpoint`` may also be a list of checkpoints
            and cross-validation roots, whose probabilities are averaged (the first one's config gives the data).
        show_progress: show the progress on ``console``.
        postprocess: post-processing of each predicted mask (whole volume for volumetric data) before the metrics:
            ``"largest_component"``, ``"fill_holes"`` or both (:mod:`mambaseg.inference.postprocess`).
        fold_checkpoint: the checkpoint of each fold a cross-validation root stands for: ``last`` or ``best``
            (:data:`mambaseg.inference.ensemble.FOLD_CHECKPOINTS`).

    Returns:
        The evaluator's metrics dict (plus ``checkpoint``, ``split`` and ``data``).
    """
    from mambaseg.data import Normalization
    from mambaseg.inference.ensemble import ensemble_of_checkpoints, tta_mode
    from mambaseg.inference.postprocess import parse_postprocess

    steps = parse_postprocess(postprocess)
    members = _ensemble_members(checkpoint, tta, fold_checkpoint)
    named = ", ".join(str(c) for c in (checkpoint if isinstance(checkpoint, (list, tuple)) else [checkpoint]))
    mode = tta_mode(tta)
    ensembled = len(members) > 1 or mode != "none"
    checkpoint = members[0] if len(members) == 1 else members
    ckpt = load_checkpoint(members[0], map_location="cpu")
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
    if data is not None:  # another copy or form of the cases (e.g. the folder a cache was built from)
        layout = layout_of(data, layout)
    try:
        model = build_model(ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"{checkpoint}: {e}") from e
    if ensembled:  # the data is opened at the ensemble's input size (the members' largest)
        model, size = ensemble_of_checkpoints(members, model, tta=tta)
        cfg.data.image_size = list(size)
    model = model.to(dev)
    task = open_data(cfg.data.path, cfg, splits=(split,), normalization=norm, layout=layout)
    amp_dtype, _ = resolve_amp(cfg.train.amp, dev)
    loss_fn = None
    try:
        from mambaseg.losses import create_loss, resolve_loss_name

        loss_fn = create_loss(resolve_loss_name(cfg.loss.name, task.num_classes), **(cfg.loss.kwargs or {}))
    except (ValueError, KeyError, TypeError, ImportError) as exc:
        # e.g. a loss registered by a plugin that is not importable here: metrics are still exact, say so loudly
        warnings.warn(f"evaluating without a loss value: loss {cfg.loss.name!r} cannot be built here ({exc})",
                      RuntimeWarning, stacklevel=2)
        loss_fn = None
    ectx = EvalContext(device=dev, amp_dtype=amp_dtype, batch_size=batch_size or cfg.train.val_batch_size,
                       num_workers=resolve_workers(cfg.data.num_workers, dev), loss_fn=loss_fn, postprocess=steps)
    ds = task.datasets[split]
    if task.evaluation == "volume_slicewise":
        _check_channels(ckpt, members[0], task, ds, split, cfg.data.path)
    seen = _seen_in_training(members, split, getattr(ds, "ids", None), first_config=ckpt.get("config"))
    if seen["cases"]:
        warnings.warn(f"{seen['cases']} of the {seen['of']} {split} case(s) were training cases of "
                      f"{seen['checkpoints']} of the {len(members)} checkpoint(s) evaluated (by case id): these "
                      f"metrics are in-sample, not held-out", RuntimeWarning, stacklevel=2)
    unit = "volumes" if getattr(task.evaluator, "name", "") == "volume_slicewise" else "images"
    with scan_backend(backend), ProgressReporter(console, f"evaluating {split} ({unit})",
                                                 enabled=show_progress) as bar:
        ectx.progress = bar
        metrics = task.evaluator.evaluate(model, ds, ectx)
    if ensembled:
        metrics = {**metrics, "ensemble": len(members), "tta": tta or "none",
                   "image_size": list(cfg.data.image_size)}
    if steps:
        metrics = {**metrics, "postprocess": list(steps)}
    metrics = {**metrics, "seen_in_training": seen}
    result = {**metrics, "checkpoint": str(checkpoint) if len(members) == 1 else [str(m) for m in members],
              "split": split, "data": str(cfg.data.path),
              "epoch": ckpt.get("epoch"), "model": (ckpt.get("model") or {}).get("name")}
    if cfg.data.split_file and split in ("train", "val"):
        # e.g. a cross-validation fold: its train/val are the ids of its split file (val = its held-out cases),
        # taken from the dataset's train + val pool, not the dataset's own train/val folders
        result["split_file"] = str(cfg.data.split_file)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / "metrics.json", result)
    if console is not None:
        table = task.evaluator.summary_table({**result, "best_epoch": ckpt.get("epoch"), "train": {}},
                                             members[0] if len(members) == 1 else named)
        table.title = _table_title(split, members, mode, ckpt.get("epoch"))
        console.print(table)
        if "split_file" in result:
            console.print(f"{split} = the {split} ids of {result['split_file']} (the checkpoint's split file, e.g. a "
                          f"cross-validation fold's held-out cases), not the dataset's own {split} folder",
                          highlight=False)
    return result


def _channel_words(names: Any, count: int) -> str:
    """``"2 channels: CT, T2"`` or ``"1 channel, no channel names recorded"``."""
    n = f"{count} channel{'s' if count != 1 else ''}"
    return f"{n}: {', '.join(map(str, names))}" if names else f"{n}, no channel names recorded"


def _check_channels(ckpt: dict[str, Any], checkpoint: Path, task: DataTask, ds: Any, split: str,
                    data: Any) -> None:
    """Refuse a volumetric dataset whose channel count the checkpoint's model does not take, naming both sides'
    channels and the first case of the split with its file (a one-channel dataset is repeated for a three-channel
    model, as :func:`mambaseg.inference.volume.predict_volume` does)."""
    tinfo = ckpt.get("task") or {}
    takes = int((ckpt.get("model") or {}).get("in_chans") or tinfo.get("in_chans") or 0)
    has = int(task.in_chans)
    if not takes or has == takes or (has == 1 and takes == 3):
        return
    trained_on = ((ckpt.get("config") or {}).get("data") or {}).get("path")
    ids, paths = list(getattr(ds, "ids", None) or []), list(getattr(ds, "paths", None) or [])
    case = ""
    if ids:
        case = f"; e.g. {split} case {ids[0]!r}" + (f" ({paths[0]})" if paths and paths[0] else "")
    raise ValueError(
        f"{checkpoint} takes {_channel_words(tinfo.get('channel_names'), takes)}"
        + (f" (trained on {trained_on})" if trained_on else "")
        + f", but the {task.name} dataset {data} has {_channel_words(task.info.get('channel_names'), has)}{case}: "
        "evaluate the checkpoint on volumes with its channels, in its order (a single-channel volume is repeated "
        "only for 3-channel models)")


def _table_title(split: str, members: list[Path], mode: str, epoch: Any) -> str:
    """What was evaluated, in words: one checkpoint with its epoch, or an ensemble by its size; the TTA ``mode``."""
    what = (f"{members[0]} (epoch {epoch})" if len(members) == 1
            else f"an ensemble of {len(members)} checkpoints (probabilities averaged)")
    return f"{split} metrics of {what}" + ("" if mode == "none" else f", {mode} TTA")


def _seen_in_training(members: list[Path], split: str, ids: Any, first_config: Any = None) -> dict[str, Any]:
    """How many cases of the evaluated ``split`` (its ``ids``) some checkpoint of ``members`` trained on.

    A checkpoint's training cases are the ``train`` ids of its run's split file (a cross-validation fold's
    ``split.json``, or the ``data.split_file`` of its config) when it has one; otherwise it trained on the whole
    splits named in its ``data.train_splits``. A fold ensemble evaluated on the dataset's ``val`` split (each fold's
    config opens its own held-out cases as ``val``) is the usual way to get ``cases > 0``. ``first_config``: the
    config of ``members[0]``, whose checkpoint the caller has read already.
    """
    ids = [str(i) for i in ids] if ids is not None else []
    seen: set[str] = set()
    checkpoints = 0
    for m in members:
        trained = _split_train_ids(Path(m).parent.parent / "split.json")  # a fold: no checkpoint to read
        data: dict[str, Any] = {}
        if trained is None:
            config = first_config if m == members[0] and first_config is not None else \
                load_checkpoint(m, map_location="cpu").get("config")  # the first one is loaded already
            data = (config or {}).get("data") or {}
            if data.get("split_file"):
                trained = _split_train_ids(Path(str(data["split_file"])))
        if trained is not None:
            hit = {i for i in ids if i in trained}
        else:
            hit = set(ids) if split in (data.get("train_splits") or ["train"]) else set()
        seen |= hit
        checkpoints += bool(hit)
    return {"cases": len(seen), "of": len(ids), "checkpoints": checkpoints,
            "rule": "a case counts when some checkpoint's training cases (its split file's train ids, else its "
                    "data.train_splits) include its id"}


def _split_train_ids(path: Path) -> set[str] | None:
    """The ``train`` ids of a split file, or ``None`` when there is none (or it cannot be read as one)."""
    from mambaseg.data.files import DatasetError
    from mambaseg.data.splits import read_split_ids

    try:
        return set(read_split_ids(path)["train"])
    except DatasetError:
        return None


def _ensemble_members(checkpoint: Any, tta: str | None, fold_checkpoint: str = "last") -> list[Path]:
    """Checkpoint files of ``checkpoint`` (a file, a list, or cross-validation roots); validates ``tta``."""
    from mambaseg.inference.ensemble import expand_checkpoints, flip_dims

    flip_dims(tta)
    items = list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint]
    return expand_checkpoints(items, which=fold_checkpoint)
