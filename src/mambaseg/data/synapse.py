"""Synapse multi-organ CT in the TransUNet preprocessed layout.

Layout (``root``)::

    train_npz/<case>_slice<k>.npz      keys image (H, W) float in [0, 1], label (H, W) integer
    test_vol_h5/<case>.npy.h5          keys image (D, H, W), label (D, H, W)
    lists/train.txt                    slice names (no suffix); lists/test_vol.txt: volume names
    (the lists may also sit in lists/lists_Synapse/)

Classes (TransUNet order): 1 aorta, 2 gallbladder, 3 kidney(L), 4 kidney(R), 5 liver, 6 pancreas, 7 spleen,
8 stomach. The h5 volumes store no spacing, so HD95 is in voxels (as reported by the papers).

The TransUNet protocol has no validation split. Model selection must not use the test volumes, so a validation
set is either ``lists/val_vol.txt`` (volumes in ``test_vol_h5/``) when present, or whole training cases held out
from ``train.txt``: their slices are removed from training and stacked (by slice number) into volumes
(:func:`synapse_volumes_from_slices`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mambaseg.data.acdc import H5VolumeLoader, read_list_file
from mambaseg.data.files import DatasetError, require_finite
from mambaseg.data.normalization import Normalization
from mambaseg.data.volumetric import SliceDataset2D, VolumeDataset, slice_case, volumes_from_slices

__all__ = [
    "SYNAPSE_LABELS",
    "is_synapse_root",
    "read_npz_pair",
    "synapse_cases",
    "synapse_list",
    "synapse_slices",
    "synapse_volumes",
    "synapse_volumes_from_slices",
]

#: foreground class names of Synapse (TransUNet label order)
SYNAPSE_LABELS: dict[int, str] = {
    1: "aorta",
    2: "gallbladder",
    3: "kidney(L)",
    4: "kidney(R)",
    5: "liver",
    6: "pancreas",
    7: "spleen",
    8: "stomach",
}

def is_synapse_root(path: str | Path) -> bool:
    """True when ``path`` has ``train_npz/`` or ``test_vol_h5/`` and a ``lists`` folder."""
    p = Path(path)
    return p.is_dir() and ((p / "train_npz").is_dir() or (p / "test_vol_h5").is_dir()) and (p / "lists").is_dir()


def synapse_list(root: str | Path, name: str) -> Path:
    """Path of list ``name`` in ``root/lists/`` or ``root/lists/lists_Synapse/``."""
    root = Path(root)
    for cand in (root / "lists" / name, root / "lists" / "lists_Synapse" / name):
        if cand.is_file():
            return cand
    raise DatasetError(f"{root}: list file {name!r} not found in lists/ or lists/lists_Synapse/")


def read_npz_pair(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (float32) and ``label`` of a 2-D npz slice; ``DatasetError`` naming the file on problems."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: file not found")
    try:
        with np.load(p) as z:
            keys = list(z.keys())
            if "image" not in z or "label" not in z:
                raise DatasetError(f"{p}: expected keys 'image' and 'label', found {keys}")
            image = np.asarray(z["image"], dtype=np.float32)
            label = np.asarray(z["label"])
    except (OSError, ValueError) as e:
        raise DatasetError(f"{p}: cannot read as npz ({e})") from None
    require_finite(image, p, "'image'")
    require_finite(label, p, "'label'")
    if image.ndim != 2:
        raise DatasetError(f"{p}: image has shape {image.shape}; expected (H, W)")
    if label.shape != image.shape:
        raise DatasetError(f"{p}: image shape {image.shape} differs from label shape {label.shape}")
    return image, label


class _NpzSliceLoader:
    """Picklable ``loader(i) -> (image, label)`` over npz slice files."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return read_npz_pair(self.paths[i])


def synapse_slices(
    root: str | Path,
    list_name: str = "train.txt",
    *,
    exclude_cases: tuple[str, ...] | list[str] = (),
    image_size: int | tuple[int, int] = 224,
    augment: bool = True,
    normalization: Normalization | None | str = "paper",
    preset: str = "msvmunet",
    seed: int | None = None,
) -> SliceDataset2D:
    """Training slices listed in ``list_name`` (minus ``exclude_cases``), in the 2-D item contract."""
    root = Path(root)
    lf = synapse_list(root, list_name)
    names = read_list_file(lf)
    excl = set(exclude_cases)
    if excl:
        names = [n for n in names if slice_case(n)[0] not in excl]
    paths = [root / "train_npz" / f"{n}.npz" for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{lf}: {len(missing)} listed slice(s) not found: {', '.join(missing[:5])}")
    if not names:
        raise DatasetError(f"{lf}: no training slices left after excluding {sorted(excl)}")
    return SliceDataset2D(
        names,
        _NpzSliceLoader(paths),
        image_size=image_size,
        augment=augment,
        num_classes=9,
        label_names=SYNAPSE_LABELS,
        normalization=normalization,
        paths=[str(p) for p in paths],
        preset=preset,
        seed=seed,
    )


def synapse_volumes(root: str | Path, list_name: str = "test_vol.txt") -> VolumeDataset:
    """Evaluation volumes ``test_vol_h5/<name>.npy.h5`` listed in ``list_name``."""
    root = Path(root)
    lf = synapse_list(root, list_name)
    names = read_list_file(lf)
    paths = []
    for n in names:
        folder = root / "test_vol_h5"
        cands = [folder / f"{n}.npy.h5", folder / f"{n}.npz.h5", folder / f"{n}.h5"]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise DatasetError(f"{lf}: volume {n!r} not found (looked for {cands[0]})")
        paths.append(found)

    return VolumeDataset(names, H5VolumeLoader(names, paths), label_names=SYNAPSE_LABELS, num_classes=9,
                         paths=[str(p) for p in paths])


def synapse_volumes_from_slices(root: str | Path, cases: list[str], list_name: str = "train.txt") -> VolumeDataset:
    """Volumes rebuilt from the ``train_npz`` slices of ``cases`` (stacked by slice number; gaps are an error)."""
    slices = synapse_slices(root, list_name, augment=False, normalization=None)
    return volumes_from_slices(slices, cases, where=str(synapse_list(root, list_name)))


def synapse_train_cases(root: str | Path, list_name: str = "train.txt") -> list[str]:
    """Training case names in order of first appearance in ``list_name``."""
    seen: dict[str, None] = {}
    for n in read_list_file(synapse_list(root, list_name)):
        seen.setdefault(slice_case(n)[0], None)
    return list(seen)


def _held_out_cases(root: Path, cfg: Any) -> list[str]:
    """Training cases held out for validation (seeded) when the dataset has no ``lists/val_vol.txt``: whole groups of
    cases by the rule of the folds (:func:`mambaseg.data.folds.carve_groups`)."""
    from mambaseg.data.folds import carve_groups
    from mambaseg.data.task import DataTaskError

    cases = synapse_train_cases(root)
    if len(cases) < 2:
        raise DataTaskError(f"{root}: need >= 2 training cases to hold one out for validation (or lists/val_vol.txt)")
    return carve_groups(cases, cfg.data.val_fraction, cfg.data.split_seed, where=synapse_list(root, "train.txt"))


def synapse_cases(root: str | Path) -> list[str]:
    """The cross-validation pool: the cases of the training slices (``lists/train.txt``) and, where the dataset
    has ``lists/val_vol.txt``, its volumes (``test_vol.txt`` is never in it)."""
    root = Path(root)
    try:
        vols = read_list_file(synapse_list(root, "val_vol.txt"))
    except DatasetError:
        vols = []
    return synapse_train_cases(root) + vols


def open_synapse(root: Path, cfg: Any, *, splits: tuple[str, ...], normalization: Any) -> Any:
    """Synapse (TransUNet npz/h5) layout opener: slices for training, volumes for val (held out) and test; with
    ``data.split_file`` (a cross-validation fold over :func:`synapse_cases`) train and val are the fold's cases."""
    from mambaseg.data.task import DataTask, DataTaskError, image_size_of, volume_label_map
    from mambaseg.data.transforms import resolve_augmentation
    from mambaseg.data.volumetric import fold_split_datasets, paper_normalization

    norm = normalization if normalization is not None else paper_normalization(1)
    try:
        synapse_list(root, "val_vol.txt")
        val_from_list = True
    except DatasetError:
        val_from_list = False
    val_cases: list[str] = [] if val_from_list or cfg.data.split_file else _held_out_cases(root, cfg)

    def slices() -> SliceDataset2D:
        return synapse_slices(root, exclude_cases=val_cases, image_size=image_size_of(cfg), augment=cfg.data.augment,
                              preset=resolve_augmentation(cfg.data.augmentation, "msvmunet"), normalization=norm)

    ds: dict[str, Any] = fold_split_datasets(
        cfg.data.split_file, splits, pool=lambda: synapse_cases(root), slices=slices,
        volumes=lambda: {"val": synapse_volumes(root, "val_vol.txt")} if val_from_list else {})
    info: dict[str, Any] = {"root": str(root), "val": f"the fold's cases ({cfg.data.split_file})" if ds else
                            "lists/val_vol.txt" if val_from_list else f"held-out training cases {val_cases}"}
    for s in splits:
        if s in ds:
            continue
        if s == "train":
            ds[s] = slices()
        elif s == "val":
            ds[s] = (synapse_volumes(root, "val_vol.txt") if val_from_list
                     else synapse_volumes_from_slices(root, val_cases))
        elif s == "test":
            ds[s] = synapse_volumes(root, "test_vol.txt")
        else:
            raise DataTaskError(f"Synapse has splits train, val and test; got {s!r}")
    info.update({f"n_{s}": len(d) for s, d in ds.items()})
    return DataTask(name="synapse", datasets=ds, evaluation="volume_slicewise",
                    label_map=volume_label_map(SYNAPSE_LABELS), num_classes=9, in_chans=1, normalization=norm,
                    info=info)
