"""5-fold cross-validation on all 100 ph2_dev cases (train + val pooled) for given recipes and seeds, one GPU.

For each (recipe, seed): ``mambaseg train --folds K --fold all`` through the library (:func:`mambaseg.engine.crossval
.train_folds`; the fold split is drawn once with ``--split-seed`` and is the same for every recipe and seed), then the
pooled out-of-fold scores (:func:`mambaseg.engine.crossval.evaluate_cv`):

* ``last``: the final weights of each fold (no checkpoint selection: the headline, no selection on the cases it
  reports);
* ``last`` + flip TTA (``--tta flip``), same weights;
* ``best``: the checkpoint each fold selected on its own held-out cases (reported for comparison only; optimistic).

``--epochs`` sets the run length (the per-step cosine of our recipes follows it); ``--minutes-per-fold`` is a safety
stop after the epoch that crosses it (a run it cuts has not finished its schedule: ``stop_reason`` says so per fold).

Writes ``<results-dir>/cv_ph2_<recipe>_s<seed>.json``: pooled out-of-fold DSC/IoU (each with its selection rule),
per-case DSC list, worst cases, number of cases below 80 DSC, per-fold training facts (epochs, stop reason, wall time,
largest drop of validation Dice between consecutive epochs), environment, command, date. A fold already trained in
``--runs`` is not trained again and an unfinished one resumes from its ``last.pt`` (written every 5 minutes), so a
job stopped by a per-command time limit continues when the same command is run again.

Scores are computed at the cache's resolution (256x256, or 192x256 for DermoMamba): the npz2d cache stores the
ground truth at network size.

Usage (caches built where the data is; ``mambaseg cache`` stores train AND val, the 100 cases the folds split):
    mambaseg cache --data ../shared/data/ph2_dev --image-size 256 --out .gpucache/ph2_256.npz
    mambaseg cache --data ../shared/data/ph2_dev --image-size 192,256 --out .gpucache/ph2_192x256.npz
    # on the GPU machine (carry .gpucache):
    PYTHONPATH=src python benchmarks/cv_ph2_gpu.py --recipes vmunet_ph2_best --seeds 0,1,2 --minutes-per-fold 6 \\
        --runs /tmp/cvruns --results-dir $OUT
    PYTHONPATH=src python benchmarks/cv_ph2_gpu.py --recipes vmunet_ph2,vmbunet_ph2,dermomamba_ph2 --seeds 42 \\
        --minutes-per-fold 6 --runs /tmp/cvruns --results-dir $OUT
    # CPU smoke test (synthetic 32x32 data, vmunet_tiny, 2 folds of 1 epoch; results to a temporary folder):
    PYTHONPATH=src python benchmarks/cv_ph2_gpu.py --smoke
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment  # noqa: E402

DEFAULT_CACHES = {(256, 256): ".gpucache/ph2_256.npz", (192, 256): ".gpucache/ph2_192x256.npz"}


def _max_drop(history: list[dict]) -> float | None:
    """Largest fall of validation Dice between two consecutive validated epochs (None with fewer than two)."""
    vals = [r["val"]["dice"] for r in history if isinstance(r.get("val"), dict) and "dice" in r["val"]]
    drops = [a - b for a, b in zip(vals, vals[1:])]
    return max(drops) if drops else None


def _fold_facts(root: Path, k: int) -> list[dict]:
    out = []
    for i in range(k):
        m = json.loads((root / f"fold_{i}" / "metrics.json").read_text())
        hist = json.loads((root / f"fold_{i}" / "history.json").read_text())
        hist = hist.get("history", hist) if isinstance(hist, dict) else hist
        out.append({"fold": i, "epochs": m["train"]["epochs"], "steps": m["train"]["steps"],
                    "stop_reason": m["train"]["stop_reason"], "seconds": m["train"]["seconds"],
                    "best_epoch": m["best_epoch"], "val_dice_best": m["dice"],
                    "val_dice_last": (m.get("last") or {}).get("dice"),
                    "max_epoch_drop": _max_drop(hist)})
    return out


def run_one(recipe: str, seed: int, *, folds: int, split_seed: int, caches: dict, runs: Path, results: Path,
            minutes_per_fold: float | None, epochs: int | None, extra: list[str], device: str, tta: bool) -> dict:
    from rich.console import Console

    from mambaseg.configs import apply_overrides, load_recipe
    from mambaseg.engine.crossval import SELECTION_RULES, evaluate_cv, train_folds

    cfg = load_recipe(recipe)
    size = tuple(int(s) for s in cfg.data.image_size)
    cache = caches.get(size)
    if cache is None or not Path(cache).is_file():
        raise SystemExit(f"no cache for {recipe} at {size[0]}x{size[1]} ({cache}); build it with: mambaseg cache "
                         f"--data ../shared/data/ph2_dev --image-size {size[0]},{size[1]} --out {cache}")
    root = runs / f"cv_ph2_{recipe}_s{seed}"
    sets = [f"data.path={cache}", f"train.seed={seed}", f"data.split_seed={split_seed}", f"train.out={root}",
            f"train.device={device}"]  # last.pt every 5 minutes (the default): a killed job resumes its fold
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    if minutes_per_fold is not None:
        sets.append(f"train.time_limit_s={60 * minutes_per_fold}")
    cfg = apply_overrides(cfg, sets + extra)
    t0 = time.perf_counter()
    train_folds(cfg, folds=folds, fold="all", resume=True, console=Console(), show_progress=False)
    wall = time.perf_counter() - t0
    scores = {"last": evaluate_cv(root, which="last", device=device)}
    if tta:
        scores["last_tta_flip"] = evaluate_cv(root, which="last", tta="flip", device=device,
                                              out=root / "tta_flip")
    scores["best"] = evaluate_cv(root, which="best", device=device, out=root / "best")
    head = scores["last"]
    record = {
        "what": f"{folds}-fold cross-validation on the {head['n_cases']} train+val cases of {Path(cache).name}, recipe "
                f"{recipe}, seed {seed}, from scratch",
        "recipe": recipe, "seed": seed, "folds": folds, "split_seed": split_seed, "cache": str(cache),
        "image_size": [int(v) for v in cfg.data.image_size], "overrides": sets + extra,
        "selection_rule": SELECTION_RULES["last"] + "; headline = pooled out-of-fold DSC of these weights",
        "pooled_oof_dsc": head["dice"], "pooled_oof_iou": head["iou"], "per_case_mean_dsc": head["per_case_dice"],
        "n_below_0.8": head["n_below"]["count"], "worst": head["worst"],
        "per_case_dsc": {c["id"]: c["dice"] for c in head["cases"]},
        "per_fold_mean_dsc": head["per_fold_mean_dice"],
        "scores": {k: {"rule": v["selection_rule"], "tta": v["tta"], "pooled_dsc": v["dice"], "pooled_iou": v["iou"],
                       "per_case_mean_dsc": v["per_case_dice"], "hd95_px": v.get("hd95"), "nsd_2px": v.get("nsd"),
                       "n_below_0.8": v["n_below"]["count"], "worst": v["worst"][:5]} for k, v in scores.items()},
        "resolution": head["resolution"],
        "fold_training": _fold_facts(root, folds),
        "wall_seconds": round(wall, 1),
        "environment": environment(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"cv_ph2_{recipe}_s{seed}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{recipe} seed {seed}: pooled OOF DSC {head['dice']:.4f} (last weights)"
          + (f", with flip TTA {scores['last_tta_flip']['dice']:.4f}" if tta else "")
          + f"; {head['n_below']['count']} case(s) below 0.8 -> {path}", flush=True)
    return record


def _smoke_cache(tmp: Path) -> Path:
    """A 12-case synthetic cache with distinct ids (the synthetic val files are renamed) at 32x32."""
    from mambaseg.data import make_synthetic_dataset
    from mambaseg.data.layouts import write_cache

    root = make_synthetic_dataset(tmp / "data", n_train=8, n_val=4, size=(32, 32), seed=0)
    for sub in ("images", "masks"):
        for f in sorted((root / "val" / sub).iterdir()):
            f.rename(f.parent / f"v_{f.name}")
    return write_cache(root, (32, 32), tmp / "smoke_32.npz")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="vmunet_ph2_best")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the fold split (same for every run)")
    ap.add_argument("--cache", action="append", default=[], metavar="HxW=FILE",
                    help="cache per image size (default 256x256=.gpucache/ph2_256.npz, 192x256=.gpucache/ph2_192x256.npz)")
    ap.add_argument("--minutes-per-fold", type=float, default=None, help="stop a fold after the epoch that crosses this")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (schedules follow)")
    ap.add_argument("--set", action="append", default=[], dest="extra", help="extra config override (repeatable)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-tta", action="store_true", help="skip the flip-TTA scoring")
    ap.add_argument("--runs", default="/tmp/cvruns")
    ap.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--smoke", action="store_true", help="CPU smoke test on synthetic data (tiny model, 2 folds)")
    args = ap.parse_args()

    caches = dict(DEFAULT_CACHES)
    for item in args.cache:
        size, _, path = item.partition("=")
        h, _, w = size.lower().partition("x")
        caches[(int(h), int(w or h))] = path
    extra, folds, epochs, results, runs = list(args.extra), args.folds, args.epochs, Path(args.results_dir), Path(args.runs)
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="cv_smoke_"))
        caches = {(32, 32): str(_smoke_cache(tmp))}
        extra += ["model.name=vmunet_tiny", "data.image_size=[32,32]", "train.batch_size=4", 'train.amp="off"',
                  "model.kwargs={dims: 8, d_state: 2}", "data.num_workers=0", "train.scan_backend=torch"]
        folds, epochs, results, runs = 2, 1, tmp / "results", tmp / "runs"
        args.device = "cpu"
    for recipe in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
            if args.smoke:  # the tiny model replaces the recipe's; its image size must follow
                from mambaseg.configs import load_recipe

                caches[tuple(int(s) for s in load_recipe(recipe).data.image_size)] = caches[(32, 32)]
            run_one(recipe, seed, folds=folds, split_seed=args.split_seed, caches=caches, runs=runs, results=results,
                    minutes_per_fold=args.minutes_per_fold, epochs=epochs, extra=extra, device=args.device,
                    tta=not args.no_tta)


if __name__ == "__main__":
    main()
