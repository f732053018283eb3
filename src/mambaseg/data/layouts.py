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

    from mambaseg.data.layouts import DataTask, register_layout

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from mambaseg.configs import RunConfig

__all__ = [
    "DataLayout",
    "DataTask",
    "DataTaskError",
    "EVALUATIONS",
    "LAYOUTS",
    "binary_label_map",
    "dataset_family",
    "detect_layout",
    "list_layouts",
    "open_task",
    "register_layout",
]

EVALUATIONS = ("pixels2d", "volume_slicewise")


class DataTaskError(ValueError):
    """The data path cannot be opened as any known layout (or the chosen layout rejects it)."""


@dataclass
class DataTask:
    """Everything training and evaluation need from a dataset.

    Unpacks as ``train_ds, val_ds, evaluator, label_map = task``.

    Attributes:
        name: layout name.
        datasets: split name -> dataset (only the splits asked for).
        evaluation: the evaluation protocol (one of :data:`EVALUATIONS`).
        label_map: class name -> mask pixel value, in class-index order (written predictions use these values).
        num_classes: model output channels (1 for binary tasks).
        in_chans: image channels.
        normalization: input normalisation (``mambaseg.data.Normalization``) or ``None``.
        info: facts to record in logs/checkpoints (split file, counts, skipped files, ...).
        evaluator: the evaluator object, attached by the engine's ``open_data`` (``None`` at this tier).
    """

    name: str
    datasets: dict[str, Dataset]
    label_map: dict[str, int]
    num_classes: int
    in_chans: int
    evaluation: str = "pixels2d"
    normalization: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    evaluator: Any = None

    def __post_init__(self) -> None:
        if self.evaluation not in EVALUATIONS:
            raise DataTaskError(f"layout {self.name!r}: unknown evaluation {self.evaluation!r}; valid: {EVALUATIONS}")

    @property
    def train(self) -> Dataset | None:
        return self.datasets.get("train")

    @property
    def val(self) -> Dataset | None:
        return self.datasets.get("val")

    @property
    def label_names(self) -> dict[int, str]:
        """``{class index: name}`` of the foreground classes."""
        return {i: n for i, n in enumerate(self.label_map) if i != 0}

    def __iter__(self) -> Iterator[Any]:
        yield self.train
        yield self.val
        yield self.evaluator
        yield self.label_map


Opener = Callable[..., DataTask]


@dataclass(frozen=True)
class DataLayout:
    """A layout: ``detect(root) -> bool`` and ``open(root, cfg, *, splits, normalization) -> DataTask``."""

    name: str
    detect: Callable[[Path], bool]
    open: Opener
    priority: int = 0
    description: str = ""


def _shipped() -> tuple[DataLayout, ...]:
    from mambaseg.data import acdc, cache, folder2d, nnunet, synapse

    return (
        DataLayout("acdc", acdc.is_acdc_root, acdc.open_acdc, 20,
                   "ACDC SSL4MIS h5 layout: train_slices.list + data/slices/*.h5, val.list/test.list + data/*.h5"),
        DataLayout("synapse", synapse.is_synapse_root, synapse.open_synapse, 20,
                   "TransUNet Synapse layout: train_npz/*.npz, test_vol_h5/*.npy.h5, lists/{train,test_vol}.txt"),
        DataLayout("nnunet", nnunet.is_nnunet_root, nnunet.open_nnunet, 20,
                   "nnU-Net raw dataset: dataset.json, imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz"),
        DataLayout("volcache", cache.is_volcache, cache.open_volcache, 20,
                   "a .npz volumetric cache with vol_meta (mambaseg cache)"),
        DataLayout("npz2d", cache.is_npz2d, cache.open_npz2d, 10,
                   "a .npz cache with {split}_images (N,H,W,C) uint8, {split}_masks (N,H,W) uint8, {split}_ids"),
        DataLayout("folder2d", folder2d.is_folder2d_root, folder2d.open_folder2d, 0,
                   "a folder ROOT/{train,val[,test]}/{images,masks}/ of 2-D images and masks matched by file stem"),
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
    name: str, *, detect: Callable[[Path], bool], priority: int = 0, description: str = ""
) -> Callable[[Opener], Opener]:
    """Decorator adding a layout of your own to the table (see the module docstring).

    Args:
        name: layout name (``cfg.data.layout`` selects it explicitly).
        detect: returns True when a path looks like this layout (must not raise; should be cheap).
        priority: detectors with a higher priority are tried first (specific layouts > generic folders).
        description: one line shown in error messages.
    """

    def deco(fn: Opener) -> Opener:
        table = _table()
        if name in table:
            raise ValueError(f"data layout {name!r} is registered twice")
        desc = description or (fn.__doc__ or "").strip().split("\n")[0]
        table[name] = DataLayout(name=name, detect=detect, open=fn, priority=priority, description=desc)
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
    task = table[name].open(p, cfg, splits=tuple(splits), normalization=normalization)
    missing = [s for s in splits if s not in task.datasets]
    if missing:
        raise DataTaskError(f"layout {name!r} did not provide the split(s) {missing} for {str(p)!r}")
    return task


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


def binary_label_map() -> dict[str, int]:
    """Label map of binary tasks: background written as 0, foreground as 255."""
    return {"background": 0, "foreground": 255}


def volume_label_map(label_names: Mapping[int, str]) -> dict[str, int]:
    """Label map of a volumetric task from its foreground ``{value: name}``."""
    return {"background": 0, **{str(v): int(k) for k, v in sorted(label_names.items())}}


def image_size_of(cfg: RunConfig) -> tuple[int, int]:
    """``data.image_size`` as an (H, W) tuple of ints."""
    s = cfg.data.image_size
    return (int(s[0]), int(s[-1]))


def open_splits(make: Callable[[str, bool, Any], Any], splits: tuple[str, ...], normalization: Any,
                augment: bool) -> tuple[Any, dict[str, Any]]:
    """Build every split with ``make(split, augment, normalization)``; the normalisation, when not given, is
    computed on the un-augmented training split (only the training split is augmented)."""
    from mambaseg.data.normalization import compute_normalization

    if normalization is None:
        if "train" not in splits:
            raise DataTaskError("the input normalisation must be given when the training split is not opened")
        normalization = compute_normalization(make("train", False, None))
    return normalization, {s: make(s, augment and s == "train", normalization) for s in splits}
