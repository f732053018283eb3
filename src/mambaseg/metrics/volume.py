"""Per-volume, per-class Dice and HD95 of multi-class label volumes, with named empty-mask policies.

Protocol (the TransUNet / MSVM-UNet / HeteroMedSeg evaluation, made explicit): for every volume and every
foreground class ``c`` the binary masks ``pred == c`` and ``gt == c`` give one Dice and one HD95 (3-D surfaces,
:mod:`mambaseg.metrics.hd95`); per class the values are averaged over volumes, then the class means are averaged
into ``mean_dice`` / ``mean_hd95``. The raw counts and distances are computed once per (volume, class) and every
requested empty-mask policy is applied afterwards, so reporting both policies costs nothing extra.

Example:
    >>> ev = VolumeEvaluator({1: "RV", 2: "Myo", 3: "LV"})
    >>> ev.add("patient001_frame01", pred, gt)            # (D, H, W) integer label volumes
    >>> report = ev.report("transunet")                    # JSON-ready dict
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mambaseg.metrics.hd95 import (
    EMPTY_POLICIES,
    EMPTY_POLICY_DOC,
    apply_empty_policy,
    check_empty_policy,
    describe_empty_masks,
    empty_mask_counts,
    hd95,
)
from mambaseg.utils.files import json_safe  # re-exported: reports are made JSON-ready here

__all__ = [
    "ClassStats",
    "VolumeEvaluator",
    "VolumeStats",
    "evaluate_volumes",
    "json_safe",
    "volume_class_stats",
]


@dataclass(frozen=True)
class ClassStats:
    """Raw statistics of one class in one volume.

    Attributes:
        pred_count: foreground voxels of the prediction.
        gt_count: foreground voxels of the ground truth.
        intersection: voxels in both.
        hd95: HD95 when both masks are non-empty, else NaN (the policy decides).
    """

    pred_count: int
    gt_count: int
    intersection: int
    hd95: float

    @property
    def dice(self) -> float:
        """Dice from counts; NaN when both masks are empty."""
        denom = self.pred_count + self.gt_count
        return 2.0 * self.intersection / denom if denom else float("nan")

    def scores(self, empty_policy: str) -> tuple[float, float]:
        """(Dice, HD95) of this class under ``empty_policy``."""
        return apply_empty_policy(self.pred_count, self.gt_count, self.dice, self.hd95, empty_policy)


@dataclass(frozen=True)
class VolumeStats:
    """Raw statistics of one volume: ``classes[c]`` for every evaluated class value ``c``."""

    case_id: str
    classes: dict[int, ClassStats]
    spacing: tuple[float, ...] | None


def _check_labels(vol: np.ndarray, allowed: Sequence[int], name: str, case_id: str) -> None:
    values = np.unique(vol)
    bad = sorted(set(values.tolist()) - set(int(a) for a in allowed))
    if bad:
        raise ValueError(
            f"{name} of case {case_id!r} contains label values {bad[:10]} outside the label map {sorted(allowed)}"
        )


def volume_class_stats(
    pred: np.ndarray,
    gt: np.ndarray,
    classes: Sequence[int],
    spacing: float | Sequence[float] | None = None,
    *,
    case_id: str = "",
    num_classes: int | None = None,
    percentile: float = 95.0,
) -> VolumeStats:
    """Raw per-class statistics of one labelled volume (or image).

    Args:
        pred: integer label array (D, H, W) (any N-D works).
        gt: integer label array of the same shape.
        classes: class values to evaluate (usually 1..K-1).
        spacing: voxel size per axis of ``pred``'s axes, or ``None`` for voxel units.
        case_id: name used in error messages and reports.
        num_classes: when given, label values must lie in ``0..num_classes-1`` (clear error otherwise).
        percentile: HD percentile.

    Returns:
        A :class:`VolumeStats`.
    """
    if hasattr(pred, "detach"):
        pred = pred.detach().cpu().numpy()  # type: ignore[union-attr]
    if hasattr(gt, "detach"):
        gt = gt.detach().cpu().numpy()  # type: ignore[union-attr]
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"case {case_id!r}: prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if num_classes is not None:
        allowed = list(range(num_classes))
        _check_labels(gt, allowed, "ground truth", case_id)
        _check_labels(pred, allowed, "prediction", case_id)
    out: dict[int, ClassStats] = {}
    for c in classes:
        p = pred == c
        g = gt == c
        n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
        inter = int(np.count_nonzero(p & g))
        h = hd95(p, g, spacing, percentile=percentile) if n_p and n_g else float("nan")
        out[int(c)] = ClassStats(n_p, n_g, inter, h)
    sp = None if spacing is None else tuple(float(s) for s in np.atleast_1d(spacing))
    return VolumeStats(case_id=case_id, classes=out, spacing=sp)


def _mean(values: list[float], policy: str) -> float:
    """Mean over volumes: plain for ``transunet``; NaN-skipping (inf kept) for ``nan``; NaN if nothing is left."""
    arr = np.asarray(values, dtype=np.float64)
    if policy == "nan":
        arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return float("nan")
    return float(arr.mean())


class VolumeEvaluator:
    """Accumulates per-volume statistics and reports per-class and mean Dice / HD95.

    Args:
        label_names: ``{class_value: name}`` of the foreground classes to evaluate (or a sequence of names for
            classes 1..K-1); background (0) is never evaluated.
        num_classes: total number of classes incl. background; label values outside ``0..num_classes-1`` raise.
            Defaults to ``max(label value) + 1``.
        num_workers: 0 computes in the calling process; N > 0 spreads volumes over N worker processes
            (pays off for large CT volumes; the EDT is CPU-bound and holds the GIL).
        percentile: HD percentile (95).
    """

    def __init__(
        self,
        label_names: Mapping[int, str] | Sequence[str],
        num_classes: int | None = None,
        *,
        num_workers: int = 0,
        percentile: float = 95.0,
    ) -> None:
        if isinstance(label_names, Mapping):
            names = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}
        else:
            names = {i + 1: str(n) for i, n in enumerate(label_names)}
        if not names:
            raise ValueError("label_names must name at least one foreground class")
        self.label_names = dict(sorted(names.items()))
        self.num_classes = int(num_classes) if num_classes is not None else max(self.label_names) + 1
        if max(self.label_names) >= self.num_classes:
            raise ValueError(f"label_names has class {max(self.label_names)} but num_classes={self.num_classes}")
        self.num_workers = int(num_workers)
        self.percentile = float(percentile)
        self._pool: ProcessPoolExecutor | None = None
        self._items: list[VolumeStats | Future] = []

    def reset(self) -> None:
        """Forget all accumulated volumes."""
        self._items = []

    def add(
        self,
        case_id: str,
        pred: np.ndarray,
        gt: np.ndarray,
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        """Add one volume: ``pred``/``gt`` integer label arrays of equal shape, ``spacing`` per axis or ``None``."""
        args = (np.asarray(pred), np.asarray(gt), list(self.label_names), spacing)
        kw = dict(case_id=str(case_id), num_classes=self.num_classes, percentile=self.percentile)
        if self.num_workers > 0:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=self.num_workers)
            self._items.append(self._pool.submit(volume_class_stats, *args, **kw))
        else:
            self._items.append(volume_class_stats(*args, **kw))

    def add_stats(self, stats: VolumeStats) -> None:
        """Add statistics computed elsewhere (e.g. gathered from other processes)."""
        missing = sorted(set(self.label_names) - set(stats.classes))
        if missing:
            raise ValueError(f"statistics of case {stats.case_id!r} lack classes {missing}")
        self._items.append(stats)

    def stats(self) -> list[VolumeStats]:
        """Raw statistics of every added volume (waits for pending workers)."""
        out = [it.result() if isinstance(it, Future) else it for it in self._items]
        self._items = list(out)
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        return out

    def __len__(self) -> int:
        return len(self._items)

    def units(self) -> str:
        """``"voxels"`` when no volume had a spacing, ``"mm"`` when all had one, else ``"mixed"``."""
        st = self.stats()
        with_sp = [s.spacing is not None for s in st]
        if not with_sp or not any(with_sp):
            return "voxels"
        return "mm" if all(with_sp) else "mixed"

    def report(self, empty_policy: str = "transunet", *, per_volume: bool = True) -> dict[str, Any]:
        """Per-class means over volumes and the mean over classes under ``empty_policy`` (JSON-safe values).

        Returns:
            A dict with ``empty_policy``, ``empty_policy_rule``, ``hd95_units``, ``protocol``, ``num_volumes``,
            ``classes`` (``{name: {dice, hd95, n_dice, n_hd95, n_hd95_inf}}``), ``mean_dice``, ``mean_hd95``,
            ``empty_masks`` (how many (volume, class) values the empty-mask rule decided,
            :func:`~mambaseg.metrics.hd95.empty_mask_counts`, and ``note``, the summary's words for it,
            :func:`~mambaseg.metrics.hd95.describe_empty_masks`) and, when ``per_volume``, a list of
            ``{id, dice: {name: v}, hd95: {name: v}}``. NaN is written as ``null`` and infinity as ``"inf"``.
        """
        check_empty_policy(empty_policy)
        st = self.stats()
        if not st:
            raise RuntimeError("VolumeEvaluator.report() called before any volume was added")
        per_class: dict[str, dict[str, Any]] = {}
        rows = []
        scores = {
            c: [s.classes[c].scores(empty_policy) for s in st] for c in self.label_names
        }
        for c, name in self.label_names.items():
            dices = [d for d, _ in scores[c]]
            hds = [h for _, h in scores[c]]
            per_class[name] = {
                "dice": _mean(dices, empty_policy),
                "hd95": _mean(hds, empty_policy),
                "n_dice": int(sum(not math.isnan(d) for d in dices)),
                "n_hd95": int(sum(not math.isnan(h) for h in hds)),
                "n_hd95_inf": int(sum(math.isinf(h) for h in hds)),
            }
        if per_volume:
            for i, s in enumerate(st):
                rows.append(
                    {
                        "id": s.case_id,
                        "dice": {n: scores[c][i][0] for c, n in self.label_names.items()},
                        "hd95": {n: scores[c][i][1] for c, n in self.label_names.items()},
                    }
                )
        mean_dice = _mean([v["dice"] for v in per_class.values()], empty_policy)
        mean_hd = _mean([v["hd95"] for v in per_class.values()], empty_policy)
        counts = empty_mask_counts([[(s.classes[c].pred_count, s.classes[c].gt_count) for c in self.label_names]
                                    for s in st])
        out: dict[str, Any] = {
            "protocol": "per-volume per-class Dice and HD95 (3-D surfaces, medpy convention); mean over volumes "
            "per class, then mean over classes",
            "empty_policy": empty_policy,
            "empty_policy_rule": EMPTY_POLICY_DOC[empty_policy],
            "hd95_units": self.units(),
            "hd95_percentile": self.percentile,
            "num_volumes": len(st),
            "classes": per_class,
            "mean_dice": mean_dice,
            "mean_hd95": mean_hd,
            "empty_masks": {**counts, "note": describe_empty_masks(counts, empty_policy, "volume")},
        }
        if per_volume:
            out["per_volume"] = rows
        return json_safe(out)

    def reports(self, policies: Iterable[str] = EMPTY_POLICIES, *, per_volume: bool = True) -> dict[str, Any]:
        """``{policy: report(policy)}`` for several policies from the same statistics."""
        return {p: self.report(p, per_volume=per_volume) for p in policies}


def evaluate_volumes(
    cases: Iterable[tuple[str, np.ndarray, np.ndarray] | tuple[str, np.ndarray, np.ndarray, Any]],
    label_names: Mapping[int, str] | Sequence[str],
    *,
    num_classes: int | None = None,
    empty_policy: str | Sequence[str] = "transunet",
    num_workers: int = 0,
) -> dict[str, Any]:
    """Evaluate ``(case_id, pred, gt[, spacing])`` tuples; one report, or ``{policy: report}`` for a list."""
    ev = VolumeEvaluator(label_names, num_classes, num_workers=num_workers)
    for item in cases:
        ev.add(*item)
    if isinstance(empty_policy, str):
        return ev.report(empty_policy)
    return ev.reports(empty_policy)
