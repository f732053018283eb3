"""Evaluators: run a model over a dataset and turn its predictions into named metrics.

An evaluator owns the whole evaluation loop for one kind of task, so tasks whose validation is not "one 2-D
image at a time" (e.g. slice-wise prediction of 3-D volumes with per-volume Dice/HD95) plug in by providing
their own class. The trainer and ``mambaseg evaluate`` only rely on the :class:`Evaluator` interface:

* ``evaluate(model, dataset, ctx=EvalContext(...)) -> dict``: a nested dict of metrics. Under DDP every process
  calls it on the same dataset; the evaluator shards the work and returns the SAME result on every process.
* the result holds a scalar for every name a recipe may select the best checkpoint by (``train.best_metric``,
  a key or dotted path such as ``"dice"`` or ``"pooled.iou"``), and ``"loss"`` when a loss function is given.

:class:`SegmentationEvaluator2D` is the evaluator of 2-D datasets (binary or multi-class): per-image confusion
statistics (:func:`mambaseg.metrics.confusion_stats`) are gathered from all processes, ordered by sample id and
reduced twice, ``pooled`` (one confusion matrix over the whole split, the papers' convention) and ``per_case``
(mean of per-image values); see :mod:`mambaseg.metrics` for the definitions and the empty-case policy.
"""

from __future__ import annotations

import abc
import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from mambaseg.utils.distributed import DistContext, all_gather_objects

__all__ = ["EvalContext", "Evaluator", "SegmentationEvaluator2D", "lookup_metric", "flatten_metrics", "autocast_for"]


def autocast_for(device: torch.device, amp_dtype: torch.dtype | None):
    """``torch.autocast`` for ``device`` when ``amp_dtype`` is set, else a null context."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@dataclass
class EvalContext:
    """How to run an evaluation.

    Attributes:
        device: device the model lives on.
        dist: distributed context (single process by default).
        amp_dtype: autocast dtype (``None`` = full precision).
        batch_size: per-process batch size.
        num_workers: DataLoader workers.
        loss_fn: optional loss ``(logits, target) -> scalar``; its per-sample mean is reported as ``"loss"``.
        progress: optional callable ``(done, total)`` called after each batch (on every process).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dist: DistContext = field(default_factory=DistContext)
    amp_dtype: torch.dtype | None = None
    batch_size: int = 8
    num_workers: int = 0
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    progress: Callable[[int, int], None] | None = None


class Evaluator(abc.ABC):
    """Abstract interface of task evaluators (subclasses implement :meth:`evaluate`)."""

    #: short name recorded in metrics files
    name: str = "evaluator"

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: EvalContext) -> dict[str, Any]:
        """Evaluate ``model`` on ``dataset``; same result on every process. Must not change ``model``'s mode."""

    def headline(self, result: dict[str, Any]) -> dict[str, float]:
        """A few scalars to show in progress lines and summary tables (default: flattened top-level scalars)."""
        return {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def summary_table(self, summary: dict[str, Any], run_dir: Any) -> Any:
        """Rich table of a result (plus ``best_epoch`` and the ``train`` record) printed at the end of a run and by
        ``evaluate`` (default: the :meth:`headline` scalars)."""
        from rich.table import Table

        table = Table(title=f"validation metrics of the best checkpoint (epoch {summary.get('best_epoch')})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in self.headline(summary).items():
            table.add_row(k, f"{v:.4f}")
        table.caption = str(run_dir)
        return table


def lookup_metric(result: dict[str, Any], name: str) -> float:
    """Value of a metric by key or dotted path (``"dice"``, ``"pooled.iou"``).

    Raises:
        KeyError: the path does not exist; the message lists the available names.
    """
    node: Any = result
    for part in name.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            avail = ", ".join(sorted(flatten_metrics(result)))
            raise KeyError(f"metric {name!r} is not produced by this evaluator; available: {avail}")
    if not isinstance(node, (int, float)) or isinstance(node, bool):
        raise KeyError(f"metric {name!r} is not a scalar (got {type(node).__name__})")
    return float(node)


def flatten_metrics(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested scalar metrics to ``{"pooled.dsc": ..., ...}`` (non-scalars are skipped)."""
    out: dict[str, float] = {}
    for k, v in result.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_metrics(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def _collate_eval(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": torch.stack([torch.as_tensor(b["mask"]) for b in batch]),
        "id": [str(b["id"]) for b in batch],
    }


def _shard(n: int, ctx: DistContext) -> list[int]:
    # contiguous-free strided split without padding: every sample is evaluated exactly once
    return list(range(ctx.rank, n, ctx.world_size))


def _round(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if isinstance(v, list):
        return [_round(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class SegmentationEvaluator2D(Evaluator):
    """Pixel metrics of a 2-D segmentation model, pooled and per case.

    Args:
        num_classes: the model's output channels (1 = binary with a sigmoid; >1 = softmax/argmax).
        threshold: probability threshold of the binary case (applied as ``logit > logit(threshold)``).
        class_names: optional names of the classes (index order), used in the per-class entries.

    The result dict holds ``"pooled"`` and ``"per_case"`` (each the output of
    :func:`mambaseg.metrics.reduce_stats`; top-level values = foreground, or mean over foreground classes),
    ``"dice"``/``"iou"`` (pooled foreground DSC/IoU, the papers' headline numbers), ``"per_case_dice"``, ``"n_images"`` and ``"loss"`` when a loss function is given.
    """

    name = "segmentation2d"

    def __init__(self, num_classes: int, *, threshold: float = 0.5, class_names: list[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.num_classes = num_classes
        self.threshold = threshold
        self.class_names = class_names

    def predict_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Class indices (B, H, W) int64 from logits (B, C, H, W)."""
        if logits.shape[1] == 1:
            return (logits[:, 0] > math.log(self.threshold / (1.0 - self.threshold))).long()
        return logits.argmax(dim=1)

    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: EvalContext) -> dict[str, Any]:
        from mambaseg.metrics import confusion_stats

        indices = _shard(len(dataset), ctx.dist)  # type: ignore[arg-type]
        loader = DataLoader(
            Subset(dataset, indices),
            batch_size=ctx.batch_size,
            shuffle=False,
            num_workers=ctx.num_workers,
            collate_fn=_collate_eval,
            pin_memory=ctx.device.type == "cuda",
        )
        was_training = model.training
        model.eval()
        ids: list[str] = []
        stats: list[torch.Tensor] = []
        loss_sum = 0.0
        done = 0
        try:
            with torch.inference_mode():
                for batch in loader:
                    x = batch["image"].to(ctx.device, non_blocking=True)
                    y = batch["mask"].to(ctx.device, non_blocking=True).long()
                    with autocast_for(ctx.device, ctx.amp_dtype):
                        logits = model(x)
                    logits = logits.float()
                    if ctx.loss_fn is not None:
                        loss_sum += float(ctx.loss_fn(logits, y)) * x.shape[0]
                    pred = self.predict_labels(logits)
                    stats.append(confusion_stats(pred, y, self.num_classes).cpu())
                    ids.extend(batch["id"])
                    done += x.shape[0]
                    if ctx.progress is not None:
                        ctx.progress(done, len(indices))
        finally:
            model.train(was_training)
        local = torch.cat(stats) if stats else torch.zeros(0, self.num_classes, 4, dtype=torch.long)
        gathered = all_gather_objects((ids, local, loss_sum), ctx.dist)
        all_ids = [i for g in gathered for i in g[0]]
        all_stats = torch.cat([g[1] for g in gathered])
        total_loss = sum(g[2] for g in gathered)
        order = sorted(range(len(all_ids)), key=lambda i: (all_ids[i], i))
        all_stats = all_stats[order]
        return self.summarize(all_stats, loss=total_loss / max(len(all_ids), 1) if ctx.loss_fn else None)

    def summarize(self, stats: torch.Tensor, *, loss: float | None = None) -> dict[str, Any]:
        """Metrics dict from per-image statistics (N, C, 4)."""
        from mambaseg.metrics import reduce_stats

        if stats.shape[0] == 0:
            raise ValueError("cannot evaluate on an empty dataset (0 images)")
        names = self.class_names
        if names is not None and len(names) != stats.shape[1]:
            names = names[-stats.shape[1]:]  # binary: statistics hold the foreground class only
        pooled = _round(reduce_stats(stats, reduction="pooled", class_names=names))
        per_case = _round(reduce_stats(stats, reduction="per_case", class_names=names))
        out: dict[str, Any] = {
            "dice": float(pooled["dsc"]),
            "iou": float(pooled["iou"]),
            "per_case_dice": float(per_case["dsc"]),
            "n_images": int(stats.shape[0]),
            "pooled": pooled,
            "per_case": per_case,
        }
        if loss is not None:
            out["loss"] = float(loss)
        return out

    def headline(self, result: dict[str, Any]) -> dict[str, float]:
        keys = ("loss", "dice", "iou", "per_case_dice")
        return {k: float(result[k]) for k in keys if isinstance(result.get(k), (int, float))}

    def summary_table(self, summary: dict[str, Any], run_dir: Any) -> Any:
        """Pooled and per-case DSC / IoU / accuracy / sensitivity / specificity, caption with the run's speed."""
        from rich.table import Table

        table = Table(title=f"validation metrics of the best checkpoint (epoch {summary.get('best_epoch')})")
        table.add_column("reduction")
        cols = ["dsc", "iou", "acc", "sen", "spe"]
        for c in cols:
            table.add_column(c, justify="right")
        for red in ("pooled", "per_case"):
            block = summary.get(red)
            if not isinstance(block, dict):
                continue
            row = []
            for c in cols:
                v = block.get(c)
                row.append(f"{float(v):.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-")
            table.add_row(red, *row)
        tr = summary.get("train") or {}
        if tr:
            table.caption = (f"{tr.get('epochs')} epochs, {tr.get('steps')} steps, {tr.get('seconds')} s, "
                             f"{tr.get('images_per_second')} img/s — {run_dir}")
        else:
            table.caption = f"{summary.get('n_images')} images — {run_dir}"
        return table
