"""``mambaseg score``: score any model's mask files against ground-truth masks (files matched by stem)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mambaseg.cli._common import CLIError, console, handle_errors

#: how ``score`` reads masks of several classes (named when a mask read as binary holds other values)
_MULTICLASS_HINT = ("masks of several classes are scored with --label-values, the pixel value of each class index "
                    "from the background on, e.g. --label-values 0,1,2")


def _floats(text: Optional[str], what: str) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{what} must be a number or comma-separated numbers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise CLIError(f"{what} must be positive, got {text!r}")
    return vals


@handle_errors
def score(
    pred_dir: Path = typer.Argument(..., help="Folder of predicted masks or label volumes (NIfTI, h5, npz, npy), "
                                    "or a folder with masks/ inside."),
    gt_dir: Path = typer.Argument(..., help="Folder of ground-truth masks or label volumes (or a dataset split with "
                                  "masks/ inside)."),
    spacing: Optional[str] = typer.Option(None, "--spacing", help="Pixel size (one number, or H,W; volumes: D,H,W) "
                                          "for HD95 and NSD; default: pixel units, for volumes each ground truth's "
                                          "own voxel spacing where its file has one (NIfTI header)."),
    nsd_tolerance: float = typer.Option(2.0, "--nsd-tolerance", help="NSD tolerance, in the units of --spacing "
                                        "(pixels without it)."),
    empty_policy: str = typer.Option("auto", "--empty-policy", help="Empty masks: auto (default: the rule evaluate "
                                     "uses, transunet for volumes, one for 2-D images), transunet (the papers' rule: "
                                     "an empty prediction scores Dice 0, HD95 0, NSD 0; a prediction without ground "
                                     "truth Dice 1, HD95 0, NSD 1), nan (nnU-Net/MONAI: "
                                     "both empty left out of the means, one empty Dice 0, HD95 inf, NSD 0) or one "
                                     "(both empty a perfect case, one empty as nan). The summary says how many cases "
                                     "the rule decided."),
    label_values: Optional[str] = typer.Option(None, "--label-values", help="Multi-class masks: the pixel value of "
                                               "each class index, e.g. 0,85,170,255 (default: binary 0/255 or 0/1; "
                                               "volumes: class indices 0 .. the largest in the ground truth)."),
    only_predicted: bool = typer.Option(False, "--only-predicted", help="Score only the cases that have a "
                                        "prediction (ground truths without one are counted and listed in the "
                                        "result, not scored); default: every ground truth needs a prediction."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the scores as JSON to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Pooled and per-case Dice/IoU, HD95 and NSD of predicted masks against ground truth, worst cases listed."""
    from mambaseg.data.files import holds_volumes, mask_to_labels, match_mask_files, read_mask
    from mambaseg.metrics.score import SCORE_EMPTY_POLICIES, score_cases

    if empty_policy not in SCORE_EMPTY_POLICIES:
        raise CLIError(f"--empty-policy must be one of {', '.join(SCORE_EMPTY_POLICIES)}, got {empty_policy!r}")
    if not nsd_tolerance >= 0:
        raise CLIError(f"--nsd-tolerance must be >= 0, got {nsd_tolerance}")
    sp = _floats(spacing, "--spacing")
    values = None
    if label_values is not None:
        try:
            values = [int(v) for v in label_values.split(",") if v.strip()]
        except ValueError:
            raise CLIError(f"--label-values must be comma-separated integers, got {label_values!r}") from None
        if len(values) < 2:
            raise CLIError("--label-values needs the value of the background and of at least one class")
    binary = values is None
    unpredicted: Optional[list[Path]] = [] if only_predicted else None
    if holds_volumes(gt_dir) or holds_volumes(pred_dir):
        result = _score_volumes(pred_dir, gt_dir, spacing=sp, nsd_tolerance=nsd_tolerance, empty_policy=empty_policy,
                                values=values, unpredicted=unpredicted)
        return _report(result, pred_dir, gt_dir, out, as_json, nsd_tolerance, empty_policy, unpredicted)
    pairs = match_mask_files(pred_dir, gt_dir, unpredicted=unpredicted)

    def labels(f: Path) -> Any:
        return mask_to_labels(read_mask(f), binary=binary, label_values=values, path=f,
                              lossy=f.suffix.lower() in (".jpg", ".jpeg"), multiclass_hint=_MULTICLASS_HINT)

    def cases():
        for case, p, g in pairs:
            pred, gt = labels(p), labels(g)
            if pred.shape != gt.shape:
                raise CLIError(f"{p} is {pred.shape[1]}x{pred.shape[0]} (WxH) but its ground truth {g} is "
                               f"{gt.shape[1]}x{gt.shape[0]}; expected the same size")
            yield case, pred, gt

    result = score_cases(cases(), num_classes=1 if binary else len(values), spacing=sp if sp is None or len(sp) > 1
                         else sp[0], nsd_tolerance=nsd_tolerance, empty_policy=empty_policy)
    _report(result, pred_dir, gt_dir, out, as_json, nsd_tolerance, empty_policy, unpredicted)


def _report(result: dict, pred_dir: Path, gt_dir: Path, out: Optional[Path], as_json: bool, nsd_tolerance: float,
            empty_policy: str, unpredicted: Optional[list[Path]] = None) -> None:
    from mambaseg.utils.files import atomic_write_json, json_text

    result = {"pred_dir": str(pred_dir), "gt_dir": str(gt_dir), **result}
    if unpredicted is not None:  # --only-predicted: what was left out is part of the result
        result["unpredicted_ground_truth"] = {"count": len(unpredicted), "files": [str(f) for f in unpredicted]}
    if out is not None:
        atomic_write_json(out, result)
    if as_json:
        typer.echo(json_text(result))  # strict JSON: undefined (NaN) -> null
        return
    from mambaseg.metrics.hd95 import describe_empty_masks

    worst = ", ".join(f"{w['id']} {w['dice']:.3f}" for w in result["worst"][:5])
    rule = (result.get("empty_masks") or {}).get("note") or describe_empty_masks(
        None, result["conventions"].get("empty_policy", empty_policy))
    console.print(f"{result['n_cases']} cases: pooled dice {result['dice']:.4f}  iou {result['iou']:.4f}  per-case "
                  f"dice {result['per_case_dice']:.4f}  HD95 {_num(result['hd95'])}  NSD@{nsd_tolerance:g} "
                  f"{_num(result['nsd'], '.4f')} ({result['conventions']['units']}; {rule}); worst: {worst}"
                  + (f"\n{len(unpredicted)} ground truth(s) without a prediction not scored (--only-predicted)"
                     if unpredicted else "")
                  + (f"\n-> {out}" if out else ""), highlight=False)


def _num(v: Any, spec: str = ".2f") -> str:
    """A JSON-ready number for a summary line: a float formatted, ``"inf"`` as it is, ``None`` (NaN) as n/a."""
    return format(v, spec) if isinstance(v, float) else "n/a" if v is None else str(v)


def _score_volumes(pred_dir: Path, gt_dir: Path, *, spacing: Optional[list[float]], nsd_tolerance: float,
                   empty_policy: str, values: Optional[list[int]], unpredicted: Optional[list[Path]] = None) -> dict:
    """Label volumes (NIfTI, h5, npz, npy) paired by case id, scored per volume: each ground truth's own voxel
    spacing (NIfTI header, npz ``spacing``) unless ``--spacing`` is given; classes = ``--label-values`` or
    0 .. the largest value of the ground truth (read once before scoring)."""
    import numpy as np

    from mambaseg.data.files import mask_to_labels, match_mask_files
    from mambaseg.inference.volume import read_label_volume
    from mambaseg.metrics.score import score_cases

    if spacing is not None and len(spacing) not in (1, 3):
        raise CLIError(f"--spacing for volumes is one number or three (D,H,W), got {len(spacing)}")
    pairs = match_mask_files(pred_dir, gt_dir, volumes=True, unpredicted=unpredicted)
    rule = "--label-values"
    if values is None:
        seen = sorted(set().union(*(np.unique(read_label_volume(g)[0]).tolist() for _, _, g in pairs)))
        values = list(range(max(seen[-1], 1) + 1))
        if set(seen) != set(values[: len(seen)]) or len(seen) < 2:
            raise CLIError(f"the ground-truth volumes hold the values {seen[:10]}, not class indices 0..K-1; name "
                           f"the value of each class with --label-values (e.g. {','.join(map(str, seen[:4]))})")
        rule = "class indices 0 .. the largest value in the ground truth"
    fixed = None if spacing is None else spacing[0] if len(spacing) == 1 else tuple(spacing)

    def labels(path: Path) -> tuple:
        arr, sp = read_label_volume(path)
        return mask_to_labels(arr, binary=False, label_values=values, path=path), sp

    def cases():
        for case, p, g in pairs:
            (pred, p_sp), (gt, g_sp) = labels(p), labels(g)
            if pred.shape != gt.shape:
                raise CLIError(f"{p} is {pred.shape} (D, H, W) but its ground truth {g} is {gt.shape}; expected "
                               "the same size")
            if p_sp is not None and g_sp is not None and not all(abs(a - b) <= 1e-3 * max(abs(b), 1e-6)
                                                                  for a, b in zip(p_sp, g_sp)):
                raise CLIError(f"{p} has voxel spacing {p_sp} but its ground truth {g} has {g_sp}; expected the same "
                               "geometry")
            yield case, pred, gt, None if fixed is not None else g_sp

    result = score_cases(cases(), num_classes=len(values), spacing=fixed, nsd_tolerance=nsd_tolerance,
                         empty_policy=empty_policy)
    result["conventions"]["label_values"] = {"values": values, "rule": rule}
    return result
