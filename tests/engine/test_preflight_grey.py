"""Pre-flight: grey images among colour ones in an RGB folder dataset are named (they were replicated silently)."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from mambaseg.configs import RunConfig, apply_overrides
from mambaseg.engine import open_data
from mambaseg.engine.preflight import check_samples


def _ph2_subset(shared_data: Path, root: Path, n: int = 4) -> Path:
    for split in ("train", "val"):
        src = shared_data / "ph2_dev" / split
        for img in sorted((src / "images").glob("*.jpg"))[:n]:
            for sub, f in (("images", img), ("masks", src / "masks" / f"{img.stem}.png")):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, root / split / sub / f.name)
    return root


def test_grey_images_among_colour_ones_are_named(shared_data: Path, tmp_path: Path) -> None:
    root = _ph2_subset(shared_data, tmp_path / "ph2")
    cfg = apply_overrides(RunConfig(), {"data.image_size": [32, 32]})
    task = open_data(root, cfg, splits=("train", "val"))
    assert not [w for w in check_samples({"train": task.train, "val": task.val}, root) if "grey" in w]
    first = sorted((root / "train" / "images").glob("*.jpg"))[0]
    Image.open(first).convert("L").save(first)  # a grey photo among the colour dermoscopy ones
    task = open_data(root, cfg, splits=("train", "val"))
    notes = [w for w in check_samples({"train": task.train, "val": task.val}, root) if "grey" in w]
    assert len(notes) == 1 and f"1 of 4 images of the train split of {root} are grey ({first.name})" in notes[0]
    for f in (root / "train" / "images").glob("*.jpg"):  # all grey: a grey dataset, nothing to say
        Image.open(f).convert("L").save(f)
    task = open_data(root, cfg, splits=("train", "val"))
    assert not [w for w in check_samples({"train": task.train}, root) if "grey" in w]
