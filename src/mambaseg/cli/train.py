"""``mambaseg train``: train a model on a dataset (recipe / config file / options, all overridable)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Optional

import typer

from mambaseg.cli._common import CLIError, console, given_options, handle_errors, parse_image_size, read_arch
from mambaseg.cli.threads import THREADS_HELP, apply_threads


def _auto_recipe(model: Optional[str], data: Optional[str]) -> Optional[str]:
    """The shipped recipe ``<model>_<dataset family>`` (e.g. ``msvmunet_acdc``) when neither --recipe nor --config
    is given and one exists for the data's layout; ``None`` otherwise."""
    if model is None or data is None:
        return None
    from mambaseg.configs import list_recipes
    from mambaseg.data.layouts import dataset_family

    family = dataset_family(data)
    name = f"{model}_{family}" if family else None
    return name if name is not None and name in list_recipes() else None


def build_config(
    *,
    recipe: Optional[str] = None,
    config: Optional[Path] = None,
    resume_from: Optional[Path] = None,
    model: Optional[str] = None,
    data: Optional[str] = None,
    epochs: Optional[int] = None,
    max_steps: Optional[int] = None,
    batch_size: Optional[int] = None,
    image_size: Optional[str] = None,
    lr: Optional[float] = None,
    seed: Optional[int] = None,
    out: Optional[str] = None,
    device: Optional[str] = None,
    arch: Optional[str] = None,
    compile_model: bool = False,
    init_from: Optional[str] = None,
    overrides: Optional[list[str]] = None,
):
    """Resolve the run config: base (checkpoint being resumed > --config > --recipe > defaults), then the
    explicit options, then ``--set`` overrides (last wins)."""
    from mambaseg.configs import RunConfig, apply_overrides, config_from_dict, load_config, load_recipe
    from mambaseg.checkpoint import load_checkpoint

    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
        cfg = config_from_dict(ckpt.get("config") or {})
    elif config is not None:
        cfg = load_config(config)
    elif recipe is not None:
        cfg = load_recipe(recipe)
    elif (auto := _auto_recipe(model, data)) is not None:
        console.print(f"using the shipped recipe {auto!r} for model {model!r} on this dataset", highlight=False)
        cfg = load_recipe(auto)
    else:
        cfg = RunConfig()
    explicit = given_options({
        "model.name": model,
        "data.path": None if data is None else str(data),
        "train.epochs": epochs,
        "train.max_steps": max_steps,
        "train.batch_size": batch_size,
        "data.image_size": parse_image_size(image_size),
        "optim.lr": lr,
        "train.seed": seed,
        "train.out": None if out is None else str(out),
        "train.device": device,
        **_searched(read_arch(arch)),
        "train.compile": True if compile_model else None,
        "train.init_from": None if init_from is None else str(init_from),
    })
    cfg = apply_overrides(cfg, explicit)
    if overrides:
        cfg = apply_overrides(cfg, list(overrides))
    return cfg


def _searched(found: Any) -> dict[str, Any]:
    """The options an ``--arch`` file sets: ``model.arch`` (its genes, as the search's own network checkpoint records
    them; the search's bookkeeping stays in the file) and, for a search's ``arch.json``, ``model.kwargs``: the widths
    and depths the supernet was built with, without which the genes do not fit the network (``--set
    model.kwargs...`` still overrides them)."""
    if found is None:
        return {}
    if not isinstance(found, dict) or "arch" not in found:
        return {"model.arch": found}  # checked, with its message, where the model is built
    out: dict[str, Any] = {"model.arch": found["arch"]}
    if found.get("model_kwargs"):
        out["model.kwargs"] = dict(found["model_kwargs"])
    return out


@handle_errors
def train(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name (see `mambaseg models`)."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=(
        "Dataset: a 2-D folder ROOT/{train,val}/{images,masks}, an ACDC (SSL4MIS h5), Synapse (TransUNet "
        "npz/h5) or nnU-Net raw folder, or a `mambaseg cache` .npz; the layout is detected (README: Data layouts)."
    )),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Number of epochs."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Global batch size."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="Training size: S or H,W."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<model>_<time>)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from checkpoints/last.pt."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file (e.g. a run's config.yaml)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="JSON file whose content is passed to the model as arch=."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Shipped recipe name (e.g. vmunet_ph2)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override any config field: "
                                                  "section.field=value (repeatable)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars (per-epoch lines only)."),
    compile_model: bool = typer.Option(False, "--compile", help="Train through torch.compile (train.compile; "
                                       "the first steps compile for minutes)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Start from the weights of a checkpoint "
                                            "(ours or converted; train.init_from): what fits is loaded, another "
                                            "head is re-initialised, a report is printed."),
    folds: Optional[int] = typer.Option(None, "--folds", help="K-fold cross-validation over the train + val cases "
                                        "(images, or volumes of a volumetric layout; one patient's _frameNN phases "
                                        "in one fold): --out is the CV root (splits_final.json, fold_i/ runs, "
                                        "out-of-fold predictions); folds drawn with data.split_seed."),
    fold: Optional[str] = typer.Option(None, "--fold", help="With --folds: the fold to train (0..K-1) or 'all' (in "
                                       "sequence; the default)."),
    tta: str = typer.Option("none", "--tta", help="With --folds: also predict the held-out cases with this test-time "
                            "augmentation (none or flip), saved as oof/<ckpt>_tta_<tta> and scored by evaluate --cv "
                            "--tta without the checkpoints."),
    threads: str = typer.Option("auto", "--threads", help=THREADS_HELP),
) -> None:
    """Train a model; writes config.yaml, metrics.json, checkpoints/, progress.png, train.log and TensorBoard events."""
    from mambaseg.engine import train as run_training

    if folds is None and tta != "none":
        raise CLIError("--tta applies to cross-validation (--folds K); use it with predict or evaluate otherwise")
    if folds is None and fold is not None:
        raise CLIError(f"--fold {fold} applies to cross-validation: give the number of folds too, e.g. --folds 5 "
                       f"--fold {fold}")
    if folds is not None:
        return _train_cv(folds=folds, fold=fold or "all", tta=tta, resume=resume, no_progress=no_progress, config=config,
                         threads=threads,
                         recipe=recipe, model=model, data=data, epochs=epochs, max_steps=max_steps,
                         batch_size=batch_size, image_size=image_size, lr=lr, seed=seed, out=out, device=device,
                         arch=arch, compile_model=compile_model, init_from=init_from, overrides=overrides)
    resume_from = None
    if resume:
        if out is None:
            raise CLIError("--resume needs --out RUN_DIR (the run to continue)")
        resume_from = Path(out) / "checkpoints" / "last.pt"
        if not resume_from.is_file():
            raise CLIError(f"cannot resume: {resume_from} does not exist")
    cfg = build_config(recipe=recipe, config=config, resume_from=resume_from, model=model, data=data, epochs=epochs,
                       max_steps=max_steps, batch_size=batch_size, image_size=image_size, lr=lr, seed=seed, out=out,
                       device=device, arch=arch, compile_model=compile_model, init_from=init_from,
                       overrides=overrides)
    if cfg.data.path is None:
        raise CLIError("no dataset given: pass --data PATH")
    apply_threads(threads, cfg.train.device)
    if out is None and cfg.train.out == "runs/run":
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg.train.out = f"runs/{cfg.model.name}_{stamp}"
    run_dir = Path(cfg.train.out)
    if not resume and (run_dir / "checkpoints" / "last.pt").is_file():
        raise CLIError(f"{run_dir} already holds a run (checkpoints/last.pt); pass --resume to continue it or "
                       "choose another --out")
    result = run_training(cfg, resume=resume_from if resume else None, console=console,
                          show_progress=not no_progress)
    if result.rank == 0:
        if "n_volumes" in (result.metrics or {}):  # the best checkpoint's HD95 with its empty-mask rule, in words
            from mambaseg.cli.evaluate import summary_line

            console.print(summary_line(f"best val (epoch {result.best_epoch})", result.metrics), highlight=False)
        console.print(f"run directory: {result.run_dir}  (best {cfg.train.best_metric} = {result.best_value:.4f} "
                      f"at epoch {result.best_epoch})", highlight=False)


def _train_cv(*, folds: int, fold: str, tta: str, resume: bool, no_progress: bool, config: Optional[Path],
              threads: str, out: Optional[str], **options) -> None:
    """``--folds K [--fold i|all]``: the folds of a cross-validation rooted at ``--out`` (see
    :mod:`mambaseg.engine.crossval`); ``--resume`` continues from the config the folds were started with."""
    from mambaseg.engine.crossval import fold_complete, folds_label, train_folds

    if out is None:
        raise CLIError("--folds needs --out ROOT (the cross-validation root: splits_final.json and fold_i/)")
    root = Path(out)
    if resume and config is None:
        started = sorted(root.glob("fold_*/config.yaml"))
        if not started:
            raise CLIError(f"cannot resume: no fold of {root} has started (no {root}/fold_*/config.yaml)")
        config, options["recipe"] = started[0], None
    cfg = build_config(config=config, out=out, **options)
    cfg.train.out, cfg.data.split_file = str(root), None
    if cfg.data.path is None:
        raise CLIError("no dataset given: pass --data PATH")
    apply_threads(threads, cfg.train.device)
    results = train_folds(cfg, folds=folds, fold=fold, resume=resume, console=console, tta=tta,
                          show_progress=not no_progress)
    if all(r.rank == 0 for r in results):
        left = [i for i in range(folds) if not fold_complete(root / f"fold_{i}", ("last",))]
        if left:
            nxt = (f"train the other {folds_label(left, folds)} (--fold all skips finished ones), then score "
                   f"the out-of-fold predictions with: mambaseg evaluate --cv {root}")
        else:
            nxt = f"score the out-of-fold predictions with: mambaseg evaluate --cv {root}"
        console.print(f"cross-validation root: {root} ({len(results)} fold(s) trained now); {nxt}", highlight=False)
