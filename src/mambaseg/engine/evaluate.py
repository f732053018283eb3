"""Opening a dataset with its evaluator, and evaluating a checkpoint on a split.

:func:`open_data` is :func:`mambaseg.data.layouts.open_task` plus the evaluator of the task's protocol
(:func:`mambaseg.engine.evaluator.evaluator_for`); the trainer, ``mambaseg evaluate`` and the search all open
their data through it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from mambaseg.checkpoint import build_model, load_checkpoint
from mambaseg.configs import RunConfig, config_from_dict
from mambaseg.data.layouts import open_task
from mambaseg.data.task import DataTask, image_size_of
from mambaseg.engine.evaluator import EvalContext, evaluator_for
from mambaseg.runtime import resolve_amp, resolve_device, scan_backend
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
    show_progress: bool = True,
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
        show_progress: show the progress on ``console``.

    Returns:
        The evaluator's metrics dict (plus ``checkpoint``, ``split`` and ``data``).
    """
    from mambaseg.data import Normalization

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
        from mambaseg.losses import create_loss, resolve_loss_name

        loss_fn = create_loss(resolve_loss_name(cfg.loss.name, task.num_classes), **(cfg.loss.kwargs or {}))
    except (ValueError, KeyError, TypeError, ImportError) as exc:
        # e.g. a loss registered by a plugin that is not importable here: metrics are still exact, say so loudly
        warnings.warn(f"evaluating without a loss value: loss {cfg.loss.name!r} cannot be built here ({exc})",
                      RuntimeWarning, stacklevel=2)
        loss_fn = None
    ectx = EvalContext(device=dev, amp_dtype=amp_dtype, batch_size=batch_size or cfg.train.val_batch_size,
                       num_workers=cfg.data.num_workers, loss_fn=loss_fn)
    ds = task.datasets[split]
    unit = "volumes" if getattr(task.evaluator, "name", "") == "volume_slicewise" else "images"
    with scan_backend(backend), ProgressReporter(console, f"evaluating {split} ({unit})",
                                                 enabled=show_progress) as bar:
        ectx.progress = bar
        metrics = task.evaluator.evaluate(model, ds, ectx)
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
