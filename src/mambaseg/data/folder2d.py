"""2-D folder dataset: ``ROOT/{train,val[,test]}/{images,masks}/`` pairs matched by stem."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mambaseg.data.files import LOSSY_EXTENSIONS, DatasetError, Pair, list_split, mask_to_labels, read_image, read_mask
from mambaseg.data.normalization import Normalization
from mambaseg.data.splits import resolve_splits
from mambaseg.data.transforms import Transform, as_size, build_transforms
from mambaseg.data.validation import Problem, check_pair

__all__ = ["FolderDataset2D", "folder2d_cases"]


class FolderDataset2D(Dataset):
    """Image/mask pairs of one split of a folder dataset, resized (and augmented) for training.

    Layout: ``ROOT/<split>/images/<id>.<ext>`` with ``ROOT/<split>/masks/<id>.<ext>`` (or the ISIC name
    ``<id>_segmentation.<ext>``), ext one of png/jpg/jpeg/bmp/tif/tiff. When ``ROOT/val`` does not exist the
    ``train`` and ``val`` splits are taken from :func:`~mambaseg.data.resolve_splits` (a seeded carve of
    ``ROOT/train``, saved next to the data) unless ``ids`` are given.

    Items are dicts:

    * ``"image"``: float32 tensor (C, H, W) = ``image_size``; pixels scaled to [0, 1], then normalised with
      ``normalization`` when given.
    * ``"mask"``: int64 tensor (H, W) of class indices (0/1 for binary).
    * ``"id"``: the file stem; ``"path"``: the image path (str); ``"orig_size"``: (H, W) of the file.

    Args:
        root: dataset root.
        split: ``"train"``, ``"val"`` or ``"test"`` (any folder name under ``root`` works).
        image_size: output (H, W) (an int means square).
        augment: apply the training augmentation (``preset``); off = resize only.
        normalization: per-channel mean/std in [0, 1] units, or None for [0, 1] inputs.
        binary: masks are binary ({0,255} or {0,1}); otherwise label-indexed.
        label_values: multi-class only: raw mask value of each class (``label_values[k]`` -> class k).
        skip_bad: decode every pair now and leave out the bad ones (listed in ``self.skipped``) instead
            of failing; without it, an image without mask raises here and a corrupt file raises
            :class:`DatasetError` naming it when loaded.
        ids: restrict to these ids (in this order); they are looked up in ``ROOT/<split>`` and then in the
            other of the ``train``/``val`` folders (carved splits); ``test`` ids only in ``ROOT/test``.
        in_chans: 3 (RGB) or 1 (grey).
        preset: augmentation preset for :func:`~mambaseg.data.transforms.build_transforms`.
        transforms: custom joint transform replacing the preset (must end at ``image_size``).
        seed: when set, sample ``i`` in epoch ``e`` (see :meth:`set_epoch`) is augmented with
            ``numpy.random.default_rng([seed, e, i])``, independent of workers and processes; when None
            the generator is seeded from torch's RNG (per DataLoader worker, deterministic after
            ``torch.manual_seed``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        image_size: int | tuple[int, int],
        augment: bool,
        normalization: Normalization | None,
        binary: bool = True,
        label_values: Sequence[int] | None = None,
        skip_bad: bool = False,
        ids: Sequence[str] | None = None,
        in_chans: int = 3,
        preset: str = "vmunet_isic",
        transforms: Transform | None = None,
        seed: int | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} does not exist or is not a folder")
        self.split = str(split)
        self.image_size = as_size(image_size)
        self.augment = bool(augment)
        if normalization is not None and not isinstance(normalization, Normalization):
            raise TypeError(f"normalization must be a Normalization or None, got {type(normalization).__name__}")
        if normalization is not None and normalization.num_channels != in_chans:
            raise ValueError(
                f"normalization has {normalization.num_channels} channel(s) but in_chans={in_chans}"
            )
        self.normalization = normalization
        self.binary = bool(binary)
        if self.binary and label_values is not None:
            raise ValueError("label_values is only used for multi-class masks (binary=False)")
        self.label_values = None if label_values is None else [int(v) for v in label_values]
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.in_chans = in_chans
        self.seed = seed
        self.epoch = 0
        if transforms is None:
            transforms = build_transforms(self.image_size, augment=self.augment, preset=preset)
        self.transforms: Transform = transforms
        self._eval_transforms: Transform = build_transforms(self.image_size, augment=False)
        self.skipped: list[Problem] = []

        pairs = self._select_pairs(ids)
        missing = [p for p in pairs if p.mask is None]
        if skip_bad:
            good = []
            for p in pairs:
                problems = check_pair(
                    p, self.split, binary=self.binary, label_values=self.label_values, in_chans=in_chans
                )
                if problems:
                    self.skipped.extend(problems)
                else:
                    good.append(p)
            pairs = good
        elif missing:
            names = ", ".join(str(p.image) for p in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DatasetError(
                f"{len(missing)} image(s) without mask in split {self.split!r}: {names}{more}; expected a mask "
                "with the same stem (or the ISIC '_segmentation' suffix) in the masks folder (skip_bad=True skips them)"
            )
        if not pairs:
            raise DatasetError(f"{self.root}: split {self.split!r} has no usable image/mask pairs")
        self._pairs = pairs

    # ------------------------------------------------------------------ discovery
    def _select_pairs(self, ids: Sequence[str] | None) -> list[Pair]:
        split_dir = self.root / self.split
        has_val = (self.root / "val").is_dir()
        if ids is None:
            if split_dir.is_dir() and (has_val or self.split not in ("train",)):
                return list_split(split_dir).pairs
            if self.split in ("train", "val") and (self.root / "train").is_dir():
                ids = resolve_splits(self.root)[self.split]
            else:
                avail = sorted(p.name for p in self.root.iterdir() if p.is_dir())
                raise DatasetError(f"{self.root}: no split folder {self.split!r} (found: {avail or 'none'})")
        folders = [split_dir]
        if self.split in ("train", "val"):  # carved splits: ids may live in either folder, never in test
            folders += [self.root / s for s in ("train", "val") if s != self.split]
        lookup: dict[str, Pair] = {}
        for d in reversed(folders):  # the split's own folder wins
            if d.is_dir():
                lookup.update(list_split(d).by_id())
        ids = [str(i) for i in ids]
        unknown = [i for i in ids if i not in lookup]
        if unknown:
            where = ", ".join(str(d) for d in folders if d.is_dir())
            raise DatasetError(f"{len(unknown)} id(s) of split {self.split!r} not found in {where}: {unknown[:5]}")
        if len(set(ids)) != len(ids):
            raise DatasetError(f"ids of split {self.split!r} contain duplicates")
        return [lookup[i] for i in ids]

    # ------------------------------------------------------------------ properties
    @property
    def ids(self) -> list[str]:
        return [p.id for p in self._pairs]

    @property
    def image_paths(self) -> list[Path]:
        return [p.image for p in self._pairs]

    @property
    def mask_paths(self) -> list[Path]:
        return [p.mask for p in self._pairs]  # type: ignore[misc]

    @property
    def num_classes(self) -> int | None:
        """Model output channels: 1 for binary, ``len(label_values)`` for multi-class, None if unknown."""
        if self.binary:
            return 1
        return len(self.label_values) if self.label_values is not None else None

    @property
    def label_map(self) -> dict[str, Any]:
        """How mask values map to classes (for checkpoints)."""
        return {"binary": self.binary, "label_values": self.label_values}

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used in the augmentation seed (only matters when ``seed`` is set)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._pairs)

    # ------------------------------------------------------------------ loading
    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Original-size image (H, W, C) uint8 and mask (H, W) class indices of sample ``index``."""
        pair = self._pairs[index]
        img = read_image(pair.image, self.in_chans)
        if pair.mask is None:
            raise DatasetError(f"{pair.image}: image without mask")
        raw = read_mask(pair.mask)
        if raw.shape != img.shape[:2]:
            raise DatasetError(
                f"{pair.mask}: mask is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image {pair.image.name} is "
                f"{img.shape[1]}x{img.shape[0]}; expected the same size"
            )
        mask = mask_to_labels(
            raw,
            binary=self.binary,
            label_values=self.label_values,
            lossy=pair.mask.suffix.lower() in LOSSY_EXTENSIONS,
            path=pair.mask,
        )
        return img, mask

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng([int(self.seed), self.epoch, int(index)])
        s = torch.randint(0, 2**62, (1,)).item()
        return np.random.default_rng(int(s))

    def _to_unit(self, img: np.ndarray) -> np.ndarray:
        if img.dtype == np.uint8:
            return img.astype(np.float32) / 255.0
        return img.astype(np.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        index = index % len(self)
        pair = self._pairs[index]
        img, mask = self.load_pair(index)
        orig_size = (int(img.shape[0]), int(img.shape[1]))
        rng = self._rng(index) if self.augment else np.random.default_rng(0)
        img, mask = self.transforms(img, mask, rng)
        if mask.shape != self.image_size:
            raise ValueError(f"transforms produced a {mask.shape} mask; expected image_size {self.image_size}")
        x = self._to_unit(img)
        if self.normalization is not None:
            x = self.normalization.apply(x)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "id": pair.id,
            "orig_size": orig_size,
            "path": str(pair.image),
        }

    def iter_unnormalized_images(self) -> Iterator[np.ndarray]:
        """Yield each image resized to ``image_size`` without augmentation or normalisation, as float32
        (H, W, C) in [0, 1] (used by :func:`~mambaseg.data.compute_normalization`)."""
        for pair in self._pairs:
            img = read_image(pair.image, self.in_chans)
            dummy = np.zeros(img.shape[:2], dtype=np.uint8)
            img, _ = self._eval_transforms(img, dummy, np.random.default_rng(0))
            yield self._to_unit(img)

    def __repr__(self) -> str:
        return (
            f"FolderDataset2D(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"image_size={self.image_size}, augment={self.augment}, binary={self.binary})"
        )


# ---------------------------------------------------------------------------------------------------------------
# layout opener (see mambaseg.data.layouts)


def is_folder2d_root(root: Path) -> bool:
    """Whether ``root`` looks like ``ROOT/{train,val[,test]}/{images,masks}/``."""
    if not root.is_dir():
        return False
    return any((root / s / "images").is_dir() or (root / s).is_dir() for s in ("train", "val", "test"))


def folder_label_map(binary: bool, label_values: Sequence[int] | None) -> tuple[dict[str, int], int]:
    """``(label map, model output channels)`` of a 2-D folder task from ``data.binary`` / ``data.label_values``."""
    from mambaseg.data.task import DataTaskError, binary_label_map

    if binary:
        return binary_label_map(), 1
    values = label_values
    if not values:
        raise DataTaskError(
            "multi-class folder data needs data.label_values (the mask pixel value of each class index, "
            "e.g. --set data.label_values=[0,1,2,3])"
        )
    return {("background" if i == 0 else f"class_{i}"): int(v) for i, v in enumerate(values)}, len(values)


def folder2d_cases(root: Path) -> list[str]:
    """Ids of the images of ``ROOT/train`` and ``ROOT/val`` (the cross-validation pool; ``test`` is never in it)."""
    return [i for split in ("train", "val") if (root / split).is_dir() for i in list_split(root / split).ids]


def open_folder2d(root: Path, cfg: Any, *, splits: tuple[str, ...], normalization: Any) -> Any:
    """2-D folder dataset (:class:`FolderDataset2D`); a missing ``val`` is carved from ``train`` with a saved split."""
    from mambaseg.data.task import DataTask, image_size_of, open_splits
    from mambaseg.data.validation import validate_dataset

    size = image_size_of(cfg)
    label_map, num_classes = folder_label_map(cfg.data.binary, cfg.data.label_values)
    info: dict[str, Any] = {"root": str(root)}
    ids: dict[str, list[str]] = {}
    if any(s in ("train", "val") for s in splits):
        sp = resolve_splits(root, val_fraction=cfg.data.val_fraction, seed=cfg.data.split_seed,
                            split_file=cfg.data.split_file)
        ids = {k: list(v) for k, v in sp.items() if k in ("train", "val")}
        if getattr(sp, "path", None) is not None:
            info["split_file"] = str(sp.path)
    label_values = None if cfg.data.binary else cfg.data.label_values
    if cfg.data.validate:
        check = list(splits)
        if "val" in check and "train" not in check and not (root / "val").is_dir():
            check.append("train")  # a carved val lives in the train folder
        report = validate_dataset(root, splits=tuple(check), binary=cfg.data.binary, skip_bad=cfg.data.skip_bad,
                                  label_values=label_values)
        if report.problems:
            info["skipped"] = [str(x) for x in report.problems]

    def make(split: str, augment: bool, norm: Any) -> FolderDataset2D:
        return FolderDataset2D(root, split, image_size=size, augment=augment, normalization=norm,
                               binary=cfg.data.binary, label_values=label_values, skip_bad=cfg.data.skip_bad,
                               ids=ids.get(split), seed=cfg.train.seed, preset=cfg.data.augmentation)

    normalization, datasets = open_splits(make, splits, normalization, cfg.data.augment)
    in_chans = normalization.num_channels if normalization is not None else 3
    info.update({f"n_{s}": len(d) for s, d in datasets.items()})
    return DataTask(name="folder2d", datasets=datasets, evaluation="pixels2d", label_map=label_map,
                    num_classes=num_classes, in_chans=in_chans, normalization=normalization, info=info)
