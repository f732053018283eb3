"""SliceMamba on EndoTect polyps (GPU): supernet + evolutionary search, then retraining of (a) the searched
architecture, (b) the all-(4,4) architecture and (c) VM-UNet with the same depths, recipe and budget.

Two steps:

1. on the development machine (has ``../shared/data``), build the compact uint8 cache that travels::

       python benchmarks/slicemamba_gpu.py cache --data ../shared/data/endotect_polyp --size 256 \
           --out .gpucache/endotect_256.npz

2. on the GPU machine (carry ``.gpucache/endotect_256.npz``)::

       PYTHONPATH=src python benchmarks/slicemamba_gpu.py run --cache .gpucache/endotect_256.npz \
           --budget-s 420 --out "$OUT/slicemamba" --work /tmp/slicemamba_runs

``run`` splits ``--budget-s`` by time: supernet training ~32 % (SPOS, checkpoints written once at the end),
evolution ~14 % (whole generations, population ``--population``), retraining of the searched network ~15 %;
the all-(4,4) SliceMamba and VM-UNet are then trained for exactly the epochs the searched one reached (so
allow ~50 % more for them and the overheads). The three retrainings use the
``slicemamba_polyp`` recipe (AdamW 1e-3 wd 1e-2, cosine T_max 50, BCE + Dice, VM-UNet flips/rotation) with
the SAME number of epochs, batch size and seed; VM-UNet is built with SliceMamba's depths (2,2,9,2 / 2,2,2,1)
so the three networks have identical parameter counts and differ only in the scan. Reported metrics are
pooled DSC/IoU on the validation split (40 images) of the LAST epoch (no checkpoint selection) and of the
best-by-val-DSC epoch. JSON summaries are written to ``--out`` (copy them to ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def build_cache(data: str, size: int, out: str) -> None:
    """Write ``train``/``val`` images (N, S, S, 3) and masks (N, S, S) as uint8 at the training size."""
    from mambaseg.data import FolderDataset2D
    from mambaseg.data.transforms import Resize

    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "val"):
        ds = FolderDataset2D(data, split, image_size=(size, size), augment=False, normalization=None)
        imgs, masks, sizes = [], [], []
        for i in range(len(ds)):
            img, mask = ds.load_pair(i)
            sizes.append(img.shape[:2])
            img, mask = Resize((size, size))(img, mask)
            imgs.append(img.astype(np.uint8))
            masks.append(mask.astype(np.uint8))
        arrays[f"{split}_images"] = np.stack(imgs)
        arrays[f"{split}_masks"] = np.stack(masks)
        arrays[f"{split}_ids"] = np.array(ds.ids)
        arrays[f"{split}_orig_sizes"] = np.array(sizes, dtype=np.int64)
    arrays["meta"] = np.array(json.dumps({"source": str(data), "size": [size, size], "num_classes": 1,
                                          "label_map": {"background": 0, "foreground": 255}}))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {Path(out).stat().st_size / 2**20:.1f} MiB, "
          f"{len(arrays['train_ids'])} train / {len(arrays['val_ids'])} val at {size}x{size}")


def run(args: argparse.Namespace) -> None:
    from _common import environment

    from mambaseg.configs import apply_overrides, load_recipe
    from mambaseg.engine import train
    from mambaseg.nas.evolution import EvolutionConfig
    from mambaseg.nas.runner import SearchSettings, run_search
    from mambaseg.ops import explain_backend

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "work"  # checkpoints and run folders (large) go here
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    # --smoke: a tiny network for a quick end-to-end check of this script on the CPU
    net_kw = dict(dims=8, depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1], d_state=4) if args.smoke else {}
    n_genes = sum(net_kw.get("depths", [2, 2, 9, 2])) + sum(net_kw.get("depths_decoder", [2, 2, 2, 1]))
    t_start = time.perf_counter()
    size, bs = args.size, args.batch_size
    with np.load(args.cache, allow_pickle=False) as z:
        n_train, n_val = len(z["train_ids"]), len(z["val_ids"])
    print(f"data: {n_train} train / {n_val} val images at {size}px from {args.cache}", flush=True)
    backend = explain_backend(device.type == "cuda")
    print(f"scan backend: {backend}", flush=True)

    budget = args.budget_s - (time.perf_counter() - t_start)
    # time-based phases: the supernet trains and the evolution runs until their share of the budget is used;
    # the searched network is retrained for its share, and the two baselines get exactly as many epochs
    plan = {"budget_s": args.budget_s, "supernet_time_s": round(0.32 * budget, 1),
            "search_time_s": round(0.14 * budget, 1), "retrain_a_time_s": round(0.15 * budget, 1),
            "batch_size": bs, "image_size": size, "supernet_max_epochs": 300, "generations_max": 20,
            "population": args.population}
    print(f"plan: {plan}", flush=True)

    base = load_recipe("slicemamba_polyp")
    common = [f"data.path={args.cache}", f"data.image_size=[{size},{size}]", f"train.batch_size={bs}",
              f"train.seed={args.seed}", f"train.device={args.device}", f"data.num_workers={args.workers}",
              "train.val_batch_size=20", "train.amp=auto",
              # short GPU epochs: keep the loader workers, write last.pt only at the end (best.pt as it improves)
              "data.persistent_workers=true", "train.checkpoint_every=1000000"]
    # ---- search
    cfg = apply_overrides(copy.deepcopy(base), common + [f"train.out={work / 'search'}"])
    population = args.population
    evo = EvolutionConfig(generations=20, population=population, select_num=min(10, population),
                          mutation_num=population // 2, crossover_num=population // 2, mutation_prob=0.1,
                          seed=args.seed)
    settings = SearchSettings(supernet_epochs=300, evolution=evo, search_fraction=args.search_fraction,
                              eval_batch_size=20, model_kwargs=dict(net_kw), progress=False,
                              save_every=10**6, supernet_time_limit_s=plan["supernet_time_s"],
                              search_time_limit_s=plan["search_time_s"])
    t0 = time.perf_counter()
    found = run_search(cfg, settings, work / "search", log=lambda m: print(m, flush=True))
    search_seconds = time.perf_counter() - t0
    results: dict = {}

    def write_summary() -> None:
        """Write what is known so far (after the search and after every retraining)."""
        import shutil

        summary = {
            "what": "SliceMamba search + retraining on endotect_polyp (160 train / 40 val), GPU",
            "environment": environment(),
            "scan_backend": backend,
            "plan": plan,
            "search": {"arch": found["arch"], "slices": found["slices"], "fitness": found["fitness"],
                       "top": found["top"][:5], "num_evaluated": found["num_evaluated"],
                       "supernet": found["supernet"],
                       "search_split": {k: v for k, v in found["search_split"].items() if k != "search_ids"},
                       "seconds": round(search_seconds, 1)},
            "retrain": results,
            "total_seconds": round(time.perf_counter() - t_start, 1),
        }
        (out / "slicemamba_endotect_gpu.json").write_text(json.dumps(summary, indent=2) + "\n")
        # small files next to the summary, flat (the device returns at most 8 files, 2 folders deep)
        for rel, name in (("search/arch.json", "arch.json"), ("search/search_log.jsonl", "search_log.jsonl"),
                          ("search/search_split.json", "search_split.json"),
                          ("search/supernet/history.json", "supernet_history.json")):
            if (work / rel).is_file() and (work / rel).resolve() != (out / name).resolve():
                shutil.copyfile(work / rel, out / name)

    write_summary()
    # ---- retrain the three networks with the same recipe, epochs, batch and seed
    variants = {
        "a_searched_slicemamba": ("slicemamba", {"arch": found["arch"]}),
        "b_all44_slicemamba": ("slicemamba", {"arch": [3] * n_genes}),
        "c_vmunet_same_depths": ("vmunet", {"depths": [2, 2, 9, 2], "depths_decoder": [2, 2, 2, 1]}),
    }
    rt_epochs = 300  # (a) runs until its time share is used; (b) and (c) then get the same number of epochs
    for key, (name, kw) in variants.items():
        ov = common + [f"train.out={work / key}", f"model.name={name}", f"train.epochs={rt_epochs}",
                       "train.best_metric=dice", "train.best_mode=max"]
        rcfg = apply_overrides(copy.deepcopy(base), ov)
        rcfg.model.kwargs = {**{k: v for k, v in kw.items() if k != "arch"}, **net_kw}
        if "arch" in kw:
            rcfg.model.arch = kw["arch"]
        if key == "a_searched_slicemamba":
            rcfg.train.time_limit_s = plan["retrain_a_time_s"]
        t0 = time.perf_counter()
        res = train(rcfg, console=None, show_progress=False)
        if key == "a_searched_slicemamba":
            rt_epochs = res.epochs
            plan["retrain_epochs"] = rt_epochs
        last = res.metrics.get("last") or {}
        results[key] = {
            "model": name, "model_kwargs": kw, "params": res.metrics.get("model", {}).get("params"),
            "epochs": res.epochs, "steps": res.steps, "seconds": round(time.perf_counter() - t0, 1),
            "val_last_epoch": {"dsc": last.get("dice"), "iou": last.get("iou"),
                               "per_case_dsc": last.get("per_case_dice")},
            "val_best_epoch": {"epoch": res.best_epoch, "dsc": res.metrics.get("dice"), "iou": res.metrics.get("iou")},
            "history": [{"epoch": h.get("epoch"), "train_loss": h.get("train_loss", h.get("loss")),
                         "val": h.get("val")} for h in res.history],
        }
        write_summary()
        print(f"{key}: last-epoch val DSC {last.get('dice')}, IoU {last.get('iou')}; best-epoch DSC "
              f"{res.metrics.get('dice')} (epoch {res.best_epoch}); {results[key]['seconds']} s", flush=True)
    write_summary()
    print(json.dumps({k: {"last": v["val_last_epoch"], "best": v["val_best_epoch"]} for k, v in results.items()},
                     indent=1), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache", help="build the uint8 .npz cache (needs ../shared/data)")
    c.add_argument("--data", required=True)
    c.add_argument("--size", type=int, default=256)
    c.add_argument("--out", required=True)
    r = sub.add_parser("run", help="search + retrain on the GPU")
    r.add_argument("--cache", required=True)
    r.add_argument("--out", required=True, help="folder for the JSON summaries")
    r.add_argument("--work", default=None, help="folder for checkpoints/run folders (default: OUT/work)")
    r.add_argument("--budget-s", type=float, default=420.0)
    r.add_argument("--size", type=int, default=256)
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--search-fraction", type=float, default=0.2)
    r.add_argument("--population", type=int, default=50)
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--device", default="cuda")
    r.add_argument("--workers", type=int, default=4)
    r.add_argument("--smoke", action="store_true", help="tiny networks (CPU check of the script)")
    a = p.parse_args()
    if a.cmd == "cache":
        build_cache(a.data, a.size, a.out)
    else:
        if a.device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("run needs a CUDA device (or --device cpu --smoke for a check)")
        run(a)


if __name__ == "__main__":
    main()
