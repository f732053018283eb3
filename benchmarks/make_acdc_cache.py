"""Build a compact ACDC cache for the GPU machine (``../shared`` does not travel there).

Writes one compressed ``.npz`` (layout ``volcache``, read by ``mambaseg train --data <file>``): the training
slices zoomed to the network size (cubic image / nearest labels, no augmentation, no normalisation) and the
val/test volumes with every slice zoomed to the network size and the labels at their ORIGINAL size, so the
per-volume evaluation on the GPU (predict at 224, zoom back, Dice/HD95 on the original grid) is the one on the
source data up to the 8-bit quantisation of the intensities.

Usage:
    python benchmarks/make_acdc_cache.py --data ../shared/data/acdc --out .gpucache/acdc_224.npz --size 224
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/acdc", help="ACDC root (SSL4MIS h5 layout)")
    ap.add_argument("--out", default=".gpucache/acdc_224.npz", help="output .npz")
    ap.add_argument("--size", type=int, default=224, help="network input size (square)")
    ap.add_argument("--splits", default="val,test", help="evaluation splits to include")
    ap.add_argument("--max-mib", type=float, default=40.0, help="fail if the cache is larger than this")
    args = ap.parse_args(argv)

    from mambaseg.data import ACDC_LABELS, acdc_slices, acdc_volumes
    from mambaseg.engine.volumetric import write_volcache

    t0 = time.perf_counter()
    train = acdc_slices(args.data, image_size=args.size, augment=False, normalization=None)
    evals = {s: acdc_volumes(args.data, s) for s in args.splits.split(",") if s}
    out = write_volcache(
        args.out, name="acdc", label_names=ACDC_LABELS, num_classes=4, image_size=(args.size, args.size),
        train=train, eval_splits=evals,
    )
    mib = Path(out).stat().st_size / 2**20
    print(f"wrote {out}: {len(train)} train slices, " + ", ".join(f"{k} {len(v)} volumes" for k, v in evals.items())
          + f", {mib:.1f} MiB in {time.perf_counter() - t0:.0f} s")
    if mib > args.max_mib:
        print(f"error: the cache is {mib:.1f} MiB > --max-mib {args.max_mib}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
