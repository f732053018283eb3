"""``mambaseg demo``: synthetic data -> train ``vmunet_tiny`` on CPU -> evaluate -> ``DIR/metrics.json``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional

import typer

from mambaseg.cli._common import console, handle_errors
from mambaseg.cli.threads import THREADS_HELP, apply_threads

#: files and folders a previous demo run left in DIR (removed before a new run; nothing else is touched)
_RUN_OUTPUTS = ("checkpoints", "tb", "metrics.json", "history.json", "progress.png", "train.log", "config.yaml")


@handle_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Output folder (data/ and the run files)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (default: the demo recipe's)."),
    device: str = typer.Option("cpu", "--device", help="cpu (default), auto, cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic data and of training."),
    n_train: int = typer.Option(64, "--n-train", help="Synthetic training images."),
    n_val: int = typer.Option(16, "--n-val", help="Synthetic validation images."),
    target: float = typer.Option(0.85, "--target-dice", help="Stop after the epoch whose validation Dice reaches this."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    threads: str = typer.Option("auto", "--threads", help=THREADS_HELP),
) -> None:
    """Train vmunet_tiny on synthetic blobs and report the validation Dice (writes DIR/metrics.json).

    Training stops after the epoch whose validation Dice reaches --target-dice, or after --epochs epochs, whichever
    comes first (never on wall-clock time, so the result does not depend on how busy the machine is); the best
    validation checkpoint is reported.
    """
    from mambaseg.configs import apply_overrides, load_recipe
    from mambaseg.data import make_synthetic_dataset
    from mambaseg.engine import train as run_training

    apply_threads(threads, device)
    t0 = time.perf_counter()
    cfg = load_recipe("demo")
    size = tuple(cfg.data.image_size)
    data_dir = out / "data"
    console.print(f"[bold]mambaseg demo[/bold]: writing {n_train}+{n_val} synthetic images to {data_dir}",
                  highlight=False)
    make_synthetic_dataset(data_dir, n_train=n_train, n_val=n_val, size=size, seed=seed)
    for name in _RUN_OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    sets = [f"data.path={data_dir}", f"train.out={out}", f"train.device={device}", f"train.seed={seed}"]
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    cfg = apply_overrides(cfg, sets)
    console.print(f"training {cfg.model.name} for up to {cfg.train.epochs} epochs at {size[0]}x{size[1]} on "
                  f"{device} (stops early once the validation Dice reaches {target:g})", highlight=False)

    def enough(state: dict) -> str:
        dice = (state.get("metrics") or {}).get("dice")
        if dice is not None and dice >= target and state["history"][-1].get("val") is not None:
            return f"validation Dice {dice:.4f} reached the demo's target {target:g}"
        return ""

    result = run_training(cfg, console=console, callbacks=[enough], show_progress=not no_progress)
    dice = float(result.metrics.get("dice", float("nan")))
    secs = time.perf_counter() - t0
    verdict = "[green]reached[/green]" if dice >= target else "[red]below[/red]"
    console.print(f"demo done in {secs:.0f} s: validation Dice {dice:.4f} ({verdict} the {target:g} target); "
                  f"metrics in {out / 'metrics.json'}, curves in {out / 'progress.png'}")
