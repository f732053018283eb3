"""Write PH2 (ph2_dev: 80 train / 20 val) in the layouts the official training scripts read, from the same ``.npz``
caches that ``mambaseg train --data`` reads, so that both sides train on identical pixels.

- ``OUT/vmunet/{train,val}/{images,masks}/<id>.png``: what VM-UNet's ``NPY_datasets`` lists (``path + 'train/images/'``
  etc., images and masks paired by sorted file name). Images RGB PNG (lossless) at 256x256 from ``ph2_256.npz``; masks
  PNG 0/255 (the loader divides by 255). The official pipeline resizes to 256x256 after its augmentation; at this
  size that resize keeps the size.
- ``OUT/dermomamba/data/ISIC2018_train.npz``: what DermoMamba's ``datasets/datasets.py`` loads at import
  (``image`` uint8 N x 192 x 256 x 3, ``mask`` uint8 N x 192 x 256 in {0, 1}), train images first, then val, and
  ``n_train`` (read by our driver only: the official code splits with ``train_test_split(test_size=520)``, which the
  driver replaces by this split). From ``ph2_192x256.npz``; stored uncompressed, as a prepared npz would be.

Usage (seconds; run by ``recipe_wall.py`` on the GPU machine, or here)::

    python benchmarks/official/prepare_data.py --cache256 .gpucache/ph2_256.npz \\
        --cache192 .gpucache/ph2_192x256.npz --out /tmp/recipe_wall/ph2_official
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def _png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path, compress_level=1)


def write_vmunet(cache: Path, out: Path) -> dict[str, Any]:
    d = np.load(cache)
    counts = {}
    for split in ("train", "val"):
        imgs, masks, ids = d[f"{split}_images"], d[f"{split}_masks"], [str(i) for i in d[f"{split}_ids"]]
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "masks").mkdir(parents=True, exist_ok=True)
        for img, mask, name in zip(imgs, masks, ids):
            _png(out / split / "images" / f"{name}.png", img)
            _png(out / split / "masks" / f"{name}.png", (mask > 0).astype(np.uint8) * 255)
        counts[split] = len(ids)
    return {"layout": "vmunet: {train,val}/{images,masks}/<id>.png", "source": str(cache),
            "size_hw": list(d["train_images"].shape[1:3]), "counts": counts,
            "images": "RGB PNG, lossless copy of the cache's uint8 pixels", "masks": "PNG 0/255"}


def write_dermomamba(cache: Path, out: Path) -> dict[str, Any]:
    d = np.load(cache)
    image = np.concatenate([d["train_images"], d["val_images"]])
    mask = (np.concatenate([d["train_masks"], d["val_masks"]]) > 0).astype(np.uint8)
    ids = [str(i) for i in np.concatenate([d["train_ids"], d["val_ids"]])]
    (out / "data").mkdir(parents=True, exist_ok=True)
    np.savez(out / "data" / "ISIC2018_train.npz", image=image, mask=mask, n_train=np.int64(len(d["train_ids"])),
             ids=np.asarray(ids))
    return {"layout": "dermomamba: data/ISIC2018_train.npz (image, mask, n_train)", "source": str(cache),
            "size_hw": list(image.shape[1:3]), "counts": {"train": int(len(d["train_ids"])),
                                                           "val": int(len(d["val_ids"]))},
            "images": "uint8 array (lossless copy of the cache)", "masks": "uint8 {0,1}"}


def prepare(cache256: Path | None, cache192: Path | None, out: Path) -> dict[str, Any]:
    """Write the layouts whose caches are given; returns what was stored (also written to ``OUT/stored.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    stored: dict[str, Any] = {}
    if cache256 is not None:
        stored["vmunet"] = write_vmunet(Path(cache256), out / "vmunet")
    if cache192 is not None:
        stored["dermomamba"] = write_dermomamba(Path(cache192), out / "dermomamba")
    (out / "stored.json").write_text(json.dumps(stored, indent=1) + "\n")
    return stored


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache256", type=Path, default=None, help="mambaseg cache at 256x256 (VM-UNet)")
    ap.add_argument("--cache192", type=Path, default=None, help="mambaseg cache at 192x256 (DermoMamba)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    print(json.dumps(prepare(args.cache256, args.cache192, args.out), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
