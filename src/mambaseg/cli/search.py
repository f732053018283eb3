"""``mambaseg search``: SliceMamba architecture search (SPOS supernet + evolutionary search) -> ``OUT/arch.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mambaseg.cli._common import CLIError, console, given_options, handle_errors, parse_image_size
from mambaseg.cli.threads import THREADS_HELP, apply_threads


@handle_errors
def search(
    data: Optional[str] = typer.Option(
        None, "--data", "-d", help=(
            "Dataset: a 2-D folder ROOT/{train,val}/{images,masks}, an ACDC (SSL4MIS h5), Synapse (TransUNet "
            "npz/h5) or nnU-Net raw folder, or a `mambaseg cache` .npz; the layout is detected (README: Data layouts)."
        ),
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (an existing one is resumed)."),
    supernet_epochs: int = typer.Option(300, "--supernet-epochs", help="SPOS supernet training epochs."),
    generations: int = typer.Option(20, "--generations", help="Evolution generations."),
    population: int = typer.Option(50, "--population", help="Candidates per generation."),
    select_num: int = typer.Option(10, "--select-num", help="Parent pool size (top-k of all scored)."),
    mutation_num: Optional[int] = typer.Option(
        None, "--mutation-num", help="Mutants per generation (default population/2).",
    ),
    crossover_num: Optional[int] = typer.Option(
        None, "--crossover-num", help="Crossover children per generation (default population/2).",
    ),
    mutation_prob: float = typer.Option(0.1, "--mutation-prob", help="Per-gene mutation probability."),
    search_fraction: float = typer.Option(
        0.2, "--search-fraction", help="Fraction of train carved out as the search split.",
    ),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="Size: S or H,W (recipe default 256)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Supernet training batch size."),
    eval_batch_size: Optional[int] = typer.Option(
        None, "--eval-batch-size", help="Batch size of validation and fitness evaluation.",
    ),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Cap on supernet optimizer steps."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Supernet peak learning rate."),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Seed of training, search split, path sampler and evolution.",
    ),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="DataLoader workers."),
    supernet_time_limit: Optional[float] = typer.Option(
        None, "--supernet-time-limit", help="Stop supernet training after the epoch that passes this many seconds.",
    ),
    search_time_limit: Optional[float] = typer.Option(
        None, "--search-time-limit", help="Stop the evolution after the generation that passes this many seconds.",
    ),
    save_every: int = typer.Option(
        1, "--save-every", help="Write the supernet checkpoints every N epochs (and at the end).",
    ),
    keep_supernet: bool = typer.Option(
        False, "--keep-supernet", help="Keep the supernet's checkpoints (supernet/last.pt, best.pt: 2.1 GB at the "
        "default width) after a finished search; by default only the found network (checkpoints/best.pt) remains.",
    ),
    recipe: str = typer.Option("slicemamba_polyp", "--recipe", "-r", help="Recipe giving optimizer/schedule/loss."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file instead of the recipe."),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="Override any config field: section.field=value (repeatable).",
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    threads: str = typer.Option("auto", "--threads", help=THREADS_HELP),
) -> None:
    """Search a SliceMamba architecture; writes OUT/arch.json, OUT/search_log.jsonl and the found network.

    The found network (weights inherited from the supernet) is OUT/checkpoints/best.pt, a normal checkpoint for
    `mambaseg predict/evaluate --checkpoint` and `--init-from`. A finished search deletes the supernet's checkpoints
    (OUT/supernet/last.pt, best.pt) unless --keep-supernet; an interrupted or time-limited one keeps them to resume.
    Retrain the result with `mambaseg train --model slicemamba --arch OUT/arch.json --data ...`.
    """
    from rich.table import Table

    from mambaseg.configs import apply_overrides, load_config, load_recipe
    from mambaseg.nas.evolution import EvolutionConfig
    from mambaseg.nas.runner import SUBNET_CHECKPOINT, SUPERNET_CHECKPOINTS, SearchSettings, run_search

    cfg = load_config(config) if config is not None else load_recipe(recipe)
    _check_slicemamba(cfg.model.name, f"--config {config}" if config is not None else f"--recipe {recipe}")
    explicit = given_options({
        "train.out": str(out),
        "data.path": None if data is None else str(data),
        "data.image_size": parse_image_size(image_size),
        "train.batch_size": batch_size,
        "train.val_batch_size": eval_batch_size,
        "train.max_steps": max_steps,
        "optim.lr": lr,
        "train.seed": seed,
        "train.device": device,
        "data.num_workers": num_workers,
    })
    cfg = apply_overrides(cfg, explicit)
    if overrides:
        cfg = apply_overrides(cfg, list(overrides))
        _check_slicemamba(cfg.model.name, "--set model.name")
    if cfg.data.path is None:
        raise CLIError("no dataset given: pass --data PATH")
    apply_threads(threads, cfg.train.device)
    if supernet_epochs < 1:
        raise CLIError(f"--supernet-epochs must be >= 1, got {supernet_epochs}")
    evo = EvolutionConfig(generations=generations, population=population, select_num=select_num,
                          mutation_num=mutation_num, crossover_num=crossover_num, mutation_prob=mutation_prob,
                          seed=int(cfg.train.seed))
    evo.resolved()  # check the values before any work
    settings = SearchSettings(supernet_epochs=supernet_epochs, evolution=evo, search_fraction=search_fraction,
                              eval_batch_size=eval_batch_size, model_kwargs=dict(cfg.model.kwargs or {}),
                              progress=not no_progress, save_every=save_every,
                              supernet_time_limit_s=supernet_time_limit, search_time_limit_s=search_time_limit,
                              keep_supernet=keep_supernet)
    result = run_search(cfg, settings, out, log=lambda m: console.print(m, highlight=False), console=console)
    table = Table(title="SliceMamba search result", show_header=False)
    table.add_row("architecture", " ".join(str(g) for g in result["arch"]))
    table.add_row("slices (m, n)", " ".join(f"{m}x{n}" for m, n in result["slices"]))
    fit, split = result["fitness"], result["search_split"]
    table.add_row("search fitness", f"pooled IoU {fit['iou']:.4f}, pooled DSC {fit['dsc']:.4f}")
    table.add_row("candidates scored", str(result["num_evaluated"]))
    table.add_row("search split", f"{split['n_search']} images (seed {split['seed']})")
    table.add_row("written", str(Path(out) / "arch.json"))
    net_ckpt = Path(out) / result.get("checkpoint", SUBNET_CHECKPOINT)
    if net_ckpt.is_file():
        table.add_row("found network", f"{net_ckpt} ({_size(net_ckpt)}, weights inherited from the supernet)")
    kept = [Path(out) / rel for rel in SUPERNET_CHECKPOINTS if (Path(out) / rel).is_file()]
    if kept:
        why = "--keep-supernet" if result.get("finished") else "search not finished: run it again to resume"
        table.add_row("supernet checkpoints", ", ".join(f"{p} ({_size(p)})" for p in kept) + f" kept ({why})")
    else:
        table.add_row("supernet checkpoints", "removed (search finished; --keep-supernet keeps them)")
    console.print(table)
    console.print(f"retrain: mambaseg train --model slicemamba --arch {Path(out) / 'arch.json'} --data {cfg.data.path}",
                  highlight=False)
    if net_ckpt.is_file():
        console.print(f"use as is: mambaseg predict --checkpoint {net_ckpt} --input IMAGES --out PRED", highlight=False)


def _check_slicemamba(model: str, source: str) -> None:
    """Refuse a run config whose model is not a SliceMamba: the search is over SliceMamba's scan genes."""
    from mambaseg.models import list_models

    if model in list_models("slicemamba*"):
        return
    from mambaseg.cli.recipes import recipe_rows

    valid = [r["name"] for r in recipe_rows() if r["model"] in list_models("slicemamba*")]
    raise CLIError(f"{source} gives the model {model!r}, but mambaseg search searches SliceMamba's scan genes: "
                   f"use a SliceMamba recipe, --recipe {' or '.join(valid)}")


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"
