"""Scoring label maps against ground truth: Dice/IoU (pooled and per case), HD95 and NSD per case.

Used by ``mambaseg score PRED_DIR GT_DIR`` (any model's masks) and by the cross-validation evaluation (pooled
out-of-fold predictions). Statistics are separated from reductions as everywhere in :mod:`mambaseg.metrics`:

* Dice/IoU/Acc/Sen/Spe: confusion counts per case (:func:`~mambaseg.metrics.confusion_stats`), reduced
  ``pooled`` (one confusion matrix over all cases) and ``per_case`` (mean of the per-case values).
* HD95: :func:`mambaseg.metrics.hd95` (medpy convention: surface = mask minus its connectivity-1 erosion, 95th
  percentile of the pooled distances of both directions), in units of ``spacing`` (pixels, or voxels of 3-D cases,
  when not given).
* NSD (normalized surface distance, "surface Dice" of Nikolov et al. 2021) at tolerance ``tau``:
  ``(#{p in S_P: d(p, S_G) <= tau} + #{g in S_G: d(g, S_P) <= tau}) / (|S_P| + |S_G|)`` with the same surface
  voxels and distances as HD95 (:func:`mambaseg.metrics.surface_distances`). Surfaces are counted in voxels, not
  in surfel areas as in DeepMind's ``surface-distance`` package, so values differ slightly from it on curved
  boundaries. ``tau`` is in the units of ``spacing`` (pixels or voxels without spacing).
* HD95 and NSD have no pooled form: their reduction is the mean over cases (``per_case``).

Empty masks (``empty_policy``), per case and class:

``"auto"`` (the default): ``"transunet"`` for volumes, ``"one"`` for 2-D images, the rules this library's evaluators
    use for each, so ``score`` agrees with ``evaluate`` on the same predictions.
``"transunet"`` (the volumes' rule everywhere in this library: the rule of the papers' published numbers, TransUNet /
    VM-UNet / MSVM-UNet / HeteroMedSeg, :mod:`mambaseg.metrics.hd95`): an empty prediction (whatever the ground truth)
    -> Dice 0, IoU 0, HD95 0, NSD 0; a non-empty prediction without ground truth -> Dice 1, IoU 1, HD95 0, NSD 1.
    The pooled Dice/IoU (one confusion matrix, no per-case rule) leave out a class absent from every case and never
    predicted, as under ``"nan"``.
``"nan"`` (nnU-Net / MONAI): both empty -> Dice, IoU, HD95, NSD are NaN and left out of the means; exactly one
    empty -> Dice 0, IoU 0, HD95 ``inf`` (kept in the mean: an unbounded error stays visible), NSD 0.
``"one"``: both empty -> Dice 1, IoU 1, HD95 0, NSD 1 (a perfect answer); exactly one empty -> as ``"nan"``.

The result's ``empty_masks`` counts the (case, class) values each rule decides (only the prediction empty, only the
ground truth, both) and ``empty_masks["note"]`` says it in words for summary lines
(:func:`mambaseg.metrics.hd95.describe_empty_masks`).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from mambaseg.metrics.confusion import confusion_stats, reduce_stats, scores_from_stats
from mambaseg.metrics.hd95 import EMPTY_POLICY_DOC, describe_empty_masks, empty_mask_counts, hd95, surface_distances

__all__ = ["SCORE_EMPTY_POLICIES", "SCORE_EMPTY_POLICY_DOC", "nsd", "score_cases"]

#: empty-mask rules of :func:`score_cases`; "auto" (the default) is the rule of this library's evaluators for the kind
#: of data: "transunet" for volumes (the papers' rule), "one" for 2-D images (the 2-D evaluator's)
SCORE_EMPTY_POLICIES = ("auto", "transunet", "nan", "one")

SCORE_EMPTY_POLICY_DOC: dict[str, str] = {
    "transunet": EMPTY_POLICY_DOC["transunet"] + "; NSD follows Dice (0 or 1)",
    "nan": "nnU-Net/MONAI rule: both empty -> Dice, IoU, HD95, NSD NaN (left out of the means); exactly one empty -> "
           "Dice 0, IoU 0, HD95 inf (kept in the means), NSD 0",
    "one": "both empty -> Dice 1, IoU 1, HD95 0, NSD 1; exactly one empty -> Dice 0, IoU 0, HD95 inf, NSD 0",
}


def nsd(pred: np.ndarray, gt: np.ndarray, tolerance: float, spacing: float | Sequence[float] | None = None) -> float:
    """Normalized surface distance of two non-empty binary masks at ``tolerance`` (units of ``spacing``).

    A distance counts as within the tolerance when ``d <= tolerance * (1 + 1e-9) + 1e-12``: the small relative
    margin absorbs floating-point rounding of the distance transform, so a tolerance that is a multiple of the
    spacing (e.g. spacing 0.1, tolerance 0.3, where a distance of 3 pixels is ``0.30000000000000004``) gives the
    same NSD as the same question in pixel units (spacing 1, tolerance 3).

    Raises:
        ValueError: an empty mask, a negative tolerance or mismatched shapes.
    """
    if not tolerance >= 0:
        raise ValueError(f"the NSD tolerance must be >= 0, got {tolerance}")
    d_pg, d_gp = surface_distances(pred, gt, spacing=spacing)
    limit = tolerance * (1 + 1e-9) + 1e-12
    return float((np.count_nonzero(d_pg <= limit) + np.count_nonzero(d_gp <= limit))
                 / (d_pg.size + d_gp.size))


def _surface_scores(p: np.ndarray, g: np.ndarray, *, spacing: Any, tolerance: float,
                    empty_policy: str) -> tuple[float, float]:
    np_, ng = bool(p.any()), bool(g.any())
    if np_ and ng:
        return hd95(p, g, spacing), nsd(p, g, tolerance, spacing)
    if empty_policy == "transunet":  # HD95 0 either way; NSD as Dice: 0 for an empty prediction, else 1
        return 0.0, (1.0 if np_ else 0.0)
    if not np_ and not ng:
        return (float("nan"), float("nan")) if empty_policy == "nan" else (0.0, 1.0)
    return float("inf"), 0.0


def _units(spacing: Any, ndim: int = 2) -> str:
    return ("pixels" if ndim == 2 else "voxels") if spacing is None else f"spacing {spacing}"


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def _json_num(v: float) -> float | str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return None if math.isnan(v) else round(float(v), 6)  # type: ignore[return-value]


def score_cases(
    cases: Iterable[tuple[str, np.ndarray, np.ndarray] | tuple[str, np.ndarray, np.ndarray, Any]],
    *,
    num_classes: int,
    spacing: float | Sequence[float] | None = None,
    nsd_tolerance: float = 2.0,
    empty_policy: str = "auto",
    surface: bool = True,
    class_names: Sequence[str] | None = None,
    worst: int = 10,
    low_dice: float = 0.8,
) -> dict[str, Any]:
    """Score ``(id, pred, gt)`` label maps (class indices, same shape per case; 2-D images or 3-D volumes).

    Args:
        cases: iterable of ``(case id, predicted labels, ground-truth labels)`` or ``(..., spacing)`` with the
            case's own pixel/voxel size (``None``: ``spacing``); binary tasks use {0, 1}.
        num_classes: 1 for binary, else the number of classes (class 0 = background, not scored).
        spacing: pixel/voxel size per axis (or one number) for HD95 and NSD of the cases without their own;
            ``None`` = pixel units.
        nsd_tolerance: NSD tolerance in the units of ``spacing``.
        empty_policy: ``"auto"`` (default: ``"transunet"`` for volumes, ``"one"`` for 2-D images, as this library's
            evaluators score them), ``"transunet"``, ``"nan"`` or ``"one"`` (module docstring).
        surface: compute HD95 and NSD (False: only the confusion metrics).
        class_names: names of the classes for the per-class entries.
        worst: how many of the lowest per-case Dice values to list.
        low_dice: the per-case Dice under which a case is counted in ``n_below``.

    Returns:
        ``{"dice", "iou" (pooled), "per_case_dice", "hd95", "nsd" (per-case means), "n_cases", "pooled",
        "per_case" (:func:`~mambaseg.metrics.reduce_stats` dicts), "cases": [{"id", "dice", "iou", "hd95", "nsd",
        "per_class": {...}}], "worst": [...], "n_below", "empty_masks": {counts, "note"}, "conventions": {...}}``.
    """
    if empty_policy not in SCORE_EMPTY_POLICIES:
        raise ValueError(f"empty_policy must be one of {SCORE_EMPTY_POLICIES}, got {empty_policy!r}")
    fg = [1] if num_classes == 1 else list(range(1, num_classes))
    stats, rows, own, ndim, sizes = [], [], [], 2, []
    for item in cases:
        case_id, pred, gt = item[:3]
        sp = item[3] if len(item) > 3 and item[3] is not None else spacing
        own.append(len(item) > 3 and item[3] is not None)
        p, g = np.asarray(pred), np.asarray(gt)
        ndim = p.ndim
        if empty_policy == "auto":  # the evaluators' rule for this kind of data, from the first case
            empty_policy = "transunet" if ndim == 3 else "one"
        if p.shape != g.shape:
            raise ValueError(f"case {case_id!r}: prediction is {p.shape} but the ground truth is {g.shape}; expected "
                             "the same size")
        st = confusion_stats(torch.from_numpy(p.astype(np.int64))[None], torch.from_numpy(g.astype(np.int64))[None],
                             num_classes)
        stats.append(st)
        sc = scores_from_stats(st[0], empty=empty_policy)
        idx = [0] if num_classes == 1 else fg
        tp, fp, fn = (st[0, idx, k].tolist() for k in range(3))
        sizes.append(list(zip((a + b for a, b in zip(tp, fp)), (a + b for a, b in zip(tp, fn)))))  # (pred, gt)
        per_class: dict[str, list[float]] = {"dsc": [float(sc["dsc"][i]) for i in idx],
                                             "iou": [float(sc["iou"][i]) for i in idx]}
        if surface:
            hs, ns = zip(*[_surface_scores(p == c, g == c, spacing=sp, tolerance=nsd_tolerance,
                                           empty_policy=empty_policy) for c in fg])
            per_class["hd95"], per_class["nsd"] = list(hs), list(ns)
        rows.append({"id": str(case_id), **{("dice" if k == "dsc" else k): _mean(v) for k, v in per_class.items()},
                     "per_class": per_class})
    if not rows:
        raise ValueError("no cases to score")
    all_stats = torch.cat(stats)
    empty = "nan" if empty_policy == "transunet" else empty_policy  # pooled: no per-case rule
    names = list(class_names) if class_names is not None else None
    if names is not None and num_classes == 1 and len(names) == 2:
        names = names[1:]
    pooled = reduce_stats(all_stats, "pooled", empty=empty, class_names=names)
    per_case = reduce_stats(all_stats, "per_case", empty=empty_policy, class_names=names)
    ranked = sorted((r for r in rows if not math.isnan(r["dice"])), key=lambda r: (r["dice"], r["id"]))
    out: dict[str, Any] = {
        "dice": pooled["dsc"], "iou": pooled["iou"], "per_case_dice": per_case["dsc"], "n_cases": len(rows),
        "pooled": pooled, "per_case": per_case,
        "n_below": {"threshold": low_dice, "count": sum(r["dice"] < low_dice for r in ranked)},
        "worst": [{"id": r["id"], "dice": _json_num(r["dice"])} for r in ranked[:worst]],
    }
    counts = empty_mask_counts(sizes)
    out["empty_masks"] = {**counts, "note": describe_empty_masks(counts, empty_policy, "case")}
    if surface:
        out["hd95"] = _mean([r["hd95"] for r in rows])
        out["nsd"] = _mean([r["nsd"] for r in rows])
    out["conventions"] = {
        "dice_iou": "pooled = one confusion matrix over all cases; per_case = mean of per-case values",
        "hd95": "medpy: 95th percentile of the pooled surface distances of both directions (surface = mask minus "
                "its connectivity-1 erosion); mean over cases",
        "nsd": f"normalized surface distance, surface voxels within {nsd_tolerance:g} of the other surface; mean over "
               "cases",
        "units": ("each case's own voxel spacing (mm)" if all(own) else
                  f"each case's own voxel spacing where it has one, else {_units(spacing, ndim)}" if any(own) else
                  _units(spacing, ndim)),
        "empty_policy": empty_policy,
        "empty_policy_rule": SCORE_EMPTY_POLICY_DOC[empty_policy],
        "classes_scored": fg,
    }
    out["cases"] = [{**r, **{k: _json_num(r[k]) for k in ("dice", "iou", "hd95", "nsd") if k in r},
                     "per_class": {k: [_json_num(x) for x in v] for k, v in r["per_class"].items()}} for r in rows]
    for k in ("hd95", "nsd"):
        if k in out:
            out[k] = _json_num(out[k])
    return out
