"""Confusion statistics per image and class, and their two named reductions.

Statistics are separated from reduction:

* :func:`confusion_stats` counts TP, FP, FN, TN for every image and class -> LongTensor (N, C, 4).
* :func:`reduce_stats` turns counts into Acc, Sen (recall), Spe, DSC and IoU with a *named* reduction:

  - ``"pooled"``: the counts of all images are summed into one confusion matrix per class and the
    metrics are computed once (pixel-pooled; the convention of VM-UNet and the ISIC papers);
  - ``"per_case"``: the metrics are computed for every image, then averaged over images.

Empty-case policy (``empty="one"``, the default): a metric whose denominator is zero is 1.0. For DSC/IoU
that is an image (or class) with no ground truth and no prediction, which is a perfect result; for Spe
(no negative pixel) it is vacuously perfect (any false positives are still penalised by DSC and IoU).
Sensitivity is the exception: without a ground-truth pixel it is undefined and always NaN (0/0 is never
reported as 1.0); the per-case mean leaves such images out, and a class without any ground-truth pixel in
the whole split has a NaN pooled sensitivity. ``empty="nan"`` instead gives NaN and the per-case mean skips it
(MONAI's convention). Under ``"pooled"`` a zero denominator only happens when a class is absent from
every image and never predicted. ``empty="transunet"`` applies the TransUNet / VM-UNet / MSVM-UNet rule
(:mod:`mambaseg.metrics.hd95`) to DSC and IoU: an empty prediction scores 0 (also when the ground truth is empty), a
non-empty prediction without ground truth scores 1; Acc and Spe are NaN where their denominator is zero, as under
``"nan"``.

Binary tasks: with ``num_classes == 1`` predictions and targets are {0, 1} masks and the statistics
have one class, the foreground. With ``num_classes >= 2`` class 0 is the background and the reported
top-level values are the mean over foreground classes ``1..C-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "METRIC_NAMES",
    "confusion_stats",
    "scores_from_stats",
    "reduce_stats",
    "MetricAccumulator",
]

METRIC_NAMES = ("acc", "sen", "spe", "dsc", "iou")
_EMPTY = ("one", "nan", "transunet")


def _as_labels(x: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(x).__name__}")
    if x.dtype == torch.bool:
        return x.long()
    if x.is_floating_point() or x.is_complex():
        raise ValueError(
            f"{name} must hold integer class indices, got dtype {x.dtype}; threshold probabilities or take the "
            "argmax of logits first (see mambaseg.metrics.labels_from_logits)"
        )
    return x.long()


def confusion_stats(pred: torch.Tensor, target: torch.Tensor, num_classes: int, *, check: bool = True) -> torch.Tensor:
    """TP, FP, FN, TN per image and class.

    Args:
        pred: (N, *spatial) integer class indices (2-D or 3-D images; a bool mask is fine for binary).
        target: same shape as ``pred``.
        num_classes: 1 for binary {0, 1} masks (the single reported class is the foreground), else the
            number of classes C (class indices in [0, C)).
        check: verify that the values are in range (one host synchronisation on a GPU); evaluators that made
            ``pred`` themselves and validated the targets on reading skip it so a GPU batch never waits.

    Returns:
        LongTensor (N, C', 4) on ``pred``'s device, C' = 1 if ``num_classes == 1`` else ``num_classes``,
        last axis ordered (TP, FP, FN, TN).

    Raises:
        ValueError: shapes differ, values are out of range, or the inputs are not integer labels.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred = _as_labels(pred, "pred")
    target = _as_labels(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} and target shape {tuple(target.shape)} differ")
    if pred.dim() < 2:
        raise ValueError(f"pred must be (N, *spatial) with a batch axis, got shape {tuple(pred.shape)}")
    target = target.to(pred.device)
    k = 2 if num_classes == 1 else int(num_classes)
    for name, t in (("pred", pred), ("target", target)) if check else ():
        if t.numel():
            lo, hi = (int(v) for v in torch.aminmax(t))
            if lo < 0 or hi >= k:
                raise ValueError(
                    f"{name} values must be in [0, {k - 1}] for num_classes={num_classes}, got [{lo}, {hi}]"
                )
    n = pred.shape[0]
    flat = (target.reshape(n, -1) * k + pred.reshape(n, -1)) + torch.arange(n, device=pred.device)[:, None] * (k * k)
    flat = flat.reshape(-1)
    # counts by index_add_ (bincount would read the maximum back to the host on a GPU)
    cm = torch.zeros(n * k * k, dtype=torch.long, device=pred.device)
    cm = cm.index_add_(0, flat, torch.ones_like(flat, dtype=torch.long)).reshape(n, k, k)  # [image, true, pred]
    tp = cm.diagonal(dim1=1, dim2=2)
    fp = cm.sum(dim=1) - tp
    fn = cm.sum(dim=2) - tp
    total = cm.sum(dim=(1, 2))[:, None]
    tn = total - tp - fp - fn
    stats = torch.stack([tp, fp, fn, tn], dim=-1)
    if num_classes == 1:
        stats = stats[:, 1:2]
    return stats.long()


def _div(num: torch.Tensor, den: torch.Tensor, empty: str) -> torch.Tensor:
    fill = 1.0 if empty == "one" else float("nan")  # "transunet": NaN (its DSC/IoU rule is _transunet's)
    out = torch.full_like(num, fill)
    nz = den != 0
    out[nz] = num[nz] / den[nz]
    return out


def scores_from_stats(stats: torch.Tensor, *, empty: str = "one") -> dict[str, torch.Tensor]:
    """Element-wise metrics from counts (..., 4) -> dict of float64 tensors (...)."""
    if empty not in _EMPTY:
        raise ValueError(f"empty must be one of {_EMPTY}, got {empty!r}")
    if stats.shape[-1] != 4:
        raise ValueError(f"stats must end with an axis of 4 (TP, FP, FN, TN), got shape {tuple(stats.shape)}")
    s = stats.double()
    tp, fp, fn, tn = s.unbind(-1)
    out = {
        "acc": _div(tp + tn, tp + fp + fn + tn, empty),
        "sen": _div(tp, tp + fn, "nan"),  # undefined without ground-truth pixels, under either policy
        "spe": _div(tn, tn + fp, empty),
        "dsc": _div(2 * tp, 2 * tp + fp + fn, empty),
        "iou": _div(tp, tp + fp + fn, empty),
    }
    if empty == "transunet":
        for k in ("dsc", "iou"):
            out[k] = _transunet(out[k], tp + fp, tp + fn)
    return out


def _transunet(score: torch.Tensor, n_pred: torch.Tensor, n_gt: torch.Tensor) -> torch.Tensor:
    """TransUNet's empty-mask rule on a DSC/IoU tensor: 0 where the prediction is empty, 1 where only the ground
    truth is."""
    score = torch.where((n_pred > 0) & (n_gt == 0), torch.ones_like(score), score)
    return torch.where(n_pred == 0, torch.zeros_like(score), score)


def _foreground_classes(num_stat_classes: int) -> list[int]:
    return [0] if num_stat_classes == 1 else list(range(1, num_stat_classes))


def _package(
    per_class: dict[str, torch.Tensor], reduction: str, n_cases: int, class_names: Sequence[str] | None
) -> dict[str, Any]:
    c = next(iter(per_class.values())).shape[0]
    fg = _foreground_classes(c)
    labels = list(class_names) if class_names is not None else None
    if labels is not None and len(labels) != c:
        raise ValueError(f"class_names has {len(labels)} entries but the statistics have {c} classes")
    out: dict[str, Any] = {"reduction": reduction, "n_cases": int(n_cases)}
    for m in METRIC_NAMES:
        vals = per_class[m][fg]
        finite = vals[~torch.isnan(vals)]
        out[m] = float(finite.mean()) if finite.numel() else float("nan")
    out["per_class"] = {m: [float(v) for v in per_class[m]] for m in METRIC_NAMES}
    out["classes"] = labels if labels is not None else ([1] if c == 1 else list(range(c)))
    out["foreground_classes"] = [out["classes"][i] for i in fg]
    return out


def reduce_stats(
    stats: torch.Tensor,
    reduction: str = "pooled",
    *,
    empty: str = "one",
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics from per-image statistics with a named reduction.

    Args:
        stats: (N, C, 4) counts from :func:`confusion_stats` (C == 1: foreground only; else class 0 is
            background).
        reduction: ``"pooled"`` (sum the counts over images, then compute) or ``"per_case"`` (compute per
            image, then average over images).
        empty: zero-denominator policy, ``"one"``, ``"nan"`` or ``"transunet"`` (see the module docstring).
        class_names: optional names for the C classes (reported in ``"classes"``).

    Returns:
        ``{"reduction", "n_cases", "acc", "sen", "spe", "dsc", "iou", "per_class": {metric: [C values]},
        "classes", "foreground_classes"}``; the top-level metric values are the mean over foreground
        classes (the foreground itself for binary tasks).
    """
    if stats.dim() != 3 or stats.shape[-1] != 4:
        raise ValueError(f"stats must be (N, C, 4), got shape {tuple(stats.shape)}")
    n = stats.shape[0]
    if n == 0:
        raise ValueError("reduce_stats: no images in stats")
    if reduction == "pooled":
        per_class = scores_from_stats(stats.sum(dim=0), empty=empty)
    elif reduction == "per_case":
        per_image = scores_from_stats(stats, empty=empty)  # each (N, C)
        per_class = {k: torch.nanmean(v, dim=0) for k, v in per_image.items()}
    else:
        raise ValueError(f"reduction must be 'pooled' or 'per_case', got {reduction!r}")
    return _package(per_class, reduction, n, class_names)


class MetricAccumulator:
    """Collects confusion statistics batch by batch and reports both reductions.

    The state is a fixed-size float64 vector (see :meth:`state`): pooled counts (C x 4), the sums of the
    per-image metric values and the number of non-NaN per-image values (C x 5 each), and the number of
    images. Summing states of several processes (``torch.distributed.all_reduce``) or calling
    :meth:`merge` gives exactly the statistics of all their images together; counts stay exact below
    2**53 pixels.

    Args:
        num_classes: as in :func:`confusion_stats` (1 = binary foreground).
        empty: zero-denominator policy of the per-case values (``"one"``, ``"nan"`` or ``"transunet"``).
        keep_cases: also keep every image's (C, 4) counts and id in memory (``cases()``); not part of
            :meth:`state`, so not all-reduced.
        class_names: optional class names for the summaries.

    Example:
        >>> acc = MetricAccumulator(num_classes=1)
        >>> acc.update(torch.ones(2, 4, 4, dtype=torch.long), torch.ones(2, 4, 4, dtype=torch.long))
        >>> acc.summary()["pooled"]["dsc"]
        1.0
    """

    def __init__(
        self,
        num_classes: int,
        *,
        empty: str = "one",
        keep_cases: bool = False,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if empty not in _EMPTY:
            raise ValueError(f"empty must be one of {_EMPTY}, got {empty!r}")
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.c = 1 if self.num_classes == 1 else self.num_classes
        self.empty = empty
        self.keep_cases = keep_cases
        self.class_names = list(class_names) if class_names is not None else None
        self.reset()

    # layout of the state vector
    @property
    def state_size(self) -> int:
        return self.c * 4 + 2 * self.c * len(METRIC_NAMES) + 1

    def reset(self) -> None:
        self.pooled = torch.zeros(self.c, 4, dtype=torch.float64)
        self.case_sum = torch.zeros(self.c, len(METRIC_NAMES), dtype=torch.float64)
        self.case_count = torch.zeros(self.c, len(METRIC_NAMES), dtype=torch.float64)
        self.n_cases = 0
        self._cases: list[torch.Tensor] = []
        self._ids: list[str] = []

    def update_stats(self, stats: torch.Tensor, ids: Sequence[str] | None = None) -> None:
        """Add precomputed (N, C, 4) statistics."""
        if stats.dim() != 3 or stats.shape[1:] != (self.c, 4):
            raise ValueError(f"stats must be (N, {self.c}, 4), got {tuple(stats.shape)}")
        s = stats.detach().to("cpu", torch.int64)
        self.pooled += s.sum(dim=0).double()
        per_image = scores_from_stats(s, empty=self.empty)
        vals = torch.stack([per_image[m] for m in METRIC_NAMES], dim=-1)  # (N, C, 5)
        ok = ~torch.isnan(vals)
        self.case_sum += torch.where(ok, vals, torch.zeros_like(vals)).sum(dim=0)
        self.case_count += ok.double().sum(dim=0)
        self.n_cases += s.shape[0]
        if self.keep_cases:
            self._cases.append(s)
            if ids is not None:
                if len(ids) != s.shape[0]:
                    raise ValueError(f"got {len(ids)} ids for {s.shape[0]} images")
                self._ids.extend(str(i) for i in ids)
            else:
                self._ids.extend(str(self.n_cases - s.shape[0] + i) for i in range(s.shape[0]))

    def update(self, pred: torch.Tensor, target: torch.Tensor, ids: Sequence[str] | None = None) -> torch.Tensor:
        """Add a batch of label maps (N, *spatial); returns its (N, C, 4) statistics."""
        stats = confusion_stats(pred, target, self.num_classes)
        self.update_stats(stats, ids)
        return stats

    def state(self) -> torch.Tensor:
        """float64 vector of length :attr:`state_size` (sum-reducible across processes)."""
        return torch.cat(
            [
                self.pooled.reshape(-1),
                self.case_sum.reshape(-1),
                self.case_count.reshape(-1),
                torch.tensor([float(self.n_cases)], dtype=torch.float64),
            ]
        )

    def load_state(self, state: torch.Tensor) -> None:
        """Replace the reducible statistics by ``state`` (e.g. after an all-reduce); clears kept cases."""
        state = state.detach().to("cpu", torch.float64).reshape(-1)
        if state.numel() != self.state_size:
            raise ValueError(f"state must have {self.state_size} entries, got {state.numel()}")
        c, m = self.c, len(METRIC_NAMES)
        self.pooled = state[: c * 4].reshape(c, 4).clone()
        self.case_sum = state[c * 4 : c * 4 + c * m].reshape(c, m).clone()
        self.case_count = state[c * 4 + c * m : c * 4 + 2 * c * m].reshape(c, m).clone()
        self.n_cases = int(round(float(state[-1])))
        self._cases, self._ids = [], []

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        """Add another accumulator's statistics into this one (returns self)."""
        if other.c != self.c or other.empty != self.empty:
            raise ValueError("can only merge accumulators with the same num_classes and empty policy")
        self.pooled += other.pooled
        self.case_sum += other.case_sum
        self.case_count += other.case_count
        self.n_cases += other.n_cases
        if self.keep_cases and other.keep_cases:
            self._cases.extend(other._cases)
            self._ids.extend(other._ids)
        return self

    def all_reduce(self, group: Any = None) -> None:
        """Sum the state over the processes of ``torch.distributed`` (no-op when not initialised)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        from mambaseg.utils.distributed import collective_device

        st = self.state()
        st = st.to(collective_device(st.device, group))
        dist.all_reduce(st, op=dist.ReduceOp.SUM, group=group)
        keep, ids = self._cases, self._ids
        self.load_state(st)
        self._cases, self._ids = keep, ids

    def cases(self) -> list[dict[str, Any]]:
        """Per-image metrics (needs ``keep_cases=True``): ``[{"id", "acc", ..., "per_class": ...}]``."""
        if not self.keep_cases:
            raise RuntimeError("MetricAccumulator(keep_cases=True) is needed to list per-image metrics")
        out = []
        if not self._cases:
            return out
        stats = torch.cat(self._cases)
        per_image = scores_from_stats(stats, empty=self.empty)
        fg = _foreground_classes(self.c)
        for i, case_id in enumerate(self._ids):
            row: dict[str, Any] = {"id": case_id}
            for m in METRIC_NAMES:
                v = per_image[m][i, fg]
                v = v[~torch.isnan(v)]
                row[m] = float(v.mean()) if v.numel() else float("nan")
            row["per_class"] = {m: [float(x) for x in per_image[m][i]] for m in METRIC_NAMES}
            out.append(row)
        return out

    def compute(self, reduction: str) -> dict[str, Any]:
        """One reduction (``"pooled"`` or ``"per_case"``) of everything added so far."""
        if self.n_cases == 0:
            raise ValueError("MetricAccumulator: no images were added")
        if reduction == "pooled":
            per_class = scores_from_stats(self.pooled.round().long(), empty=self.empty)
        elif reduction == "per_case":
            mean = self.case_sum / self.case_count
            mean[self.case_count == 0] = float("nan")
            per_class = {m: mean[:, j] for j, m in enumerate(METRIC_NAMES)}
        else:
            raise ValueError(f"reduction must be 'pooled' or 'per_case', got {reduction!r}")
        return _package(per_class, reduction, self.n_cases, self.class_names)

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{"pooled": {...}, "per_case": {...}}`` (see :func:`reduce_stats` for the fields)."""
        return {"pooled": self.compute("pooled"), "per_case": self.compute("per_case")}
