"""Data "tasks": turn a dataset path into datasets, an evaluator and a label map, whatever the layout.

:func:`open_data` is the single entry point of the trainer, ``mambaseg evaluate`` and the demo. It picks a
registered *layout* (explicitly by name via ``cfg.data.layout`` or by auto-detection) and calls its opener, which
returns a :class:`DataTask`. Layouts shipped here:

* ``folder2d``: ``ROOT/{train,val[,test]}/{images,masks}/`` (``mambaseg.data.FolderDataset2D``; a missing ``val``
  is carved from ``train`` with a seeded, saved split file).
* ``npz2d``: a ``.npz`` cache written by ``benchmarks/make_cache.py`` (uint8 arrays already at training size),
  used where the original images are not available (e.g. the GPU machine).

Registering a new layout (volumetric datasets, nnU-Net folders, ...) takes one decorated function, in the module
that implements the layout::

    from mambaseg.engine.tasks import DataTask, register_layout

    @register_layout("acdc", detect=lambda root: (root / "train_slices.list").is_file(), priority=10)
    def open_acdc(root, cfg, *, splits, normalization):
        ...
        return DataTask(name="acdc", datasets={"train": tr, "val": va}, evaluator=MyVolumeEvaluator(...),
                        label_map={"background": 0, "RV": 1, "Myo": 2, "LV": 3}, num_classes=4, in_chans=1,
                        normalization=None)

and importing that module from ``mambaseg/engine/__init__.py`` (or anywhere before :func:`open_data` is called).
The opener receives the dataset root, the full :class:`~mambaseg.configs.RunConfig`, the tuple of split names
wanted (``("train", "val")`` for training, ``("val",)`` or ``("test",)`` for evaluation) and the input
normalisation to use (``None`` when training: compute it from the training split if the task needs one; the value
stored in the checkpoint when evaluating). Datasets must yield dicts with at least ``"image"`` (float32 (C, H, W)),
``"mask"`` (int64 class indices) and ``"id"`` (str); the evaluator decides how validation is run (see
:mod:`mambaseg.engine.evaluator`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from mambaseg.engine.evaluator import Evaluator, SegmentationEvaluator2D

if TYPE_CHECKING:
    from mambaseg.configs import RunConfig

__all__ = [
    "DataTask",
    "DataLayout",
    "DataTaskError",
    "register_layout",
    "list_layouts",
    "detect_layout",
    "open_data",
    "ArrayDataset2D",
    "binary_label_map",
]


class DataTaskError(ValueError):
    """The data path cannot be opened as any known layout (or the chosen layout rejects it)."""


@dataclass
class DataTask:
    """Everything the trainer/evaluator needs from a dataset.

    Unpacks as ``train_ds, val_ds, evaluator, label_map = task``.

    Attributes:
        name: layout name.
        datasets: split name -> dataset (only the splits asked for).
        evaluator: how to compute metrics on these datasets.
        label_map: class name -> mask pixel value, in class-index order (written predictions use these values).
        num_classes: model output channels (1 for binary tasks).
        in_chans: image channels.
        normalization: input normalisation (``mambaseg.data.Normalization``) or ``None``.
        info: free-form facts to record in logs/checkpoints (split file, counts, skipped files, ...).
    """

    name: str
    datasets: dict[str, Dataset]
    evaluator: Evaluator
    label_map: dict[str, int]
    num_classes: int
    in_chans: int
    normalization: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def train(self) -> Dataset | None:
        return self.datasets.get("train")

    @property
    def val(self) -> Dataset | None:
        return self.datasets.get("val")

    def __iter__(self) -> Iterator[Any]:
        yield self.train
        yield self.val
        yield self.evaluator
        yield self.label_map


Opener = Callable[..., DataTask]


@dataclass(frozen=True)
class DataLayout:
    """A registered layout: ``detect(root) -> bool`` and ``open(root, cfg, *, splits, normalization) -> DataTask``."""

    name: str
    detect: Callable[[Path], bool]
    open: Opener
    priority: int = 0
    description: str = ""


_LAYOUTS: dict[str, DataLayout] = {}


def register_layout(
    name: str, *, detect: Callable[[Path], bool], priority: int = 0, description: str = ""
) -> Callable[[Opener], Opener]:
    """Decorator registering a layout opener (see the module docstring).

    Args:
        name: layout name (``cfg.data.layout`` selects it explicitly).
        detect: returns True when a path looks like this layout (must not raise; should be cheap).
        priority: detectors with a higher priority are tried first (specific layouts > generic folders).
        description: one line shown in error messages.
    """

    def deco(fn: Opener) -> Opener:
        if name in _LAYOUTS:
            raise ValueError(f"data layout {name!r} is registered twice")
        desc = description or (fn.__doc__ or "").strip().split("\n")[0]
        _LAYOUTS[name] = DataLayout(name=name, detect=detect, open=fn, priority=priority, description=desc)
        return fn

    return deco


def list_layouts() -> list[str]:
    """Registered layout names, in detection order."""
    return [lay.name for lay in sorted(_LAYOUTS.values(), key=lambda x: (-x.priority, x.name))]


def detect_layout(path: str | Path) -> str:
    """Name of the first layout (by priority) whose detector accepts ``path``.

    Raises:
        DataTaskError: no layout matches; the message lists what each layout expects.
    """
    p = Path(path)
    for name in list_layouts():
        lay = _LAYOUTS[name]
        try:
            if lay.detect(p):
                return name
        except OSError:
            continue
    expected = "; ".join(f"{n}: {_LAYOUTS[n].description}" for n in list_layouts())
    raise DataTaskError(f"cannot recognise the dataset layout of {str(p)!r}; expected one of — {expected}")


def open_data(
    path: str | Path | None,
    cfg: RunConfig,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    normalization: Any = None,
    layout: str | None = None,
) -> DataTask:
    """Open a dataset for training or evaluation.

    Args:
        path: dataset root or cache file (``None``: ``cfg.data.path``).
        cfg: the run configuration (image size, augmentation, split options, ...).
        splits: which splits to build.
        normalization: input normalisation to use; ``None`` = compute it from the training split.
        layout: force a layout name (default ``cfg.data.layout``, else auto-detect).

    Returns:
        A :class:`DataTask`.

    Raises:
        DataTaskError: no path, missing path, unknown layout, or no layout recognises the path.
    """
    import mambaseg.engine  # noqa: F401  (importing the package registers every shipped layout)

    path = path if path is not None else cfg.data.path
    if path is None:
        raise DataTaskError("no dataset given: pass --data PATH (or set data.path in the config)")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataTaskError(f"dataset path {str(p)!r} does not exist")
    name = layout or cfg.data.layout or detect_layout(p)
    if name not in _LAYOUTS:
        raise DataTaskError(f"unknown data layout {name!r}; registered layouts: {', '.join(list_layouts())}")
    task = _LAYOUTS[name].open(p, cfg, splits=tuple(splits), normalization=normalization)
    missing = [s for s in splits if s not in task.datasets]
    if missing:
        raise DataTaskError(f"layout {name!r} did not provide the split(s) {missing} for {str(p)!r}")
    return task


def binary_label_map() -> dict[str, int]:
    """Label map of binary tasks: background written as 0, foreground as 255."""
    return {"background": 0, "foreground": 255}


def _label_map(cfg: RunConfig) -> tuple[dict[str, int], int]:
    if cfg.data.binary:
        return binary_label_map(), 1
    values = cfg.data.label_values
    if not values:
        raise DataTaskError(
            "multi-class folder data needs data.label_values (the mask pixel value of each class index, "
            "e.g. --set data.label_values=[0,1,2,3])"
        )
    return {("background" if i == 0 else f"class_{i}"): int(v) for i, v in enumerate(values)}, len(values)


def _open_splits(make: Callable[[str, bool, Any], Any], splits: tuple[str, ...], normalization: Any,
                 augment: bool) -> tuple[Any, dict[str, Any]]:
    """Build every split with ``make(split, augment, normalization)``; the normalisation, when not given, is
    computed on the un-augmented training split (only the training split is augmented)."""
    from mambaseg.data import compute_normalization

    if normalization is None:
        if "train" not in splits:
            raise DataTaskError("the input normalisation must be given when the training split is not opened")
        normalization = compute_normalization(make("train", False, None))
    return normalization, {s: make(s, augment and s == "train", normalization) for s in splits}


# ---------------------------------------------------------------------------------------------------------------
# layout: folder2d


def _looks_like_folder2d(root: Path) -> bool:
    if not root.is_dir():
        return False
    return any((root / s / "images").is_dir() or (root / s).is_dir() for s in ("train", "val", "test"))


@register_layout(
    "folder2d",
    detect=_looks_like_folder2d,
    priority=0,
    description="a folder ROOT/{train,val[,test]}/{images,masks}/ of 2-D images and masks matched by file stem",
)
def open_folder2d(root: Path, cfg: RunConfig, *, splits: tuple[str, ...], normalization: Any) -> DataTask:
    """2-D folder dataset (``mambaseg.data.FolderDataset2D``)."""
    from mambaseg.data import FolderDataset2D, resolve_splits, validate_dataset

    size = tuple(int(s) for s in cfg.data.image_size)
    label_map, num_classes = _label_map(cfg)
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

    normalization, datasets = _open_splits(make, splits, normalization, cfg.data.augment)
    in_chans = normalization.num_channels if normalization is not None else 3
    info.update({f"n_{s}": len(d) for s, d in datasets.items()})
    return DataTask(
        name="folder2d",
        datasets=datasets,
        evaluator=SegmentationEvaluator2D(num_classes, class_names=list(label_map)),
        label_map=label_map,
        num_classes=num_classes,
        in_chans=in_chans,
        normalization=normalization,
        info=info,
    )


# ---------------------------------------------------------------------------------------------------------------
# layout: npz2d (training-size uint8 cache)


class ArrayDataset2D(Dataset):
    """2-D dataset over in-memory uint8 arrays (the ``.npz`` cache of ``benchmarks/make_cache.py``).

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


def _looks_like_npz(path: Path) -> bool:
    return path.is_file() and path.suffix == ".npz"


@register_layout(
    "npz2d",
    detect=_looks_like_npz,
    priority=10,
    description="a .npz cache with {split}_images (N,H,W,C) uint8, {split}_masks (N,H,W) uint8, {split}_ids",
)
def open_npz2d(path: Path, cfg: RunConfig, *, splits: tuple[str, ...], normalization: Any) -> DataTask:
    """Training-size uint8 cache written by ``benchmarks/make_cache.py``."""
    size = tuple(int(s) for s in cfg.data.image_size)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    label_map = {str(k): int(v) for k, v in meta.get("label_map", binary_label_map()).items()}
    num_classes = int(meta.get("num_classes", 1))

    def make(split: str, augment: bool, norm: Any) -> ArrayDataset2D:
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

    normalization, datasets = _open_splits(make, splits, normalization, cfg.data.augment)
    in_chans = int(arrays[f"{splits[0]}_images"].shape[-1])
    return DataTask(
        name="npz2d",
        datasets=datasets,
        evaluator=SegmentationEvaluator2D(num_classes, class_names=list(label_map)),
        label_map=label_map,
        num_classes=num_classes,
        in_chans=in_chans,
        normalization=normalization,
        info={"root": str(path), "cache_meta": meta, **{f"n_{s}": len(d) for s, d in datasets.items()}},
    )
