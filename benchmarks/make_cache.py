"""Build a compact training-size cache of a 2-D folder dataset for machines without the original files.

The cache is one ``.npz`` (compressed) holding, for each split, ``{split}_images`` (N, H, W, C) uint8 already resized
to the training size with the same resize as evaluation (``mambaseg.data.transforms.Resize``), ``{split}_masks``
(N, H, W) uint8 class indices (nearest resize), ``{split}_ids`` and ``{split}_orig_sizes``, plus a JSON ``meta``
entry (source, size, label map). ``mambaseg train --data CACHE.npz`` reads it (layout ``npz2d``); augmentation
then runs on the resized images.

Usage:
    python benchmarks/make_cache.py --data ../shared/data/ph2_dev --size 256 --out .gpucache/ph2_256.npz
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path

import numpy as np


def build_cache(data: Path, size: tuple[int, int], out: Path, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """Write the cache and return its path."""
    from mambaseg.data import FolderDataset2D
    from mambaseg.data.transforms import Resize

    arrays: dict[str, np.ndarray] = {}
    counts = {}
    resize = Resize(size)
    for split in splits:
        ds = FolderDataset2D(data, split, image_size=size, augment=False, normalization=None)
        imgs, masks, sizes = [], [], []
        for i in range(len(ds)):
            img, mask = ds.load_pair(i)
            sizes.append(img.shape[:2])
            img, mask = resize(img, mask.astype(np.uint8))
            imgs.append(img)
            masks.append(mask)
        arrays[f"{split}_images"] = np.stack(imgs).astype(np.uint8)
        arrays[f"{split}_masks"] = np.stack(masks).astype(np.uint8)
        arrays[f"{split}_ids"] = np.asarray(ds.ids)
        arrays[f"{split}_orig_sizes"] = np.asarray(sizes, dtype=np.int32)
        counts[split] = len(ds)
    meta = {
        "source": str(data.resolve()),
        "image_size": list(size),
        "label_map": {"background": 0, "foreground": 255},
        "num_classes": 1,
        "counts": counts,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    arrays["meta"] = np.asarray(json.dumps(meta))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="dataset root ROOT/{train,val}/{images,masks}")
    ap.add_argument("--size", default="256", help="training size S or H,W")
    ap.add_argument("--out", type=Path, required=True, help="output .npz (inside a git-ignored folder, e.g. .gpucache/)")
    ap.add_argument("--splits", default="train,val", help="comma-separated splits")
    args = ap.parse_args()
    parts = [int(p) for p in args.size.split(",")]
    size = (parts[0], parts[-1])
    out = build_cache(args.data, size, args.out, tuple(s for s in args.splits.split(",") if s))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
