"""Surface distances, HD95 and Dice of binary masks, with an explicit empty-mask policy.

Conventions (identical to medpy's ``medpy.metric.binary.hd95``):

* The surface of a mask is the mask minus its binary erosion with the connectivity-1 structure
  (``scipy.ndimage.generate_binary_structure(ndim, 1)``), voxels outside the array counting as background.
* The distance of a surface voxel of A to B is the Euclidean distance to the nearest surface voxel of B, in units
  of ``spacing`` (voxels when ``spacing`` is ``None``).
* HD95 is the 95th percentile (numpy's default linear interpolation) of the POOLED distances of both directions
  (A->B surface distances followed by B->A), not the maximum of two directed percentiles.

Implementation: both masks are cropped to the bounding box of their union (outside it both are background, so
erosion and nearest-surface distances are unchanged), and the distances come from one vectorised
``scipy.ndimage.distance_transform_edt`` per direction.

Empty masks: :func:`hd95` raises ``ValueError`` when either mask is empty (medpy raises too). For per-class
evaluation use :func:`dice_hd95` with ``empty_policy``:

``"transunet"`` (the rule of TransUNet / VM-UNet / MSVM-UNet / HeteroMedSeg evaluation code):
    pred and GT non-empty -> (Dice, HD95) computed; pred non-empty and GT empty -> (1, 0); pred empty (whatever the
    GT) -> (0, 0). The constants do not depend on ``spacing``.
``"nan"`` (nnU-Net Dice + MONAI HD95):
    Dice = 2|P∩G| / (|P| + |G|), NaN when both are empty (nnU-Net), so 0 when exactly one is empty.
    HD95 = NaN when both are empty, ``inf`` when exactly one is empty (MONAI ``compute_hausdorff_distance``).
    Aggregations ignore NaN (case excluded) and keep ``inf`` (an unbounded error stays visible).

``"transunet"`` is the default for volumes everywhere (``evaluate``, training's validation, and ``score`` /
``evaluate --cv`` through their ``"auto"``, which picks the evaluators' rule for the kind of data): it is the rule
the papers' published numbers were computed with. A mean under it can look good when predictions are empty
(each counts HD95 0), so every summary line names the rule and says how many cases it decided
(:func:`empty_mask_counts`, :func:`describe_empty_masks`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "EMPTY_POLICIES",
    "EMPTY_POLICY_DOC",
    "EMPTY_RULE_NAMES",
    "apply_empty_policy",
    "check_empty_policy",
    "describe_empty_masks",
    "dice_hd95",
    "dice_score",
    "empty_mask_counts",
    "hd95",
    "mask_surface",
    "surface_distances",
]

EMPTY_POLICIES: tuple[str, ...] = ("transunet", "nan")

EMPTY_POLICY_DOC: dict[str, str] = {
    "transunet": (
        "TransUNet rule: pred and GT non-empty -> Dice/HD95 computed; pred non-empty & GT empty -> Dice 1, HD95 0; "
        "pred empty -> Dice 0, HD95 0 (constants independent of spacing)"
    ),
    "nan": (
        "nnU-Net/MONAI rule: Dice = 2|P&G|/(|P|+|G|), NaN if both empty; HD95 NaN if both empty, inf if exactly one "
        "is empty; means skip NaN and keep inf"
    ),
}


#: how a summary line names each empty-mask rule (``"one"`` is a rule of :mod:`mambaseg.metrics.score` only)
EMPTY_RULE_NAMES: dict[str, str] = {"transunet": "TransUNet rule", "nan": "nan rule", "one": "one rule"}

# what each rule makes of the HD95 of a class decided by it: pred empty & GT not, GT empty & pred not, both empty
_EMPTY_OUTCOMES: dict[str, dict[str, str]] = {
    "transunet": {"empty_pred": "0", "empty_gt": "0", "both_empty": "0"},
    "nan": {"empty_pred": "inf", "empty_gt": "inf", "both_empty": "left out"},
    "one": {"empty_pred": "inf", "empty_gt": "inf", "both_empty": "0"},
}
_EMPTY_PHRASES = {"empty_pred": "with an empty prediction", "empty_gt": "with an empty ground truth",
                  "both_empty": "with both masks empty"}


def empty_mask_counts(cases: Sequence[Sequence[tuple[int, int]]]) -> dict[str, int]:
    """How many (case, class) HD95 values an empty-mask rule decides, from each case's per-class voxel counts.

    Args:
        cases: per case, one ``(pred_count, gt_count)`` per scored class (foreground voxels of each mask).

    Returns:
        ``{"empty_pred", "empty_gt", "both_empty"}``: (case, class) values with only the prediction empty, only the
        ground truth empty, or both; ``"values"``: all (case, class) values; ``"cases"``; ``"cases_affected"``:
        cases with at least one value decided by the rule; ``"classes"``: classes per case.
    """
    out = {"empty_pred": 0, "empty_gt": 0, "both_empty": 0, "values": 0, "cases": 0, "cases_affected": 0,
           "classes": 0}
    for per_class in cases:
        hit = False
        for n_pred, n_gt in per_class:
            key = ("both_empty" if not n_gt else "empty_pred") if not n_pred else "empty_gt" if not n_gt else None
            if key is not None:
                out[key] += 1
                hit = True
            out["values"] += 1
        out["cases"] += 1
        out["cases_affected"] += hit
        out["classes"] = max(out["classes"], len(per_class))
    return out


def describe_empty_masks(counts: dict[str, int] | None, empty_policy: str, unit: str = "case") -> str:
    """The rule's name and, when it decided any HD95 value, how many and what they count, for a summary line.

    E.g. ``"TransUNet rule: 3 of 10 cases with an empty prediction count 0"``, ``"nan rule: 1 of 10 cases with an
    empty prediction counts inf; 2 with both masks empty are left out"``; several classes: ``"TransUNet rule: 4 of 30
    volume-class pairs with an empty prediction count 0 (in 3 of 10 volumes)"``; nothing decided: the name alone.

    Args:
        counts: :func:`empty_mask_counts` (``None``: the name alone).
        empty_policy: ``"transunet"``, ``"nan"`` or ``"one"``.
        unit: what a case is (``"case"``, ``"volume"``).
    """
    name = EMPTY_RULE_NAMES.get(empty_policy, f"{empty_policy} rule")
    if not counts or not any(counts.get(k, 0) for k in _EMPTY_PHRASES):
        return name
    outcome = _EMPTY_OUTCOMES.get(empty_policy, {})
    several = counts.get("classes", 1) > 1
    noun = f"{unit}-class pairs" if several else f"{unit}s"
    groups: dict[str, list[tuple[int, str]]] = {}
    for key, phrase in _EMPTY_PHRASES.items():
        if counts.get(key, 0):
            groups.setdefault(outcome.get(key, "?"), []).append((int(counts[key]), phrase))
    parts, first = [], True
    for result, items in groups.items():
        words = []
        for n, phrase in items:
            words.append(f"{n} of {counts['values']} {noun} {phrase}" if first else f"{n} {phrase}")
            first = False
        plural = sum(n for n, _ in items) > 1
        verb = (("are" if plural else "is") + " left out") if result == "left out" else \
            f"{'count' if plural else 'counts'} {result}"
        parts.append((", ".join(words[:-1]) + " and " if len(words) > 1 else "") + words[-1] + " " + verb)
    text = f"{name}: " + "; ".join(parts)
    if several:
        text += f" (in {counts['cases_affected']} of {counts['cases']} {unit}s)"
    return text


def check_empty_policy(empty_policy: str) -> str:
    """Validate an empty-mask policy name and return it."""
    if empty_policy not in EMPTY_POLICIES:
        raise ValueError(f"empty_policy must be one of {EMPTY_POLICIES}, got {empty_policy!r}")
    return empty_policy


def _as_bool(x: object, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor without importing torch
        x = x.detach().cpu().numpy()  # type: ignore[union-attr]
    a = np.asarray(x)
    if a.ndim == 0:
        raise ValueError(f"{name} must be an array with at least one dimension, got a scalar")
    return a.astype(bool, copy=False)


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray | None:
    if spacing is None:
        return None
    s = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if s.size == 1:
        s = np.repeat(s, ndim)
    if s.shape != (ndim,):
        raise ValueError(f"spacing must be a scalar or have one value per axis ({ndim}), got {tuple(s.tolist())}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing values must be finite and > 0, got {tuple(s.tolist())}")
    return s


def mask_surface(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Surface voxels of a binary mask: ``mask & ~erode(mask)`` (outside the array counts as background).

    Args:
        mask: boolean array of any dimensionality.
        connectivity: connectivity of the erosion structure (1 = faces only, medpy's default).

    Returns:
        Boolean array of the same shape.
    """
    m = _as_bool(mask, "mask")
    from scipy import ndimage  # imported on use: keeps scipy out of the start of every training run

    structure = ndimage.generate_binary_structure(m.ndim, connectivity)
    return m & ~ndimage.binary_erosion(m, structure=structure, iterations=1, border_value=0)


def _union_crop(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    coords = np.nonzero(a | b)
    return tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)


def surface_distances(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    connectivity: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two non-empty binary masks.

    Args:
        pred: binary mask, any shape (N-D).
        gt: binary mask of the same shape.
        spacing: voxel size per axis (scalar or one per axis); ``None`` = voxel units.
        connectivity: erosion structure connectivity (medpy default 1).

    Returns:
        ``(d_pred_to_gt, d_gt_to_pred)``: 1-D float64 arrays, one distance per surface voxel of ``pred`` (to the
        nearest ``gt`` surface voxel) and per surface voxel of ``gt``, in C order of the voxels.

    Raises:
        ValueError: shape mismatch, bad spacing, or an empty mask.
    """
    p = _as_bool(pred, "pred")
    g = _as_bool(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    sp = _spacing(spacing, p.ndim)
    if not p.any():
        raise ValueError("pred mask is empty: surface distances are undefined (use dice_hd95 with an empty_policy)")
    if not g.any():
        raise ValueError("gt mask is empty: surface distances are undefined (use dice_hd95 with an empty_policy)")
    box = _union_crop(p, g)
    p, g = p[box], g[box]
    ps = mask_surface(p, connectivity)
    gs = mask_surface(g, connectivity)
    from scipy import ndimage

    # distance from every voxel to the nearest surface voxel of the other mask
    dt_g = ndimage.distance_transform_edt(~gs, sampling=sp)
    dt_p = ndimage.distance_transform_edt(~ps, sampling=sp)
    return np.asarray(dt_g[ps], dtype=np.float64), np.asarray(dt_p[gs], dtype=np.float64)


def hd95(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    *,
    percentile: float = 95.0,
    connectivity: int = 1,
) -> float:
    """95th-percentile symmetric Hausdorff distance, medpy's ``hd95`` convention.

    Args:
        pred: binary mask (N-D numpy array or tensor; nonzero = foreground).
        gt: binary mask of the same shape.
        spacing: voxel size per axis; ``None`` -> distances in voxels, otherwise in the units of ``spacing`` (mm).
        percentile: percentile of the pooled distances (95 for HD95, 100 for the Hausdorff distance).
        connectivity: erosion structure connectivity for the surface (medpy default 1).

    Returns:
        The percentile of the concatenated pred->gt and gt->pred surface distances.

    Raises:
        ValueError: if either mask is empty (see :func:`dice_hd95` for the empty-mask policies).
    """
    d1, d2 = surface_distances(pred, gt, spacing=spacing, connectivity=connectivity)
    return float(np.percentile(np.concatenate([d1, d2]), percentile))


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice 2|P∩G| / (|P| + |G|) of two binary masks; NaN when both are empty.

    Args:
        pred: binary mask.
        gt: binary mask of the same shape.
    """
    p = _as_bool(pred, "pred")
    g = _as_bool(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return float("nan")
    return 2.0 * int(np.count_nonzero(p & g)) / denom


def apply_empty_policy(
    pred_count: int, gt_count: int, dice: float, hd: float, empty_policy: str
) -> tuple[float, float]:
    """Map raw per-class results to the final (Dice, HD95) under ``empty_policy``.

    Args:
        pred_count: number of foreground voxels in the prediction.
        gt_count: number of foreground voxels in the ground truth.
        dice: the Dice computed from counts (used when both are non-empty, or under ``"nan"``).
        hd: HD95 when both are non-empty (ignored otherwise).
        empty_policy: ``"transunet"`` or ``"nan"`` (see the module docstring).
    """
    check_empty_policy(empty_policy)
    if pred_count > 0 and gt_count > 0:
        return dice, hd
    if empty_policy == "transunet":
        return (1.0, 0.0) if pred_count > 0 else (0.0, 0.0)
    if pred_count == 0 and gt_count == 0:
        return float("nan"), float("nan")
    return 0.0, float("inf")


def dice_hd95(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    *,
    empty_policy: str = "transunet",
    percentile: float = 95.0,
) -> tuple[float, float]:
    """Dice and HD95 of one binary class with an explicit empty-mask policy.

    Args:
        pred: binary mask.
        gt: binary mask of the same shape.
        spacing: voxel size per axis or ``None`` (voxel units).
        empty_policy: ``"transunet"`` or ``"nan"`` (see the module docstring).
        percentile: HD percentile (95).

    Returns:
        ``(dice, hd95)`` as Python floats (NaN / inf possible under ``"nan"``).
    """
    check_empty_policy(empty_policy)
    p = _as_bool(pred, "pred")
    g = _as_bool(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    npred, ngt = int(p.sum()), int(g.sum())
    d = dice_score(p, g)
    h = hd95(p, g, spacing, percentile=percentile) if npred and ngt else float("nan")
    return apply_empty_policy(npred, ngt, d, h, empty_policy)
