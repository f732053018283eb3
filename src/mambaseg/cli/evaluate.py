"""``mambaseg evaluate``: metrics of a checkpoint on a dataset split, with the training preprocessing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mambaseg.cli._common import console, handle_errors
from mambaseg.cli.threads import THREADS_HELP, apply_threads


@handle_errors
def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-k", help="best.pt / last.pt / best.safetensors of a run."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Dataset path (default: the one the run used)."),
    split: str = typer.Option("val", "--split", help="Split to evaluate: val, test or train."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for metrics.json."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Evaluation batch size."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    threads: str = typer.Option("auto", "--threads", help=THREADS_HELP),
) -> None:
    """Evaluate a checkpoint (pooled and per-case Dice/IoU/Acc/Sen/Spe; the run's evaluator for other tasks)."""
    from mambaseg.engine import evaluate_checkpoint

    apply_threads(threads, device)
    result = evaluate_checkpoint(checkpoint, data, split=split, out=out, device=device, batch_size=batch_size,
                                 console=None if as_json else console)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        console.print(summary_line(split, result) + (f"  -> {Path(out) / 'metrics.json'}" if out else ""),
                      highlight=False)


def summary_line(split: str, result: dict) -> str:
    """One line of the headline numbers the evaluator produced: pooled and per-case Dice/IoU of 2-D images, mean
    per-volume Dice and HD95 (with each class's Dice) of volumes."""

    def num(key: str, spec: str = ".4f") -> str:
        v = result.get(key)
        return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"

    if "n_volumes" in result:
        classes = result.get("classes") or {}
        per_class = "  ".join(f"{name} {vals['dice']:.4f}" for name, vals in classes.items()
                              if isinstance(vals.get("dice"), (int, float)))
        units = f" {result.get('hd95_units')}" if result.get("hd95_units") else ""
        return (f"{split}: mean dice {num('dice')}  mean hd95 {num('hd95', '.2f')}{units}"
                + (f"  ({per_class})" if per_class else "") + f"  ({result['n_volumes']} volumes)")
    return (f"{split}: dice {num('dice')}  iou {num('iou')}  per-case dice {num('per_case_dice')}  "
            f"({result.get('n_images', 'n/a')} images)")
