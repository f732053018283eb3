"""``mambaseg evaluate``: metrics of a checkpoint on a dataset split, with the training preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mambaseg.cli._common import (
    FOLD_CHECKPOINT_HELP,
    CLIError,
    console,
    err_console,
    handle_errors,
    warnings_as_lines,
)
from mambaseg.cli.threads import THREADS_HELP, apply_threads


@handle_errors
def evaluate(
    checkpoint: Optional[list[Path]] = typer.Option(None, "--checkpoint", "-k", help="best.pt / last.pt / "
                                                    "best.safetensors of a run; repeat it (or name a CV root) to "
                                                    "average the probabilities of several."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Dataset path (default: the one the run used)."),
    split: str = typer.Option("val", "--split", help="Split to evaluate: val, test or train."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for metrics.json."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Evaluation batch size."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    tta: str = typer.Option("none", "--tta", help="Test-time augmentation: none or flip (mirrorings averaged in "
                            "probability space)."),
    cv: Optional[list[Path]] = typer.Option(None, "--cv", help="Score the pooled out-of-fold predictions of a "
                                            "cross-validation root (writes ROOT/cv_metrics.json) instead of a "
                                            "checkpoint; repeat it (e.g. one recipe's seeds, same folds) to score "
                                            "their saved probabilities averaged (needs --out)."),
    compare: bool = typer.Option(False, "--compare", help="With --cv named two or more times: score each root, "
                                 "each pair and all of them as ensembles, and rank them (OUT/compare.json; needs "
                                 "--out). The best is chosen on the scored cases: its number is optimistic."),
    oof: str = typer.Option("last", "--oof", help="With --cv: the fold checkpoint whose predictions are scored: last "
                            "(no selection) or best (chosen on the held-out fold: optimistic)."),
    postprocess: str = typer.Option("none", "--postprocess", help="Post-process each predicted mask (whole volume) "
                                    "before the metrics: none, or a comma-separated list of largest_component and "
                                    "fill_holes; choosing it by the result selects on the scored cases."),
    fold_checkpoint: str = typer.Option("last", "--fold-checkpoint", help=FOLD_CHECKPOINT_HELP),
    threads: str = typer.Option("auto", "--threads", help=THREADS_HELP),
) -> None:
    """Evaluate a checkpoint (pooled and per-case Dice/IoU/Acc/Sen/Spe; the run's evaluator for other tasks), an
    ensemble of checkpoints, or (--cv) the out-of-fold predictions of a cross-validation."""
    from mambaseg.engine import evaluate_checkpoint

    apply_threads(threads, device)
    if compare:
        if not cv or len(cv) < 2 or out is None:
            raise CLIError("--compare ranks two or more cross-validations: name each with --cv and pass --out FOLDER")
        return _compare(cv, oof=oof, data=data, out=out, tta=tta, device=device, as_json=as_json,
                        postprocess=postprocess)
    if cv:
        if len(cv) > 1 and out is None:
            raise CLIError("--cv named more than once scores an ensemble: pass --out FOLDER for its cv_metrics.json")
        return _evaluate_cv(cv if len(cv) > 1 else cv[0], oof=oof, data=data, out=out, tta=tta, device=device,
                            as_json=as_json, postprocess=postprocess)
    if not checkpoint:
        raise CLIError("pass --checkpoint CKPT (repeatable) or --cv ROOT")
    with warnings_as_lines():
        result = evaluate_checkpoint(checkpoint if len(checkpoint) > 1 else checkpoint[0], data, split=split,
                                     out=out, device=device, batch_size=batch_size,
                                     console=None if as_json else console, tta=tta, postprocess=postprocess,
                                     fold_checkpoint=fold_checkpoint)
    if as_json:
        from mambaseg.utils.files import json_text

        typer.echo(json_text(result))  # strict JSON: undefined (NaN) -> null
    else:
        console.print(summary_line(split, result) + (f"  -> {Path(out) / 'metrics.json'}" if out else ""),
                      highlight=False)


def _evaluate_cv(root: Path | list[Path], *, oof: str, data: Optional[str], out: Optional[Path], tta: str, device: str,
                 as_json: bool, postprocess: str = "none") -> None:
    """``--cv ROOT``: pooled out-of-fold metrics of every fold, worst cases listed."""
    import json

    from mambaseg.engine.crossval import evaluate_cv

    target = Path(out or root) / "cv_metrics.json"
    try:  # what the file held, to say so when this call replaces another variant's scores
        before = json.loads(target.read_text()) if target.is_file() else None
    except (OSError, ValueError):
        before = None
    with warnings_as_lines():  # e.g. held-out volumes scored in voxels beside others in mm
        result = evaluate_cv(root, which=oof, data=data, out=out, tta=tta, device=device, postprocess=postprocess)
    variant = ("checkpoint", "tta", "postprocess")
    if isinstance(before, dict) and [before.get(k) for k in variant] != [result.get(k) for k in variant]:
        was = ", ".join(f"{k} {before.get(k) or 'none'}" for k in variant)
        err_console.print(f"note: {target} held the scores of another variant ({was}) and now holds these; pass "
                          "--out FOLDER to keep each variant's", highlight=False, markup=False)
    if as_json:
        from mambaseg.utils.files import json_text

        typer.echo(json_text(result))  # strict JSON: undefined (NaN) -> null
        return
    worst = ", ".join(f"{w['id']} {w['dice']:.3f}" for w in result["worst"][:5])
    members = f", ensemble of {result['members']} cross-validations" if result.get("members") else ""
    members += f", post-processed: {'+'.join(result['postprocess'])}" if result.get("postprocess") else ""
    if result.get("unit"):  # volumes: the per-volume mean first, as evaluate reports a volumetric split
        per_class = result["per_case"]
        classes = "  ".join(f"{n} {v:.4f}" for n, v in zip(per_class["classes"], per_class["per_class"]["dsc"])
                            if n in per_class["foreground_classes"])
        hd = f"{result['hd95']:.2f}" if isinstance(result["hd95"], float) else str(result["hd95"])
        rule = _rule_words(result.get("empty_masks"), result["conventions"].get("empty_policy"), "volume")
        scores = (f"mean per-volume dice {result['per_case_dice']:.4f} ({classes})  hd95 {hd} "
                  f"({result['conventions']['units']}{'; ' + rule if rule else ''})  pooled dice "
                  f"{result['dice']:.4f}")
    else:
        scores = (f"pooled dice {result['dice']:.4f}  iou {result['iou']:.4f}  per-case dice "
                  f"{result['per_case_dice']:.4f}")
    console.print(f"{result['k']}-fold out-of-fold ({result['n_cases']} cases, {oof} checkpoints, tta {result['tta']}"
                  f"{members}): {scores}; {result['n_below']['count']} case(s) below "
                  f"{result['n_below']['threshold']:g}; worst: {worst}\n-> {Path(out or root) / 'cv_metrics.json'}",
                  highlight=False)


def _compare(roots: list[Path], *, oof: str, data: Optional[str], out: Path, tta: str, device: str, as_json: bool,
             postprocess: str) -> None:
    """``--cv A --cv B ... --compare``: every root, pair and all of them, ranked by one criterion."""
    from rich.table import Table

    from mambaseg.engine.compare import compare_cv

    result = compare_cv(roots, out, which=oof, tta=tta, data=data, postprocess=postprocess, device=device)
    if as_json:
        from mambaseg.utils.files import json_text

        typer.echo(json_text(result))  # strict JSON: undefined (NaN) -> null
        return
    table = Table(title=f"out-of-fold, ranked by {result['criterion_described']}")
    threshold = result["ranking"][0]["below_threshold"]
    table.add_column("rank", justify="right")
    table.add_column("candidate", overflow="fold")
    for col in ("pooled dice", "per-case dice", f"< {threshold:g}"):
        table.add_column(col, justify="right")
    table.add_column("worst")
    for rank, r in enumerate(result["ranking"], 1):
        worst = f"{r['worst']['id']} {r['worst']['dice']:.3f}" if r["worst"] else "-"
        table.add_row(str(rank), r["candidate"], f"{r['pooled_dice']:.4f}", f"{r['per_case_dice']:.4f}",
                      str(r["n_below"]), worst)
    table.caption = result["selection_note"]
    console.print(table)
    console.print(f"-> {out / 'compare.json'}", highlight=False)


def summary_line(split: str, result: dict) -> str:
    """One line of the headline numbers the evaluator produced: pooled and per-case Dice/IoU of 2-D images, mean
    per-volume Dice and HD95 (with each class's Dice) of volumes; the HD95 names its empty-mask rule and how many
    (volume, class) values that rule decided (e.g. ``mean hd95 41.70 mm (TransUNet rule: 3 of 10 volumes with an
    empty prediction count 0)``)."""

    def num(key: str, spec: str = ".4f") -> str:
        v = result.get(key)
        return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"

    if "n_volumes" in result:
        classes = result.get("classes") or {}
        per_class = "  ".join(f"{name} {vals['dice']:.4f}" for name, vals in classes.items()
                              if isinstance(vals.get("dice"), (int, float)))
        units = f" {result.get('hd95_units')}" if result.get("hd95_units") else ""
        rule = _rule_words(result.get("empty_masks"), result.get("empty_policy"), "volume")
        units += f" ({rule})" if rule else ""
        return (f"{split}: mean dice {num('dice')}  mean hd95 {num('hd95', '.2f')}{units}"
                + (f"  ({per_class})" if per_class else "") + f"  ({result['n_volumes']} volumes)")
    return (f"{split}: dice {num('dice')}  iou {num('iou')}  per-case dice {num('per_case_dice')}  "
            f"({result.get('n_images', 'n/a')} images)")


def _rule_words(empty_masks: Optional[dict], policy: Optional[str], unit: str) -> str:
    """The empty-mask rule of an HD95 summary and the count it decided, in ``unit`` s
    (:func:`~mambaseg.metrics.hd95.describe_empty_masks`); the result's own note when it names no policy; ``""`` for
    a result that names neither (written before results recorded them)."""
    from mambaseg.metrics.hd95 import describe_empty_masks

    if policy:
        return describe_empty_masks(empty_masks, policy, unit)
    return str((empty_masks or {}).get("note") or "")
