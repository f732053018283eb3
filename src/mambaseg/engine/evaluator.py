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

:class:`SlicewiseVolumeEvaluator` is the evaluator of volumetric tasks: each validation volume is predicted slice by
slice (:func:`mambaseg.inference.volume.predict_volume`: cubic zoom to the network size, logits to labels, nearest
zoom back), then per-class Dice and HD95 are computed on the 3-D volume (:mod:`mambaseg.metrics.volume`) under
the named empty-mask policies. :func:`evaluator_for` picks the evaluator of a task's protocol.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import numpy as np
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from mambaseg.runtime import autocast_for
from mambaseg.utils.distributed import DistContext, all_gather_objects
from mambaseg.utils.modules import weight_dtype

__all__ = [
    "EvalContext",
    "Evaluator",
    "SegmentationEvaluator2D",
    "SlicewiseVolumeEvaluator",
    "evaluator_for",
    "flatten_metrics",
    "lookup_metric",
    "volume_summary_table",
]


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
        keep_inputs: keep the (deterministic) evaluation inputs on the device after the first evaluation and
            reuse them (the trainer validates the same split every epoch); only when they fit in
            ``keep_inputs_bytes``.
        keep_inputs_bytes: memory budget of the kept inputs.
        postprocess: post-processing steps applied to each predicted 2-D mask / whole volume before the statistics
            (:mod:`mambaseg.inference.postprocess`); empty during training.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dist: DistContext = field(default_factory=DistContext)
    amp_dtype: torch.dtype | None = None
    batch_size: int = 8
    num_workers: int = 0
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    progress: Callable[[int, int], None] | None = None
    keep_inputs: bool = False
    keep_inputs_bytes: int = 1 << 30
    postprocess: tuple[str, ...] = ()


class Evaluator(abc.ABC):
    """Abstract interface of task evaluators (subclasses implement :meth:`evaluate`)."""

    #: short name recorded in metrics files
    name: str = "evaluator"

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: EvalContext) -> dict[str, Any]:
        """Evaluate ``model`` on ``dataset``; same result on every process. Must not change ``model``'s mode."""

    def dry_result(self) -> dict[str, Any] | None:
        """A result of the same shape as :meth:`evaluate`'s, computed from placeholder statistics without a model
        (``None`` when unknown): the trainer checks ``train.best_metric`` against it before the first step."""
        return None

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
    if node is None:  # an undefined value (NaN is stored as None, e.g. sensitivity without ground truth)
        return float("nan")
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
        elif v is None and prefix:  # an undefined metric value (NaN stored as None)
            out[key] = float("nan")
    return out


def _collate_eval(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": torch.stack([torch.as_tensor(b["mask"]) for b in batch]),
        "id": [str(b["id"]) for b in batch],
    }


def _per_image_rows(stats: torch.Tensor, ids: list[str]) -> list[dict[str, Any]]:
    """One row per image: its id and foreground-mean metrics (the foreground channel itself when binary; ``None``
    where undefined)."""
    from mambaseg.metrics.confusion import scores_from_stats

    scores = scores_from_stats(stats)  # each (N, C)
    fg = slice(0, 1) if stats.shape[1] == 1 else slice(1, None)
    means = {k: torch.nanmean(v[:, fg], dim=1).tolist() for k, v in scores.items()}
    keys = [k for k in ("acc", "sen", "spe", "dsc", "iou") if k in means]
    # an undefined value (e.g. sensitivity of an image without ground-truth pixels) is None, as in pooled/per_case
    return [{"id": str(i), **{k: _round(round(float(means[k][n]), 6)) for k in keys}} for n, i in enumerate(ids)]


def _shard(n: int, ctx: DistContext) -> list[int]:
    # contiguous-free strided split without padding: every sample is evaluated exactly once
    return list(range(ctx.rank, n, ctx.world_size))


def _postprocessed(labels: torch.Tensor, steps: tuple[str, ...]) -> torch.Tensor:
    """(B, H, W) labels post-processed image by image, back on their device."""
    from mambaseg.inference.postprocess import postprocess_labels

    host = labels.cpu().numpy()
    return torch.from_numpy(np.stack([postprocess_labels(m, steps) for m in host])).to(labels.device)


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
    ``"dice"``/``"iou"`` (pooled foreground DSC/IoU, the papers' headline numbers), ``"per_case_dice"``,
    ``"n_images"`` and ``"loss"`` when a loss function is given.
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
        self._kept: tuple[Any, list] | None = None

    def predict_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Class indices (B, H, W) int64 from logits (B, C, H, W) (:func:`mambaseg.metrics.labels_from_logits`)."""
        from mambaseg.metrics import labels_from_logits

        return labels_from_logits(logits, self.threshold)

    def _batches(self, dataset: Dataset, indices: list[int], ctx: EvalContext) -> Any:
        """``(x, y, ids)`` batches on ``ctx.device``; with ``ctx.keep_inputs`` read once and kept."""
        key = (id(dataset), len(indices), str(ctx.device), ctx.batch_size)
        if ctx.keep_inputs and self._kept is not None and self._kept[0] == key:
            return self._kept[1]
        loader = DataLoader(Subset(dataset, indices), batch_size=ctx.batch_size, shuffle=False,
                            num_workers=ctx.num_workers, collate_fn=_collate_eval,
                            pin_memory=ctx.device.type == "cuda")
        gen = ((b["image"].to(ctx.device, non_blocking=True), b["mask"].to(ctx.device, non_blocking=True).long(),
                b["id"]) for b in loader)
        if not ctx.keep_inputs:
            return gen
        kept, size = [], 0
        for x, y, ids in gen:
            size += x.numel() * x.element_size() + y.numel() * y.element_size()
            kept.append((x, y, ids))
        self._kept = (key, kept) if size <= ctx.keep_inputs_bytes else None
        return kept

    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: EvalContext) -> dict[str, Any]:
        from mambaseg.metrics import confusion_stats

        indices = _shard(len(dataset), ctx.dist)  # type: ignore[arg-type]
        was_training = model.training
        model.eval()
        dtype = weight_dtype(model)
        ids: list[str] = []
        stats: list[torch.Tensor] = []
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        done = 0
        try:
            with torch.inference_mode():
                # no host synchronisation inside the loop: statistics and loss stay on the device until the end
                for x, y, batch_ids in self._batches(dataset, indices, ctx):
                    with autocast_for(ctx.device, ctx.amp_dtype):
                        logits = model(x.to(dtype))  # the weights' dtype: a .bfloat16() model is evaluated too
                    logits = logits.float()
                    if ctx.loss_fn is not None:
                        loss_sum += ctx.loss_fn(logits, y).detach().double() * x.shape[0]
                    labels = self.predict_labels(logits)
                    if ctx.postprocess:  # per image on the host (connected components)
                        labels = _postprocessed(labels, ctx.postprocess)
                    stats.append(confusion_stats(labels, y, self.num_classes, check=False))
                    ids.extend(batch_ids)
                    done += x.shape[0]
                    if ctx.progress is not None:
                        ctx.progress(done, len(indices))
        finally:
            model.train(was_training)
        local = torch.cat(stats).cpu() if stats else torch.zeros(0, self.num_classes, 4, dtype=torch.long)
        gathered = all_gather_objects((ids, local, float(loss_sum)), ctx.dist)
        all_ids = [i for g in gathered for i in g[0]]
        all_stats = torch.cat([g[1] for g in gathered])
        total_loss = sum(g[2] for g in gathered)
        order = sorted(range(len(all_ids)), key=lambda i: (all_ids[i], i))
        all_stats = all_stats[order]
        return self.summarize(all_stats, loss=total_loss / max(len(all_ids), 1) if ctx.loss_fn else None,
                              ids=[all_ids[i] for i in order])

    def dry_result(self) -> dict[str, Any] | None:
        return self.summarize(torch.zeros(1, self.num_classes, 4, dtype=torch.long), loss=0.0)

    def summarize(self, stats: torch.Tensor, *, loss: float | None = None,
                  ids: list[str] | None = None) -> dict[str, Any]:
        """Metrics dict from per-image statistics (N, C, 4); with ``ids``, also one row per image
        (``per_image``: id and the image's foreground-mean acc, sen, spe, dsc, iou at the evaluation size)."""
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
        if ids is not None:
            out["per_image"] = _per_image_rows(stats, ids)
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


class SlicewiseVolumeEvaluator(Evaluator):
    """Per-volume, per-class Dice / HD95 of a 2-D model applied slice by slice.

    Args:
        label_names: ``{class_value: name}`` of the foreground classes.
        num_classes: classes incl. background (model output channels).
        image_size: network input (H, W).
        normalization: input normalisation of the slices (``mambaseg.data.Normalization``) or ``None``.
        policies: empty-mask policies to report (``"transunet"``, ``"nan"``).
        primary: the policy of the top-level ``dice``/``hd95`` (used for model selection).
        metric_workers: processes computing the HD95 while the model predicts the next volume (0 = inline).
    """

    name = "volume_slicewise"

    def __init__(
        self,
        label_names: Mapping[int, str],
        num_classes: int,
        *,
        image_size: Sequence[int],
        normalization: Any = None,
        policies: Sequence[str] = ("transunet", "nan"),
        primary: str = "transunet",
        metric_workers: int = 0,
    ) -> None:
        from mambaseg.metrics.hd95 import check_empty_policy

        self.label_names = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}
        self.num_classes = int(num_classes)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.normalization = normalization
        self.policies = [check_empty_policy(p) for p in policies]
        self.primary = check_empty_policy(primary)
        if self.primary not in self.policies:
            self.policies.insert(0, self.primary)
        self.metric_workers = int(metric_workers)

    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: EvalContext) -> dict[str, Any]:
        from mambaseg.data.volumetric import zoom_labels
        from mambaseg.inference.postprocess import postprocess_labels
        from mambaseg.inference.volume import predict_volume
        from mambaseg.metrics.volume import VolumeEvaluator

        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("cannot evaluate on an empty dataset (0 volumes)")
        indices = list(range(ctx.dist.rank, n, ctx.dist.world_size))
        local = VolumeEvaluator(self.label_names, self.num_classes, num_workers=self.metric_workers)
        loss_sum = [0.0]
        n_slices = [0]
        for done, i in enumerate(indices, 1):
            vol = dataset[i]
            if vol.label is None:
                raise ValueError(f"volume {vol.id!r} ({vol.path}) has no label; cannot evaluate")
            label = vol.label

            def on_batch(idx: list[int], x: torch.Tensor, logits: torch.Tensor) -> None:
                if ctx.loss_fn is None:
                    return
                y = np.stack([zoom_labels(label[z], self.image_size) for z in idx]).astype(np.int64)
                yt = torch.from_numpy(y).to(logits.device)
                loss_sum[0] += float(ctx.loss_fn(logits, yt)) * len(idx)
                n_slices[0] += len(idx)

            _check_channels(model, vol)
            pred = predict_volume(
                model, vol, image_size=self.image_size, normalization=self.normalization,
                batch_size=max(1, ctx.batch_size), device=ctx.device, amp_dtype=ctx.amp_dtype, on_batch=on_batch,
            )
            pred = postprocess_labels(pred, ctx.postprocess)  # no steps: the array itself
            local.add(vol.id, pred, label, vol.spacing)
            if ctx.progress is not None:
                ctx.progress(done, len(indices))
        gathered = all_gather_objects((local.stats(), loss_sum[0], n_slices[0]), ctx.dist)
        ev = VolumeEvaluator(self.label_names, self.num_classes)
        for st in sorted((s for g in gathered for s in g[0]), key=lambda s: s.case_id):
            ev.add_stats(st)
        total_loss = sum(g[1] for g in gathered)
        total_slices = sum(g[2] for g in gathered)
        return self.summarize(ev, loss=total_loss / max(total_slices, 1) if ctx.loss_fn is not None else None)

    def dry_result(self) -> dict[str, Any] | None:
        from mambaseg.metrics.volume import VolumeEvaluator

        ev = VolumeEvaluator(self.label_names, self.num_classes)
        empty = np.zeros((1, 2, 2), dtype=np.int64)
        ev.add("dry", empty, empty, None)
        return self.summarize(ev, loss=0.0)

    def summarize(self, ev: Any, *, loss: float | None = None) -> dict[str, Any]:
        """Result dict from a filled :class:`mambaseg.metrics.VolumeEvaluator`."""
        rep = ev.report(self.primary)
        out: dict[str, Any] = {
            "dice": rep["mean_dice"],
            "hd95": rep["mean_hd95"],
            "empty_policy": self.primary,
            "empty_policy_rule": rep["empty_policy_rule"],
            "hd95_units": rep["hd95_units"],
            "protocol": rep["protocol"],
            "n_volumes": rep["num_volumes"],
            "empty_masks": rep["empty_masks"],
            "classes": rep["classes"],
            "per_volume": rep["per_volume"],
            "policies": {p: ev.report(p, per_volume=False) for p in self.policies},
        }
        if loss is not None:
            out["loss"] = float(loss)
        return out

    def summary_table(self, summary: dict[str, Any], run_dir: Any) -> Any:
        return volume_summary_table(summary, run_dir)

    def headline(self, result: dict[str, Any]) -> dict[str, float]:
        """Loss, mean Dice and HD95, and each class's Dice; when the empty-mask rule decided some (volume, class)
        HD95 values, also ``hd95_n_by_<policy>_rule``: how many (so the epoch line shows that ``hd95`` holds them)."""
        out: dict[str, float] = {}
        for k in ("loss", "dice", "hd95"):
            v = result.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[k] = float(v)
        counts = result.get("empty_masks") or {}
        decided = sum(int(counts.get(k) or 0) for k in ("empty_pred", "empty_gt", "both_empty"))
        if decided and "hd95" in out:
            out[f"hd95_n_by_{result.get('empty_policy', self.primary)}_rule"] = float(decided)
        for name, vals in (result.get("classes") or {}).items():
            v = vals.get("dice")
            if isinstance(v, (int, float)):
                out[f"dice_{name}"] = float(v)
        return out


def volume_summary_table(summary: dict[str, Any], run_dir: Any) -> Any:
    """Rich table of a per-volume result: Dice / HD95 per class (by name) and the mean, for every policy."""
    from rich.table import Table

    units = summary.get("hd95_units", "voxels")
    table = Table(title=f"per-volume metrics of the best checkpoint (epoch {summary.get('best_epoch')}), "
                        f"{summary.get('n_volumes')} volumes")
    table.add_column("policy")
    table.add_column("metric")
    names = list((summary.get("classes") or {}).keys())
    for n in names + ["mean"]:
        table.add_column(n, justify="right")

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, (int, float)) else str(v if v is not None else "-")

    policies = summary.get("policies") or {summary.get("empty_policy", "transunet"): summary}
    for pol, rep in policies.items():
        cls = rep.get("classes") or {}
        table.add_row(pol, "Dice", *[fmt(cls.get(n, {}).get("dice")) for n in names], fmt(rep.get("mean_dice")))
        table.add_row(pol, f"HD95 ({units})", *[fmt(cls.get(n, {}).get("hd95")) for n in names],
                      fmt(rep.get("mean_hd95")))
    tr = summary.get("train") or {}
    cap = f"{tr.get('epochs')} epochs, {tr.get('steps')} steps, {tr.get('seconds')} s — " if tr else ""
    rules = [rep["empty_masks"]["note"] for rep in policies.values() if (rep.get("empty_masks") or {}).get("note")]
    table.caption = cap + str(run_dir) + "".join(f"\nHD95 {r}" for r in rules)
    if rules:
        table.caption_justify = "left"
    return table


def _check_channels(model: nn.Module, vol: Any) -> None:
    """Refuse, naming the case and its file, a volume whose channel count the model does not take (a one-channel
    volume is repeated for a three-channel model)."""
    expected = int(getattr(model, "in_chans", 0) or 0)
    got = vol.num_channels
    if expected and got != expected and not (got == 1 and expected == 3):
        raise ValueError(f"volume {vol.id!r} ({vol.path or 'no file'}) has {got} channel(s) but the model takes "
                         f"{expected} (a single-channel volume is repeated only for 3-channel models)")


def evaluator_for(task: Any, image_size: Sequence[int]) -> Evaluator:
    """The evaluator of a :class:`~mambaseg.data.layouts.DataTask`'s protocol (``task.evaluation``).

    Args:
        task: the opened task.
        image_size: network input (H, W) (slice-wise volume evaluation resizes each slice to it).
    """
    if task.evaluation == "pixels2d":
        return SegmentationEvaluator2D(task.num_classes, class_names=list(task.label_map))
    if task.evaluation == "volume_slicewise":
        return SlicewiseVolumeEvaluator(task.label_names, task.num_classes, image_size=image_size,
                                        normalization=task.normalization)
    raise ValueError(f"no evaluator for evaluation protocol {task.evaluation!r}")
