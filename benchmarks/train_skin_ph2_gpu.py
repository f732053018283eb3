"""VM-UNet, VMB-UNet and DermoMamba with their PH2 recipes on ph2_dev (train -> val), one GPU, one time budget.

For each model: a short probe (``--probe-epochs`` epochs; it also absorbs the one-off Triton compilation) measures
the steady epoch time; the real run then gets as many epochs as fit in the model's share of the budget, with the
cosine schedules (VM-UNet, VMB-UNet) stretched to that length (``schedule.t_max = epochs``: one decay instead of the
ISIC recipes' period of 50 epochs over 300; DermoMamba's plateau schedule is unchanged). A time-budget callback stops
a run that goes over. Everything else is the recipe (``<model>_ph2``). Results (pooled and per-case DSC/IoU of the
best-by-val-Dice checkpoint on ph2_dev/val, wall time, img/s, history) go to
``benchmarks/results/skin_ph2_gpu_<model>.json`` (three files: keep ``$OUT`` small on the device machine).

Metrics are computed at the training size (256x256; 192x256 for DermoMamba) on the cached val images.

Usage (caches built here, carried to the GPU machine; ``../shared`` does not travel):
    mambaseg cache --data ../shared/data/ph2_dev --image-size 256 --out .gpucache/ph2_256.npz
    mambaseg cache --data ../shared/data/ph2_dev --image-size 192,256 --out .gpucache/ph2_192x256.npz
    # on the GPU machine (carry both caches); write the results straight under $OUT, nothing else
    PYTHONPATH=src python benchmarks/train_skin_ph2_gpu.py --minutes 2.2,2.4,2.4 --results-dir $OUT --out-dir /tmp/runs
    # the recipes at full length (300 / 300 / 200 epochs), one model per process so they can share the GPU:
    PYTHONPATH=src python benchmarks/train_skin_ph2_gpu.py --full --models vmbunet --minutes 20 \
        --set train.checkpoint_every=50 --set data.persistent_workers=true
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from pathlib import Path

from _common import training_summary

CACHES = {"vmunet": ".gpucache/ph2_256.npz", "vmbunet": ".gpucache/ph2_256.npz", "dermomamba": ".gpucache/ph2_192x256.npz"}
WHAT = {
    "vmunet": "VM-UNet (27.4 M params), recipe vmunet_ph2 (ISIC recipe), 256x256",
    "vmbunet": "VMB-UNet paper wiring (34.2 M params), recipe vmbunet_ph2, boundary loss (near-boundary weights), 256x256",
    "dermomamba": "DermoMamba (4.95 M params), recipe dermomamba_ph2, Guide Fusion Loss (intent), 192x256",
}


def _run(cfg, seconds_budget: float | None) -> tuple:
    """Train (stopping after the epoch that crosses ``seconds_budget``: ``train.time_limit_s``); returns (result,
    wall-clock times at the end of each epoch, validation and checkpointing included)."""
    from rich.console import Console

    from mambaseg.engine import train

    cfg.train.time_limit_s = seconds_budget
    t0 = time.perf_counter()
    ends: list[float] = []

    def record(state) -> bool:
        ends.append(time.perf_counter() - t0)
        return False

    return train(cfg, console=Console(), callbacks=[record], show_progress=False), ends


def run_model(name: str, minutes: float, probe_epochs: int, out_dir: Path, results_dir: Path, extra: list[str],
              full: bool = False) -> dict:
    import torch

    from mambaseg.configs import apply_overrides, load_recipe
    from mambaseg.ops import explain_backend

    recipe = f"{name}_ph2"
    base = [f"data.path={CACHES[name]}", "train.device=auto", "data.num_workers=4", *extra]
    t_start = time.perf_counter()
    if full:  # the recipe as it is (epochs, schedule); ``minutes`` is only a safety stop
        probe, epoch_s, overrides = None, None, []
        cfg = apply_overrides(load_recipe(recipe), [*base, f"train.out={out_dir / name}"])
        epochs, left = cfg.train.epochs, 60 * minutes
    else:
        probe_cfg = apply_overrides(load_recipe(recipe), [*base, f"train.out={out_dir / (name + '_probe')}",
                                                          f"train.epochs={probe_epochs}"])
        probe, ends = _run(probe_cfg, None)
        # steady epoch time = wall time of the last probe epoch (train + validation + checkpoint; compilation is
        # in epoch 1)
        epoch_s = ends[-1] - ends[-2] if len(ends) > 1 else ends[-1]
        left = 60 * minutes - (time.perf_counter() - t_start)
        epochs = max(1, int(left / epoch_s * 0.95))
        cfg = load_recipe(recipe)
        overrides = [f"train.epochs={epochs}"]
        if cfg.schedule.name == "cosine":
            overrides.append(f"schedule.t_max={epochs}")
        cfg = apply_overrides(cfg, [*base, f"train.out={out_dir / name}", *overrides])
    res, _ = _run(cfg, max(30.0, left))
    m = res.metrics
    out = {
        "what": WHAT[name] + "; trained on ph2_dev/train from scratch, evaluated on ph2_dev/val, best checkpoint "
                             "by pooled Dice on val",
        "model": name,
        "params": m["model"]["params"],
        "recipe": recipe,
        "overrides": [*base, *overrides],
        "mode": "full recipe" if full else "time-budgeted (epochs from a probe, cosine stretched to them)",
        "safety_budget_minutes": minutes if full else None,
        "probe": None if probe is None else {"epochs": probe_epochs, "steady_epoch_seconds": round(epoch_s, 3),
                                             "seconds_incl_compile": round(probe.seconds, 1)},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "scan_backend": explain_backend(torch.cuda.is_available()),
        **training_summary(res),
        "image_size": list(cfg.data.image_size),
        "epochs_planned": epochs,
        "last_epoch_val": {k: (m.get("last") or {}).get(k) for k in ("dice",)},
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"skin_ph2_gpu_{name}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="vmunet,vmbunet,dermomamba")
    ap.add_argument("--minutes", default="2.2,2.4,2.4", help="per-model wall-time budgets (comma-separated)")
    ap.add_argument("--probe-epochs", type=int, default=2)
    ap.add_argument("--full", action="store_true",
                    help="run each recipe as written (its epochs and schedule); --minutes become safety stops")
    ap.add_argument("--out-dir", type=Path, default=Path("runs/skin_ph2"))
    ap.add_argument("--results-dir", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override a.b=value")
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    minutes = [float(v) for v in args.minutes.split(",")]
    if len(minutes) != len(models):
        raise SystemExit(f"--minutes needs one value per model ({len(models)}), got {args.minutes!r}")
    for name in models:
        if name not in CACHES:
            raise SystemExit(f"unknown model {name!r}; this script runs {', '.join(CACHES)}")
        if not Path(CACHES[name]).is_file():
            raise SystemExit(f"missing cache {CACHES[name]} (build it with mambaseg cache, see --help)")
    summary = []
    for name, mins in zip(models, minutes):
        try:
            r = run_model(name, mins, args.probe_epochs, args.out_dir, args.results_dir, args.overrides, args.full)
            summary.append({k: r[k] for k in ("model", "epochs_run", "best_epoch", "wall_seconds",
                                              "train_images_per_second", "val_pooled_dsc", "val_pooled_iou",
                                              "val_per_case_dsc", "val_per_case_iou")})
        except Exception as exc:  # keep going: one model's failure must not cost the others' results
            summary.append({"model": name, "error": f"{type(exc).__name__}: {exc}"})
        print(json.dumps(summary[-1]), flush=True)
    print(json.dumps(summary, indent=2))
    if any("error" in s for s in summary):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
