"""VM-UNet with the ISIC recipe on ph2_dev (train -> val), for the GPU machine; writes a results JSON.

The data come from a cache built here with ``benchmarks/make_cache.py`` (``../shared`` does not travel):

    python benchmarks/make_cache.py --data ../shared/data/ph2_dev --size 256 --out .gpucache/ph2_256.npz
    # on the GPU machine (carry .gpucache):
    python benchmarks/train_ph2_gpu.py --data .gpucache/ph2_256.npz --out runs/ph2_gpu \
        --results benchmarks/results/vmunet_ph2_gpu.json [--minutes 9]

The recipe is ``vmunet_ph2`` (= VM-UNet ISIC: 300 epochs, batch 32, 256x256, AdamW 1e-3 wd 1e-2, cosine T_max 50,
BCE+Dice, no pretrained weights), bf16 autocast on CUDA; the best checkpoint is chosen by pooled Dice on val.
``--minutes`` stops cleanly after the epoch that crosses the budget (the JSON then says how many epochs ran).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from pathlib import Path

from _common import training_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help=".npz cache (or dataset folder)")
    ap.add_argument("--out", default="runs/ph2_gpu", help="run directory")
    ap.add_argument("--results", default="benchmarks/results/vmunet_ph2_gpu.json", help="results JSON to write")
    ap.add_argument("--recipe", default="vmunet_ph2")
    ap.add_argument("--minutes", type=float, default=None, help="wall-time budget (stop after the epoch crossing it)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=value")
    args = ap.parse_args()

    import torch
    from rich.console import Console

    from mambaseg.configs import apply_overrides, load_recipe
    from mambaseg.engine import train
    from mambaseg.ops import explain_backend

    # last.pt (weights + AdamW state, ~330 MB) every 50 epochs: per-epoch writes would cost more than the epochs
    cfg = apply_overrides(load_recipe(args.recipe), [f"data.path={args.data}", f"train.out={args.out}",
                                                     "train.device=auto", "train.checkpoint_every=50",
                                                     *args.overrides])
    t0 = time.perf_counter()

    def budget(state):
        return args.minutes is not None and time.perf_counter() - t0 > 60 * args.minutes

    res = train(cfg, console=Console(), callbacks=[budget], show_progress=False)
    m = res.metrics
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    out = {
        "what": "VM-UNet (vmunet, 27.4 M params, no pretrained weights), ISIC recipe, trained on ph2_dev/train, "
                "evaluated on ph2_dev/val at 256x256, best checkpoint by pooled Dice on val",
        "recipe": args.recipe,
        "overrides": args.overrides,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "torch": torch.__version__,
        "scan_backend": explain_backend(torch.cuda.is_available()),
        **training_summary(res),
        "epochs_planned": cfg.train.epochs,
        "last_epoch_val_dice": (m.get("last") or {}).get("dice"),
    }
    p = Path(args.results)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
