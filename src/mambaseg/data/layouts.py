"""Dataset layouts: one table from a path to datasets, label map and the evaluation protocol.

:func:`open_task` is the single entry point of training, evaluation, search and the cache writer. It picks a
layout (by name via ``cfg.data.layout``, or by detection) and calls its opener, which returns a :class:`DataTask`.
Every shipped layout is listed in :data:`LAYOUTS` below, each opener next to its data format:

==========  ==========================================  =======================================================
layout      what the path is                            opener
==========  ==========================================  =======================================================
acdc        ACDC in the SSL4MIS h5 layout               :func:`mambaseg.data.acdc.open_acdc`
synapse     Synapse in the TransUNet npz/h5 layout      :func:`mambaseg.data.synapse.open_synapse`
nnunet      an nnU-Net raw dataset folder               :func:`mambaseg.data.nnunet.open_nnunet`
volcache    a ``.npz`` cache of a volumetric task       :func:`mambaseg.data.cache.open_volcache`
npz2d       a ``.npz`` cache of a 2-D task              :func:`mambaseg.data.cache.open_npz2d`
folder2d    ``ROOT/{train,val[,test]}/{images,masks}``  :func:`mambaseg.data.folder2d.open_folder2d`
==========  ==========================================  =======================================================

A layout of your own is one call (no import side effects; call it before :func:`open_task`)::

    from mambaseg.data.layouts import register_layout
    from mambaseg.data.task import DataTask

    @register_layout("mine", detect=lambda root: (root / "MINE").is_file(), priority=30)
    def open_mine(root, cfg, *, splits, normalization):
        ...
        return DataTask(name="mine", datasets={...}, evaluation="pixels2d", label_map={...}, num_classes=1,
                        in_chans=3, normalization=...)

An opener receives the dataset root, the :class:`~mambaseg.configs.RunConfig`, the splits wanted (``("train",
"val")`` for training, ``("val",)`` or ``("test",)`` for evaluation) and the input normalisation (``None`` when
training: compute it from the training split; the checkpoint's when evaluating). Datasets yield dicts with
``"image"`` (float32 (C, H, W)), ``"mask"`` (int64 class indices) and ``"id"`` (2-D), or
:class:`~mambaseg.data.volumetric.Volume` objects (volumetric evaluation splits). ``evaluation`` names the protocol
the engine applies: ``"pixels2d"`` (confusion matrix over pixels, pooled and per image) or ``"volume_slicewise"``
(per-volume, per-class Dice/HD95 of a 2-D model run slice by slice).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from mambaseg.data.task import DataTask, DataTaskError, binary_label_map

if TYPE_CHECKING:
    from mambaseg.configs import RunConfig

__all__ = [
    "DataLayout",
    "DataTask",
    "DataTaskError",
    "LAYOUTS",
    "binary_label_map",
    "case_pool",
    "dataset_family",
    "dataset_folds",
    "detect_layout",
    "layout_of",
    "list_layouts",
    "open_task",
    "register_layout",
    "write_cache",
]

Opener = Callable[..., DataTask]


@dataclass(frozen=True)
class DataLayout:
    """A layout: ``detect(root) -> bool`` and ``open(root, cfg, *, splits, normalization) -> DataTask``; optionally
    ``cases(root) -> ids``, the labelled cases of its training and validation splits (the pool that
    cross-validation deals into folds, :mod:`mambaseg.data.folds`), and ``folds(root) -> [{"train", "val"}, ...] |
    None``, folds the dataset brings with it. A layout with ``cases`` has an opener that honours
    ``cfg.data.split_file`` (a fold's ``{"train": ids, "val": ids}`` over that pool)."""

    name: str
    detect: Callable[[Path], bool]
    open: Opener
    priority: int = 0
    description: str = ""
    cases: Callable[[Path], list[str]] | None = None
    folds: Callable[[Path], list[dict[str, list[str]]] | None] | None = None


def _shipped() -> tuple[DataLayout, ...]:
    from mambaseg.data import acdc, cache, folder2d, nnunet, synapse

    return (
        DataLayout("acdc", acdc.is_acdc_root, acdc.open_acdc, 20,
                   "ACDC SSL4MIS h5 layout: train_slices.list + data/slices/*.h5, val.list/test.list + data/*.h5",
                   acdc.acdc_cases),
        DataLayout("synapse", synapse.is_synapse_root, synapse.open_synapse, 20,
                   "TransUNet Synapse layout: train_npz/*.npz, test_vol_h5/*.npy.h5, lists/{train,test_vol}.txt",
                   synapse.synapse_cases),
        DataLayout("nnunet", nnunet.is_nnunet_root, nnunet.open_nnunet, 20,
                   "nnU-Net raw dataset: dataset.json, imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz",
                   nnunet.nnunet_cases, nnunet.nnunet_folds),
        DataLayout("volcache", cache.is_volcache, cache.open_volcache, 20,
                   "a .npz volumetric cache with vol_meta (mambaseg cache)", cache.volcache_cases),
        DataLayout("npz2d", cache.is_npz2d, cache.open_npz2d, 10,
                   "a .npz cache with {split}_images (N,H,W,C) uint8, {split}_masks (N,H,W) uint8, {split}_ids",
                   cache.npz2d_cases),
        DataLayout("folder2d", folder2d.is_folder2d_root, folder2d.open_folder2d, 0,
                   "a folder ROOT/{train,val[,test]}/{images,masks}/ of 2-D images and masks matched by file stem",
                   folder2d.folder2d_cases),
    )


#: the shipped layouts, filled on first use (the openers' modules import this one)
LAYOUTS: dict[str, DataLayout] = {}
_LAYOUTS = LAYOUTS


def _table() -> dict[str, DataLayout]:
    if not any(lay.name == "folder2d" for lay in LAYOUTS.values()):
        for lay in _shipped():
            LAYOUTS.setdefault(lay.name, lay)
    return LAYOUTS


def register_layout(
    name: str, *, detect: Callable[[Path], bool], priority: int = 0, description: str = "",
    cases: Callable[[Path], list[str]] | None = None,
    folds: Callable[[Path], list[dict[str, list[str]]] | None] | None = None,
) -> Callable[[Opener], Opener]:
    """Decorator adding a layout of your own to the table (see the module docstring).

    Args:
        name: layout name (``cfg.data.layout`` selects it explicitly).
        detect: returns True when a path looks like this layout (must not raise; should be cheap).
        priority: detectors with a higher priority are tried first (specific layouts > generic folders).
        description: one line shown in error messages.
        cases: ``cases(root) -> ids`` of the labelled train + val cases, for cross-validation (the opener must
            then honour ``cfg.data.split_file``); ``None``: ``--folds`` is refused for this layout.
        folds: ``folds(root)``: the folds a dataset of this layout brings with it (``None`` when it has none),
            used by ``--folds`` instead of a seeded deal.
    """

    def deco(fn: Opener) -> Opener:
        table = _table()
        if name in table:
            raise ValueError(f"data layout {name!r} is registered twice")
        desc = description or (fn.__doc__ or "").strip().split("\n")[0]
        table[name] = DataLayout(name=name, detect=detect, open=fn, priority=priority, description=desc, cases=cases,
                                 folds=folds)
        return fn

    return deco


def list_layouts() -> list[str]:
    """Layout names, in detection order."""
    return [lay.name for lay in sorted(_table().values(), key=lambda x: (-x.priority, x.name))]


def detect_layout(path: str | Path) -> str:
    """Name of the first layout (by priority) whose detector accepts ``path``.

    Raises:
        DataTaskError: no layout matches; the message lists what each layout expects.
    """
    p = Path(path)
    table = _table()
    for name in list_layouts():
        try:
            if table[name].detect(p):
                return name
        except OSError:
            continue
    expected = "; ".join(f"{n}: {table[n].description}" for n in list_layouts())
    raise DataTaskError(f"cannot recognise the dataset layout of {str(p)!r}; expected one of — {expected}")


def layout_of(path: str | Path, recorded: str | None = None) -> str:
    """The layout to open ``path`` with when a run recorded ``recorded`` for its own data: that layout if it accepts
    ``path`` (the same data, or another copy of it), else the detected one (another form of the cases, e.g. the
    image folder a cache was built from).

    Raises:
        DataTaskError: neither accepts ``path`` (the message lists what each layout expects).
    """
    table = _table()
    if recorded in table:
        try:
            if table[recorded].detect(Path(path)):
                return recorded
        except OSError:
            pass
    return detect_layout(path)


def open_task(
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

    Raises:
        DataTaskError: no path, missing path, unknown layout, or no layout recognises the path.
    """
    path = path if path is not None else cfg.data.path
    if path is None:
        raise DataTaskError("no dataset given: pass --data PATH (or set data.path in the config)")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataTaskError(f"dataset path {str(p)!r} does not exist")
    table = _table()
    name = layout or cfg.data.layout or detect_layout(p)
    if name not in table:
        raise DataTaskError(f"unknown data layout {name!r}; registered layouts: {', '.join(list_layouts())}")
    extra = _extra_training_splits(cfg) if "train" in splits else []
    if extra and cfg.data.split_file:
        raise DataTaskError(f"data.train_splits={cfg.data.train_splits} with data.split_file={cfg.data.split_file}: "
                            "a split file (e.g. a cross-validation fold) already says which cases train; leave "
                            "data.train_splits at [train]")
    opened = tuple(splits) + tuple(s for s in extra if s not in splits)
    task = table[name].open(p, cfg, splits=opened, normalization=normalization)
    missing = [s for s in opened if s not in task.datasets]
    if missing:
        raise DataTaskError(f"layout {name!r} did not provide the split(s) {missing} for {str(p)!r}")
    if extra:
        _train_on_extra_splits(task, name, extra, splits)
    return task


def _extra_training_splits(cfg: RunConfig) -> list[str]:
    """The splits of ``data.train_splits`` besides ``train``, checked."""
    wanted = [str(s) for s in cfg.data.train_splits]
    if "train" not in wanted or len(set(wanted)) != len(wanted):
        raise DataTaskError(f"data.train_splits must name 'train' and each split once (e.g. [train, val]), "
                            f"got {wanted}")
    return [s for s in wanted if s != "train"]


def _train_on_extra_splits(task: DataTask, layout: str, extra: list[str], asked: Sequence[str]) -> None:
    """Add the slices of the ``extra`` splits' volumes to the training slices of ``task`` (volumetric layouts)."""
    from mambaseg.data.volumetric import SliceDataset2D, VolumeDataset, join_volume_slices

    train = task.datasets["train"]
    if not isinstance(train, SliceDataset2D) or not all(isinstance(task.datasets[s], VolumeDataset) for s in extra):
        raise DataTaskError(
            f"data.train_splits={['train', *extra]}: layout {layout!r} is not volumetric; only volumetric layouts "
            "(slices of volumes) add an evaluation split to training. For 2-D images, use cross-validation "
            "(mambaseg train --folds K) or move the images into train/")
    n = len(train)
    task.datasets["train"] = join_volume_slices(train, {s: task.datasets[s] for s in extra})
    for s in extra:
        if s not in asked:
            del task.datasets[s]
    task.info.update({"train_splits": ["train", *extra], "n_train": len(task.datasets["train"]),
                      "n_train_slices_added": len(task.datasets["train"]) - n})
    in_sample = [s for s in extra if s in asked]
    if in_sample:
        task.info["in_sample_validation"] = (
            f"{', '.join(in_sample)} also trains (data.train_splits): its scores are in-sample, so select nothing "
            "on them (use the final weights)")


def case_pool(path: str | Path, layout: str) -> list[str]:
    """Ids of the train + val cases of a dataset (images of a 2-D layout, volumes of a volumetric one), sorted.

    Raises:
        DatasetError: the layout names no pool of cases (``cases`` of its
            :class:`~mambaseg.data.layouts.DataLayout`), duplicated ids across the splits, or no case.
    """
    from mambaseg.data.files import DatasetError

    table = _table()
    p = Path(path)
    entry = table.get(layout)
    if entry is None or entry.cases is None:
        have = [n for n in list_layouts() if table[n].cases is not None]
        raise DatasetError(f"cross-validation (--folds) needs the pool of cases of the dataset; layout {layout!r} of "
                           f"{p} does not list one (layouts that do: {', '.join(have)})")
    ids = [str(i) for i in entry.cases(p)]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DatasetError(f"{p}: case ids occur in both train and val ({dup[:5]}); a fold split needs unique ids")
    if not ids:
        raise DatasetError(f"{p}: no train/val cases to split into folds")
    return sorted(ids)


def dataset_folds(path: str | Path, layout: str) -> list[dict[str, list[str]]] | None:
    """Folds a dataset brings with it (``folds`` of its layout, e.g. an nnU-Net raw folder's
    ``splits_final.json``); else ``None``."""
    entry = _table().get(layout)
    return entry.folds(Path(path)) if entry is not None and entry.folds is not None else None


def dataset_family(path: str | Path) -> str | None:
    """Dataset family of a path for recipe lookup: the detected layout name (``acdc``, ``synapse``, ``nnunet``,
    ``folder2d``...), or for a ``volcache`` file the name of the cached dataset; ``None`` when undetectable."""
    p = Path(path).expanduser()
    try:
        layout = detect_layout(p)
    except (ValueError, OSError):
        return None
    if layout == "volcache":
        with np.load(p, allow_pickle=False) as z:
            return str(json.loads(str(z["vol_meta"])).get("name") or layout)
    return layout


def write_cache(data: str | Path, image_size: Sequence[int], out: str | Path,
                splits: Sequence[str] | None = None,
                progress: Callable[[str, int, int], None] | None = None, *,
                binary: bool = True, label_values: Sequence[int] | None = None) -> tuple[Path, dict[str, int]]:
    """Write the cache of any dataset layout: ``npz2d`` for 2-D folders, ``volcache`` for volumetric layouts.

    Args:
        data: dataset root (its layout is detected).
        image_size: network input (H, W) the cache is stored at.
        out: output ``.npz``.
        splits: splits to store (default: ``train`` and ``val``, plus ``test`` where the layout has one).
        progress: optional ``(split, done, total)`` callback as items are written.
        binary, label_values: how a 2-D folder's mask files map to classes (``data.binary`` /
            ``data.label_values`` of a run on the folder; :func:`mambaseg.data.cache.write_npz2d`). Volumetric
            layouts name their classes themselves: anything but the defaults is refused for them.

    Returns:
        ``(path, {split: number of images or volumes})``.
    """
    from mambaseg.configs import RunConfig
    from mambaseg.data.cache import write_npz2d, write_volcache

    root = Path(data).expanduser()
    if not root.exists():
        raise DataTaskError(f"dataset path {str(root)!r} does not exist")
    size = (int(image_size[0]), int(image_size[-1]))
    layout = detect_layout(root)
    if layout in ("npz2d", "volcache"):
        raise DataTaskError(f"{root} is already a cache ({layout}); pass the original dataset folder")
    explicit = splits is not None
    wanted = list(splits) if explicit else ["train", "val", "test"]
    if layout == "folder2d":
        have = [s for s in wanted if (root / s).is_dir() or (s == "val" and (root / "train").is_dir())]
        if explicit and have != wanted:
            raise DataTaskError(f"{root}: split(s) {[s for s in wanted if s not in have]} not found")
        written = write_npz2d(root, size, out, have, progress=progress, binary=binary, label_values=label_values)
        with np.load(written, allow_pickle=False) as z:
            counts = {s: int(z[f"{s}_ids"].shape[0]) for s in have}
        return written, counts
    if not binary or label_values is not None:
        raise DataTaskError(f"{root} is a {layout} dataset, whose classes come from the dataset itself; binary / "
                            "label_values apply to 2-D folders")
    cfg = RunConfig()
    cfg.data.image_size = list(size)
    cfg.data.augment = False
    cfg.data.validate = False
    opened: dict[str, Any] = {}
    task = None
    for s in wanted:
        try:
            task = open_task(root, cfg, splits=(s,), normalization=_IDENTITY)
        except (DataTaskError, ValueError, OSError):
            if explicit:
                raise
            continue
        opened[s] = task.datasets[s]
    if task is None or "train" not in opened and not opened:
        raise DataTaskError(f"{root}: none of the splits {wanted} could be opened as layout {layout!r}")
    evals = {s: d for s, d in opened.items() if s != "train"}
    written = write_volcache(out, name=layout, label_names=task.label_names, num_classes=task.num_classes,
                             image_size=size, train=opened.get("train"), eval_splits=evals, progress=progress,
                             source=root)
    return written, {s: len(d) for s, d in opened.items()}


class _Identity:
    """Normalisation placeholder: the cache stores raw intensities, so none needs to be computed to open a split."""

    num_channels = 1

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x


_IDENTITY = _Identity()
