"""Compact ``.npz`` caches of datasets, each format's writer beside its reader.

A cache holds a dataset at the network's input size, so training and evaluation can run where the original files
are not (e.g. on a GPU machine that only receives a checkout). ``mambaseg cache --data PATH --image-size S --out
FILE.npz`` (:func:`mambaseg.data.layouts.write_cache`) writes one; ``--data FILE.npz`` reads it back. Two formats:

* ``npz2d`` (:func:`write_npz2d` / :func:`open_npz2d`): a 2-D folder dataset. Per split ``{split}_images``
  (N, H, W, C) uint8 resized with the evaluation resize, ``{split}_masks`` (N, H, W) uint8 class indices (nearest),
  ``{split}_ids``, ``{split}_orig_sizes``, plus a JSON ``meta`` entry (source, size, label map, and how the mask
  values were read: ``binary``, ``label_values``). Augmentation runs on the stored images (:class:`ArrayDataset2D`).
* ``volcache`` (:func:`write_volcache` / :func:`open_volcache`): a volumetric task (ACDC, Synapse, nnU-Net) of
  single-channel images. Training slices zoomed to the network size; evaluation volumes with every slice zoomed to
  the network size, the labels at their ORIGINAL size and the source's voxel spacing (``{split}_spacing``), so
  per-volume metrics are those of the source data up to the 8-bit quantisation of the intensities (HD95 in mm
  where the source has a spacing, e.g. nnU-Net NIfTI; in voxels where it has none, ACDC/Synapse h5). Since format
  ``mambaseg-volcache/2`` the spacing of every training case (volume) at the cached grid is stored too
  (``train_case_ids``, ``train_case_spacing``), so a volume rebuilt from the cached training slices (a
  cross-validation fold's held-out case) is scored in mm like the cached volumes.

Older caches still open. Format ``mambaseg-volcache/1`` written before the evaluation spacing was stored (no
``{split}_spacing``): their volumes have no spacing, so HD95/NSD come in voxels; the run's header (``spacing`` in
the data info) and a warning say so. Format ``/1`` caches (or any without ``train_case_spacing``): the volumes rebuilt
from their training slices have no spacing (in voxels; scores that mix them with mm say so).
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mambaseg.data.task import (
    DataTask,
    DataTaskError,
    binary_label_map,
    image_size_of,
    open_splits,
    volume_label_map,
)
from mambaseg.data.transforms import resolve_augmentation
from mambaseg.data.volumetric import Volume

__all__ = [
    "ArrayDataset2D",
    "VOLCACHE_FORMAT",
    "VOLCACHE_FORMATS",
    "is_npz2d",
    "is_volcache",
    "npz2d_cases",
    "open_npz2d",
    "open_volcache",
    "volcache_cases",
    "write_npz2d",
    "write_volcache",
]

#: the format :func:`write_volcache` writes (``/2``: with the spacing of the training cases, ``train_case_spacing``)
VOLCACHE_FORMAT = "mambaseg-volcache/2"
#: the formats :func:`open_volcache` reads
VOLCACHE_FORMATS = ("mambaseg-volcache/1", VOLCACHE_FORMAT)


# ---------------------------------------------------------------------------------------------------------------
# npz2d: 2-D folder datasets at training size


def write_npz2d(data: str | Path, image_size: Sequence[int], out: str | Path,
                splits: Sequence[str] = ("train", "val"),
                progress: Callable[[str, int, int], None] | None = None, *,
                binary: bool = True, label_values: Sequence[int] | None = None) -> Path:
    """Write the ``npz2d`` cache of a 2-D folder dataset and return its path.

    Args:
        data: dataset root ``ROOT/{train,val[,test]}/{images,masks}``.
        image_size: stored (H, W).
        out: output ``.npz`` (compressed; written atomically).
        splits: splits to store.
        progress: optional ``(split, done, total)`` callback after each image.
        binary, label_values: how the mask files are read, as ``data.binary`` / ``data.label_values`` of a run on
            the folder (multi-class: ``binary=False`` and the mask pixel value of each class index). The cache
            stores the class indices, and the folder task's label map and class count in its ``meta``, so a run on
            the cache gets the labels a run on the folder gets.
    """
    from mambaseg.data.files import to_uint8
    from mambaseg.data.folder2d import FolderDataset2D, folder_label_map
    from mambaseg.data.transforms import Resize
    from mambaseg.utils.files import atomic_write_npz

    data, size = Path(data), (int(image_size[0]), int(image_size[-1]))
    values = None if binary else (None if label_values is None else [int(v) for v in label_values])
    label_map, num_classes = folder_label_map(bool(binary), values)
    arrays: dict[str, np.ndarray] = {}
    counts = {}
    resize = Resize(size)
    for split in splits:
        ds = FolderDataset2D(data, split, image_size=size, augment=False, normalization=None, binary=bool(binary),
                             label_values=values)
        imgs, masks, sizes = [], [], []
        for i in range(len(ds)):
            img, mask = ds.load_pair(i)
            sizes.append(img.shape[:2])
            img, mask = resize(img, mask.astype(np.uint8))
            imgs.append(to_uint8(img))  # the cache is 8-bit: 16-bit images are rounded to 256 levels here
            masks.append(mask)
            if progress is not None:
                progress(split, i + 1, len(ds))
        arrays[f"{split}_images"] = np.stack(imgs).astype(np.uint8)
        arrays[f"{split}_masks"] = np.stack(masks).astype(np.uint8)
        arrays[f"{split}_ids"] = np.asarray(ds.ids)
        arrays[f"{split}_orig_sizes"] = np.asarray(sizes, dtype=np.int32)
        counts[split] = len(ds)
    meta = {
        "source": str(data.resolve()),
        "image_size": list(size),
        "label_map": label_map,
        "num_classes": num_classes,
        "binary": bool(binary),
        "label_values": values,
        "counts": counts,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    arrays["meta"] = np.asarray(json.dumps(meta))
    return atomic_write_npz(out, **arrays)


def _size_note(path: Path, stored_hw: Sequence[int], size_hw: Sequence[int], source: str = "") -> str:
    """The ``cache_image_size`` of a run's data info: the stored (H, W), and the (H, W) it is resized to when the
    run's ``data.image_size`` differs. Upsampling (a larger size than stored) also warns: the network gets no more
    detail than the cache holds, yet a run records the larger size (its checkpoint's ``image_size``)."""
    stored, size = (int(stored_hw[0]), int(stored_hw[-1])), (int(size_hw[0]), int(size_hw[-1]))
    if size == stored:
        return f"{stored}"
    if size[0] <= stored[0] and size[1] <= stored[1]:
        return f"cache stored at {stored}, resized to {size}"
    arg = f"{size[0]}" if size[0] == size[1] else f"{size[0]},{size[1]}"
    warnings.warn(
        f"{path}: the cache is stored at {stored[0]}x{stored[1]}, upsampled to {size[0]}x{size[1]} for "
        f"data.image_size (--image-size): the network sees no more detail than the stored {stored[0]}x{stored[1]}; "
        f"for {size[0]}x{size[1]} detail build a cache at that size: mambaseg cache --data {source or 'SOURCE'} "
        f"--image-size {arg} --out NEW.npz", RuntimeWarning, stacklevel=3)
    return f"cache stored at {stored}, upsampled to {size} (no more detail than stored)"


class ArrayDataset2D(Dataset):
    """2-D dataset over in-memory uint8 arrays (the ``npz2d`` cache of :func:`write_npz2d`).

    Args:
        images: (N, H, W, C) uint8.
        masks: (N, H, W) uint8 class indices (0/1 for binary).
        ids: N sample ids.
        image_size: output (H, W); the arrays are usually stored at this size already.
        augment: apply the training augmentation ``preset`` (default the VM-UNet ISIC set: flips, rotation).
        normalization: ``mambaseg.data.Normalization`` applied to the ``[0, 1]``-scaled image, or ``None``.
        orig_sizes: (N, 2) original (H, W) of each image (defaults to the array size).

    Items follow ``FolderDataset2D``: ``{"image": float32 (C, H, W), "mask": int64 (H, W), "id", "orig_size",
    "path"}``. Each augmentation draws from a NumPy generator seeded from torch's RNG, so the DataLoader's
    per-worker torch seeds (and the trainer's per-epoch seeds) make it reproducible; with ``seed`` set, sample
    ``i`` of epoch ``e`` uses ``numpy.random.default_rng([seed, e, i])`` whatever the worker or process.
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        ids: list[str],
        *,
        image_size: tuple[int, int],
        augment: bool,
        normalization: Any = None,
        orig_sizes: np.ndarray | None = None,
        source: str = "",
        seed: int | None = None,
        preset: str = "vmunet_isic",
    ) -> None:
        from mambaseg.data.transforms import build_transforms

        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        if masks.shape != images.shape[:3]:
            raise ValueError(f"masks must be (N, H, W) = {images.shape[:3]}, got {masks.shape}")
        if len(ids) != images.shape[0]:
            raise ValueError(f"{len(ids)} ids for {images.shape[0]} images")
        self.images, self.masks, self.ids = images, masks, list(ids)
        self.orig_sizes = orig_sizes if orig_sizes is not None else np.tile(images.shape[1:3], (len(ids), 1))
        self.normalization = normalization
        self.transform = build_transforms(image_size, augment=augment, preset=preset)
        self.source = source
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch used in the augmentation seed (only matters when ``seed`` is set)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def iter_unnormalized_images(self) -> Iterator[np.ndarray]:
        """Resized, un-augmented images in ``[0, 1]`` units (for ``compute_normalization``)."""
        from mambaseg.data.transforms import Resize

        size = self.transform.transforms[-1].size if hasattr(self.transform, "transforms") else None
        for img, m in zip(self.images, self.masks):
            if size is not None and tuple(img.shape[:2]) != tuple(size):
                img, _ = Resize(size)(img, m)
            yield img.astype(np.float32) / 255.0

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.seed is not None:
            rng = np.random.default_rng([int(self.seed), self.epoch, int(i)])
        else:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        img, mask = self.transform(self.images[i], self.masks[i], rng)
        x = img.astype(np.float32) / 255.0
        if self.normalization is not None:
            x = self.normalization.apply(x)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
            "id": self.ids[i],
            "orig_size": tuple(int(v) for v in self.orig_sizes[i]),
            "path": f"{self.source}#{self.ids[i]}",
        }


def npz2d_cases(path: Path) -> list[str]:
    """Ids of the cached ``train`` and ``val`` images (the cross-validation pool)."""
    from mambaseg.data.folds import npz_pool

    with np.load(path, allow_pickle=False) as z:
        return npz_pool(z)


def is_npz2d(path: Path) -> bool:
    """Whether ``path`` is a ``.npz`` file (the volumetric cache is detected first, by its ``vol_meta``)."""
    return path.is_file() and path.suffix == ".npz"


def _check_npz2d(arrays: Mapping[str, np.ndarray], path: Path, num_classes: int) -> None:
    """Check every split of an ``npz2d`` cache (hand-made ones included) before it is used: ``{split}_images``
    uint8 (N, H, W, C), ``{split}_masks`` integer (N, H, W) class indices ({0, 1} for binary, else
    0..num_classes-1), ``{split}_ids`` N ids.

    Raises:
        DatasetError: naming the ``.npz`` file, the key and, for mask values, the offending values and first cases.
    """
    from mambaseg.data.files import DatasetError

    allowed = 2 if num_classes == 1 else num_classes
    rule = "{0, 1} (binary task)" if num_classes == 1 else f"0..{num_classes - 1} (the label map's class indices)"
    for key in sorted(k for k in arrays if k.endswith("_images")):
        split = key[: -len("_images")]
        images = arrays[key]
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DatasetError(
                f"{path}: key {key!r} is {images.dtype} {tuple(images.shape)}; expected uint8 (N, H, W, C) images "
                "with values 0..255 (a float array in [0, 1]: np.rint(x * 255).astype(np.uint8); grey: x[..., None])")
        mkey, ikey = f"{split}_masks", f"{split}_ids"
        if mkey not in arrays:
            raise DatasetError(f"{path}: key {key!r} has no {mkey!r} beside it; expected (N, H, W) masks per split")
        masks = arrays[mkey]
        if masks.dtype.kind not in "biu" or masks.shape != images.shape[:3]:
            raise DatasetError(
                f"{path}: key {mkey!r} is {masks.dtype} {tuple(masks.shape)}; expected integer class indices "
                f"(N, H, W) = {tuple(images.shape[:3])}, e.g. uint8")
        ids = [str(i) for i in arrays[ikey]] if ikey in arrays else None
        if ids is None or len(ids) != images.shape[0]:
            got = "missing" if ids is None else f"{len(ids)} ids"
            raise DatasetError(f"{path}: key {ikey!r} is {got}; expected one id per image ({images.shape[0]})")
        vals = (np.flatnonzero(np.bincount(masks.ravel(), minlength=256)) if masks.dtype == np.uint8
                else np.unique(masks))
        bad = [int(v) for v in vals if not 0 <= int(v) < allowed]
        if bad:
            bad_arr = np.asarray(bad, dtype=masks.dtype)
            cases = [ids[n] for n in range(len(ids)) if np.isin(masks[n], bad_arr).any()]
            more = f" and {len(cases) - 5} more" if len(cases) > 5 else ""
            hint = ""
            if num_classes == 1:
                hint = ("; a 0/255 mask? store (mask > 127).astype(np.uint8)" if 255 in bad else
                        "; a multi-class cache? its JSON 'meta' entry must give num_classes and label_map")
            raise DatasetError(
                f"{path}: key {mkey!r} holds values {bad[:8]}{' ...' if len(bad) > 8 else ''} outside {rule} in "
                f"{len(cases)} case(s): {', '.join(cases[:5])}{more}{hint}")


def open_npz2d(path: Path, cfg: Any, *, splits: tuple[str, ...], normalization: Any) -> DataTask:
    """``npz2d`` layout opener: the training-size uint8 cache written by :func:`write_npz2d`.

    Every split of the file is checked first (:func:`_check_npz2d`): a hand-made cache with float images or 0/255
    masks is refused naming the file and the key, not met later as a loss error.
    """
    size = image_size_of(cfg)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    label_map = {str(k): int(v) for k, v in meta.get("label_map", binary_label_map()).items()}
    num_classes = int(meta.get("num_classes", 1))
    _check_npz2d(arrays, path, num_classes)

    picked: dict[str, dict[str, np.ndarray]] = {}
    if cfg.data.split_file:  # e.g. a cross-validation fold: train/val taken by id from the cache's train + val
        from mambaseg.data.folds import select_pool

        picked = select_pool(arrays, cfg.data.split_file, path, splits)

    def make(split: str, augment: bool, norm: Any) -> ArrayDataset2D:
        if split in picked:
            part = picked[split]
            return ArrayDataset2D(part["images"], part["masks"], [str(s) for s in part["ids"]], image_size=size,
                                  augment=augment, normalization=norm, orig_sizes=part.get("orig_sizes"),
                                  source=str(path), seed=cfg.train.seed, preset=cfg.data.augmentation)
        if f"{split}_images" not in arrays:
            have = sorted({k.rsplit("_", 1)[0] for k in arrays if k.endswith("_images")})
            raise DataTaskError(f"{path}: no split {split!r} in the cache (it has {have})")
        return ArrayDataset2D(
            arrays[f"{split}_images"],
            arrays[f"{split}_masks"],
            [str(s) for s in arrays[f"{split}_ids"]],
            image_size=size,
            augment=augment,
            normalization=norm,
            orig_sizes=arrays.get(f"{split}_orig_sizes"),
            source=str(path),
            seed=cfg.train.seed,
            preset=cfg.data.augmentation,
        )

    normalization, datasets = open_splits(make, splits, normalization, cfg.data.augment)
    in_chans = int(arrays[f"{splits[0]}_images"].shape[-1])
    stored = next(iter(d.images for d in datasets.values())).shape[1:3]
    info_size = _size_note(path, stored, size, str(meta.get("source") or ""))
    return DataTask(
        name="npz2d",
        datasets=datasets,
        evaluation="pixels2d",
        label_map=label_map,
        num_classes=num_classes,
        in_chans=in_chans,
        normalization=normalization,
        info={"root": str(path), "cache_meta": meta, "cache_image_size": info_size,
              **{f"n_{s}": len(d) for s, d in datasets.items()},
              **({"split_file": str(cfg.data.split_file)} if picked else {})},
    )


# ---------------------------------------------------------------------------------------------------------------
# volcache: volumetric tasks at network size


def write_volcache(
    path: str | Path,
    *,
    name: str,
    label_names: Mapping[int, str],
    num_classes: int,
    image_size: Sequence[int],
    train: Dataset | None,
    eval_splits: Mapping[str, Dataset],
    progress: Callable[[str, int, int], None] | None = None,
    source: str | Path | None = None,
) -> Path:
    """Write a compact ``.npz`` cache of a volumetric task (uint8 images at ``image_size``).

    Training slices are stored resized (order-3 image zoom, order-0 labels) without augmentation or normalisation,
    with the voxel spacing of each training case (the volume of slices ``<case>_slice<z>``) at the cached grid
    (``train_case_ids`` (M,), ``train_case_spacing`` (M, 3) per (D, H, W) axis in mm: the source's spacing resized
    as the slices were, :func:`~mambaseg.data.volumetric.zoom_spacing`; NaN where the source has none or its slices
    disagree); evaluation volumes store each slice zoomed to ``image_size``, the labels at their ORIGINAL size and the
    voxel spacing of the source (``{split}_spacing``, (N, 3) per (D, H, W) axis in mm, NaN where the source has
    none), so the per-volume evaluation (predict at network size, zoom back, compare; HD95 in the source's units) is
    the one on the source data up to the 8-bit quantisation of the intensities.

    Only single-channel images are stored: a dataset of several channels is refused before any slice is read
    (nothing is written).

    Args:
        path: output ``.npz`` (compressed).
        name: dataset name recorded in the metadata.
        label_names: foreground ``{value: name}``.
        num_classes: classes incl. background.
        image_size: (H, W) of the stored images.
        train: a :class:`~mambaseg.data.volumetric.SliceDataset2D` (or ``None``); its spacing comes from
            :meth:`~mambaseg.data.volumetric.SliceDataset2D.spacing_of`.
        eval_splits: ``{"val": VolumeDataset, "test": VolumeDataset}``.
        progress: optional ``(split, done, total)`` callback after each training slice / evaluation volume.
        source: the dataset's path, for messages and the metadata (default: messages name ``path``, the metadata
            none).

    Raises:
        DataTaskError: the images have several channels (naming the dataset and the channel count).
    """
    from mambaseg.data.volumetric import zoom_image, zoom_labels

    size = (int(image_size[0]), int(image_size[1]))
    arrays: dict[str, np.ndarray] = {}
    where = str(source) if source is not None else f"{path} (cache being written)"

    def refuse(channels: int) -> None:
        raise DataTaskError(
            f"{where}: the {name} dataset has {channels} image channels; the volume cache stores single-channel "
            f"images only, so nothing was cached (train and evaluate on the dataset folder itself, which reads every "
            f"channel)")

    # every check before the first slice is read: a refused dataset costs no time and leaves no file
    if train is not None and int(getattr(train, "in_chans", 1)) != 1:
        refuse(int(getattr(train, "in_chans")))
    for vols in eval_splits.values():
        first: Any = vols[0] if len(vols) else None  # type: ignore[arg-type]
        if first is not None and first.num_channels != 1:
            refuse(first.num_channels)

    def q(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)

    splits_meta: dict[str, Any] = {}
    if train is not None:
        imgs, labs, ids = [], [], []
        case_spacing = _CaseSpacing()
        spacing_of = getattr(train, "spacing_of", None)
        for i in range(len(train)):  # type: ignore[arg-type]
            image, label = train.load(i)  # type: ignore[attr-defined]
            imgs.append(q(zoom_image(image, size, order=3)[..., 0]))
            labs.append(zoom_labels(label.astype(np.uint8), size))
            ids.append(train.ids[i])  # type: ignore[attr-defined]
            # the case's spacing at the stored grid: resized from this slice's (h, w) to ``size`` as it was above
            case_spacing.add(ids[-1], None if spacing_of is None else spacing_of(i), image.shape[:2], size)
            if progress is not None:
                progress("train", i + 1, len(train))  # type: ignore[arg-type]
        arrays["train_images"] = np.stack(imgs)
        arrays["train_labels"] = np.stack(labs)
        arrays["train_ids"] = np.asarray(ids)
        arrays["train_case_ids"], arrays["train_case_spacing"] = case_spacing.arrays()
        splits_meta["train"] = len(ids)
    for split, vols in eval_splits.items():
        imgs, flat, shapes, ids, spacings = [], [], [], [], []
        for vol in vols:  # type: ignore[attr-defined]
            if vol.num_channels != 1:
                refuse(vol.num_channels)
            imgs.extend(q(zoom_image(vol.slice_image(z), size, order=3)[..., 0]) for z in range(vol.spatial_shape[0]))
            flat.append(np.asarray(vol.label, dtype=np.uint8).ravel())
            shapes.append(vol.label_shape)
            ids.append(vol.id)
            spacings.append([np.nan] * 3 if vol.spacing is None else [float(v) for v in vol.spacing])
            if progress is not None:
                progress(split, len(ids), len(vols))  # type: ignore[arg-type]
        arrays[f"{split}_images"] = np.stack(imgs)
        arrays[f"{split}_labels_flat"] = np.concatenate(flat)
        arrays[f"{split}_shapes"] = np.asarray(shapes, dtype=np.int64)
        arrays[f"{split}_ids"] = np.asarray(ids)
        arrays[f"{split}_spacing"] = np.asarray(spacings, dtype=np.float64).reshape(len(ids), 3)
        splits_meta[split] = len(ids)
    meta = {
        "format": VOLCACHE_FORMAT,
        "name": name,
        **({"source": str(source)} if source is not None else {}),
        "label_names": {str(k): v for k, v in label_names.items()},
        "num_classes": int(num_classes),
        "image_size": list(size),
        "splits": splits_meta,
        "image_encoding": "uint8 = round(255 * intensity in [0, 1])",
        "spacing": "{split}_spacing: (N, 3) voxel size per (D, H, W) axis of the labels (mm), NaN: none in the source",
        "train_spacing": ("train_case_spacing: (M, 3) voxel size per (D, H, W) axis of the volume of the training "
                          "slices <case>_slice<z> of train_case_ids at the stored image_size (mm): the source's, "
                          "in-plane times (n - 1) / (N - 1) as scipy.ndimage.zoom resized the slices from n to N "
                          "pixels; NaN: none in the source, or its slices disagree"),
    }
    arrays["vol_meta"] = np.asarray(json.dumps(meta))
    from mambaseg.utils.files import atomic_write_npz

    return atomic_write_npz(path, **arrays)


class _CaseSpacing:
    """The spacing (D, H, W) of each training case at the cached grid, gathered slice by slice while writing."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[float, float, float] | None]] = {}

    def add(self, slice_id: str, spacing: Sequence[float] | None, hw: Sequence[int], size: Sequence[int]) -> None:
        from mambaseg.data.files import DatasetError
        from mambaseg.data.volumetric import slice_case, zoom_spacing

        try:
            case = slice_case(slice_id)[0]
        except DatasetError:  # not a slice of a named volume: no volume is ever rebuilt from it
            return
        self.rows.setdefault(case, []).append(zoom_spacing(spacing, hw, size))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(case ids (M,), spacing (M, 3))``; a NaN row where a slice has none or the slices disagree."""
        out = []
        for rows in self.rows.values():
            first = rows[0]
            same = first is not None and all(r is not None and np.allclose(r, first, rtol=1e-6, atol=0.0)
                                             for r in rows)
            out.append(list(first) if same else [np.nan] * 3)  # type: ignore[arg-type]
        return np.asarray(list(self.rows), dtype=str), np.asarray(out, dtype=np.float64).reshape(len(out), 3)


class _CacheSliceLoader:
    """Picklable ``loader(i) -> (image in [0, 1], label)`` over the cached uint8 training slices; ``spacing(i)``: the
    spacing of slice ``i``'s case at the cached grid (``spacing`` (N, 3) per slice, NaN: none; ``None``: a cache that
    stores none)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, spacing: np.ndarray | None = None) -> None:
        self.images, self.labels, self.spacing_rows = images, labels, spacing

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[i].astype(np.float32) / 255.0, self.labels[i]

    def spacing(self, i: int) -> tuple[float, ...] | None:
        row = None if self.spacing_rows is None else self.spacing_rows[i]
        return None if row is None or not np.all(np.isfinite(row)) else tuple(float(v) for v in row)


class _CacheVolumeLoader:
    """Picklable ``loader(i) -> Volume`` over cached volumes (images at network size, labels at original size)."""

    def __init__(self, images: np.ndarray, labels_flat: np.ndarray, shapes: np.ndarray, ids: list[str],
                 source: str, spacing: np.ndarray | None = None) -> None:
        self.images, self.flat, self.shapes, self.ids, self.source = images, labels_flat, shapes, ids, source
        self.spacing = spacing  # (N, 3), NaN rows: none in the source; None: a cache written before it was stored
        self.zoff = np.concatenate([[0], np.cumsum(shapes[:, 0])])
        self.loff = np.concatenate([[0], np.cumsum(np.prod(shapes, axis=1))])

    def __call__(self, i: int) -> Volume:
        d, h, w = (int(v) for v in self.shapes[i])
        row = None if self.spacing is None else self.spacing[i]
        spacing = None if row is None or not np.all(np.isfinite(row)) else tuple(float(v) for v in row)
        return Volume(
            id=self.ids[i], image=self.images[self.zoff[i]:self.zoff[i + 1]].astype(np.float32) / 255.0,
            label=self.flat[self.loff[i]:self.loff[i + 1]].reshape(d, h, w), spacing=spacing,
            path=f"{self.source}#{self.ids[i]}", source_format="npz", target_hw=(h, w),
        )


def _slice_spacing(arrays: Mapping[str, np.ndarray], ids: list[str], path: Path) -> np.ndarray | None:
    """(N, 3) spacing of the case of each cached training slice (NaN: none), from ``train_case_ids`` /
    ``train_case_spacing``; ``None`` for a cache without ``train_case_spacing`` (format ``/1``).

    Raises:
        DataTaskError: ``train_case_spacing`` without ``train_case_ids``, or of another shape than (M, 3).
    """
    from mambaseg.data.files import DatasetError
    from mambaseg.data.volumetric import slice_case

    if "train_case_spacing" not in arrays:
        return None
    if "train_case_ids" not in arrays:
        raise DataTaskError(f"{path}: key 'train_case_spacing' without 'train_case_ids' (the case of each row)")
    cases, spacing = [str(c) for c in arrays["train_case_ids"]], np.asarray(arrays["train_case_spacing"], np.float64)
    if spacing.shape != (len(cases), 3):
        raise DataTaskError(f"{path}: key 'train_case_spacing' is {tuple(spacing.shape)}; expected ({len(cases)}, 3), "
                            "one row per train_case_ids")
    row_of = {c: spacing[k] for k, c in enumerate(cases)}
    none = np.full(3, np.nan)
    out = np.empty((len(ids), 3), np.float64)
    for i, name in enumerate(ids):
        try:
            out[i] = row_of.get(slice_case(name)[0], none)
        except DatasetError:
            out[i] = none
    return out


def volcache_cases(path: Path) -> list[str]:
    """The cached volumes of ``val`` and the volumes of the cached training slices (``<case>_slice<z>``): the
    cross-validation pool (``test`` is never in it)."""
    from mambaseg.data.volumetric import slice_case

    with np.load(path, allow_pickle=False) as z:
        slices = [str(i) for i in z["train_ids"]] if "train_ids" in z.files else []
        vols = [str(i) for i in z["val_ids"]] if "val_ids" in z.files else []
    return list(dict.fromkeys(slice_case(n)[0] for n in slices)) + vols


def is_volcache(path: Path) -> bool:
    """Whether ``path`` is a ``.npz`` holding a ``vol_meta`` entry."""
    if not (path.is_file() and path.suffix == ".npz"):
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return "vol_meta" in z.files
    except (OSError, ValueError):
        return False


def open_volcache(path: Path, cfg: Any, *, splits: tuple[str, ...], normalization: Any) -> DataTask:
    """``volcache`` layout opener: training slices and evaluation volumes stored at the network size."""
    from mambaseg.data.volumetric import SliceDataset2D, VolumeDataset, fold_split_datasets, paper_normalization

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["vol_meta"]))
    if meta.get("format") not in VOLCACHE_FORMATS:
        raise DataTaskError(f"{path}: cache format {meta.get('format')!r}, expected one of {list(VOLCACHE_FORMATS)} "
                            "(a cache written by another mambaseg version: rebuild it with mambaseg cache)")
    label_names = {int(k): str(v) for k, v in meta["label_names"].items()}
    num_classes = int(meta["num_classes"])
    stored = tuple(int(s) for s in meta["image_size"])
    norm = normalization if normalization is not None else paper_normalization(1)

    def slices() -> SliceDataset2D:
        if "train_images" not in arrays:
            raise DataTaskError(f"{path}: the cache has no training slices")
        ids = [str(i) for i in arrays["train_ids"]]
        loader = _CacheSliceLoader(arrays["train_images"], arrays["train_labels"], _slice_spacing(arrays, ids, path))
        return SliceDataset2D(ids, loader,
                              image_size=image_size_of(cfg), augment=cfg.data.augment,
                              preset=resolve_augmentation(cfg.data.augmentation, "msvmunet"),
                              num_classes=num_classes, label_names=label_names, normalization=norm,
                              paths=[f"{path}#{i}" for i in ids])

    no_spacing: list[str] = []  # evaluation splits of a cache written before the spacing was stored

    def volumes(s: str) -> VolumeDataset:
        if f"{s}_images" not in arrays:
            have = sorted(k[: -len("_shapes")] for k in arrays if k.endswith("_shapes"))
            raise DataTaskError(f"{path}: no split {s!r} in the cache (it has {have})")
        ids = [str(i) for i in arrays[f"{s}_ids"]]
        spacing = arrays.get(f"{s}_spacing")
        if spacing is not None and spacing.shape != (len(ids), 3):
            raise DataTaskError(f"{path}: key '{s}_spacing' is {tuple(spacing.shape)}; expected ({len(ids)}, 3)")
        if spacing is None and s not in no_spacing:
            no_spacing.append(s)
            warnings.warn(
                f"{path}: the cache has no voxel spacing for its {s!r} volumes (written before mambaseg cache stored "
                f"it): HD95 and NSD are in voxels, not in the source's mm; rebuild it with mambaseg cache to get them "
                f"in mm", RuntimeWarning, stacklevel=2)
        loader = _CacheVolumeLoader(arrays[f"{s}_images"], arrays[f"{s}_labels_flat"], arrays[f"{s}_shapes"], ids,
                                    str(path), spacing)
        return VolumeDataset(ids, loader, label_names=label_names, num_classes=num_classes)

    ds: dict[str, Dataset] = fold_split_datasets(  # a cross-validation fold's train slices and held-out volumes
        cfg.data.split_file, splits, pool=lambda: volcache_cases(path), slices=slices,
        volumes=lambda: {"val": volumes("val")} if "val_ids" in arrays else {})
    for s in splits:
        if s not in ds:
            ds[s] = slices() if s == "train" else volumes(s)
    info_size = _size_note(path, stored, image_size_of(cfg), str(meta.get("source") or ""))
    spacing_note = {}
    if no_spacing:
        spacing_note = {"spacing": f"none stored for {', '.join(no_spacing)} (a cache written before mambaseg cache "
                                   f"stored the voxel spacing): HD95/NSD in voxels; rebuild the cache for mm"}
    return DataTask(name="volcache", datasets=ds, evaluation="volume_slicewise",
                    label_map=volume_label_map(label_names), num_classes=num_classes, in_chans=1, normalization=norm,
                    info={"root": str(path), "cache": meta.get("name"), "cache_image_size": info_size,
                          **spacing_note, **{f"n_{s}": len(d) for s, d in ds.items()},
                          **({"split_file": str(cfg.data.split_file)} if cfg.data.split_file else {})})

