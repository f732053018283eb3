"""ACDC cardiac MRI in the SSL4MIS h5 layout: 2-D training slices and 3-D evaluation volumes.

Layout (``root``)::

    train_slices.list            one slice name per line (no suffix) -> data/slices/<name>.h5
    val.list, test.list          one volume name per line            -> data/<name>.h5
    data/slices/*.h5             keys image (H, W) float32 in [0, 1], label (H, W) uint8
    data/*.h5                    keys image (D, H, W) float32 in [0, 1], label (D, H, W) uint8

Classes: 0 background, 1 right ventricle (RV), 2 myocardium (Myo), 3 left ventricle (LV). The h5 files store no
voxel spacing, so HD95 is reported in voxels (as in the papers).

Example:
    >>> train = acdc_slices("../shared/data/acdc", image_size=224, augment=True)
    >>> val = acdc_volumes("../shared/data/acdc", "val")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
import numpy as np

from mambaseg.data.files import DatasetError, require_finite
from mambaseg.data.normalization import Normalization
from mambaseg.data.volumetric import SliceDataset2D, Volume, VolumeDataset

__all__ = [
    "ACDC_LABELS",
    "acdc_cases",
    "acdc_slices",
    "acdc_volumes",
    "is_acdc_root",
    "read_h5_pair",
    "read_list_file",
]

#: foreground class names of ACDC, by label value
ACDC_LABELS: dict[int, str] = {1: "RV", 2: "Myo", 3: "LV"}


def read_list_file(path: str | Path) -> list[str]:
    """Non-empty, stripped lines of a split list file (``*.list`` / ``*.txt``); ``DatasetError`` if missing."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"split list {p} not found")
    names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    if not names:
        raise DatasetError(f"split list {p} is empty")
    return names


def read_h5_pair(
    path: str | Path, *, image_key: str = "image", label_key: str | None = "label", ndim: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``image`` (float32) and ``label`` arrays from an h5 file, checking keys, rank and shapes.

    Args:
        path: h5 file.
        image_key: dataset name of the image.
        label_key: dataset name of the label; ``None`` to read the image only.
        ndim: expected rank (2 for slices, 3 for volumes) or ``None``.

    Raises:
        DatasetError: missing file/keys, wrong rank or image/label shape mismatch (the message names the file).
    """
    import h5py

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: file not found")
    try:
        with h5py.File(p, "r") as f:
            keys = list(f.keys())
            for k in [image_key] + ([label_key] if label_key else []):
                if k not in f:
                    raise DatasetError(f"{p}: missing dataset {k!r} (found keys {keys})")
            image = np.asarray(f[image_key][()], dtype=np.float32)
            label = np.asarray(f[label_key][()]) if label_key else None
    except OSError as e:
        raise DatasetError(f"{p}: cannot read as HDF5 ({e})") from None
    require_finite(image, p, repr(image_key))
    if label is not None:
        require_finite(label, p, repr(label_key))
    if ndim is not None and image.ndim != ndim:
        raise DatasetError(f"{p}: {image_key!r} has shape {image.shape}; expected {ndim} dimensions")
    if label is not None and label.shape != image.shape:
        raise DatasetError(f"{p}: image shape {image.shape} differs from label shape {label.shape}")
    return image, label


class H5SliceLoader:
    """Picklable ``loader(i) -> (image, label)`` over 2-D h5 slice files (works with any DataLoader start method)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = read_h5_pair(self.paths[i], ndim=2)
        assert label is not None
        return image, label


class H5VolumeLoader:
    """Picklable ``loader(i) -> Volume`` over 3-D h5 volume files (keys image/label, no spacing)."""

    def __init__(self, names: list[str], paths: list[Path]) -> None:
        self.names, self.paths = list(names), list(paths)

    def __call__(self, i: int) -> Volume:
        image, label = read_h5_pair(self.paths[i], ndim=3)
        return Volume(id=self.names[i], image=image, label=label, spacing=None, path=str(self.paths[i]),
                      source_format="h5")


def is_acdc_root(path: str | Path) -> bool:
    """True when ``path`` looks like the SSL4MIS ACDC layout (``data/`` and ``train_slices.list``)."""
    p = Path(path)
    return p.is_dir() and (p / "data").is_dir() and (p / "train_slices.list").is_file()


def _resolve(root: Path, names: list[str], folder: Path, list_file: Path) -> list[Path]:
    paths = [folder / f"{n}.h5" for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(f"{list_file}: {len(missing)} listed file(s) not found: {', '.join(missing[:5])}{more}")
    return paths


def acdc_slices(
    root: str | Path,
    list_name: str = "train_slices.list",
    *,
    image_size: int | tuple[int, int] = 224,
    augment: bool = True,
    normalization: Normalization | None | str = "paper",
    preset: str = "msvmunet",
    seed: int | None = None,
) -> SliceDataset2D:
    """Training slices of ACDC listed in ``root/list_name`` (2-D item contract, see :class:`SliceDataset2D`)."""
    root = Path(root)
    list_file = root / list_name
    names = read_list_file(list_file)
    paths = _resolve(root, names, root / "data" / "slices", list_file)

    return SliceDataset2D(
        names,
        H5SliceLoader(paths),
        image_size=image_size,
        augment=augment,
        num_classes=4,
        label_names=ACDC_LABELS,
        normalization=normalization,
        paths=[str(p) for p in paths],
        preset=preset,
        seed=seed,
    )


def acdc_volumes(root: str | Path, split: str = "val") -> VolumeDataset:
    """3-D ACDC volumes of ``split`` (``root/<split>.list`` -> ``root/data/<name>.h5``)."""
    root = Path(root)
    list_file = root / f"{split}.list"
    names = read_list_file(list_file)
    paths = _resolve(root, names, root / "data", list_file)

    return VolumeDataset(names, H5VolumeLoader(names, paths), label_names=ACDC_LABELS, num_classes=4, paths=[str(p) for p in paths])



def acdc_cases(root: str | Path) -> list[str]:
    """The cross-validation pool: the volumes of the training slices (``patient003_frame01`` of
    ``patient003_frame01_slice_5``) and the ``val.list`` volumes (``test`` is never in it)."""
    from mambaseg.data.volumetric import slice_case

    root = Path(root)
    cases = list(dict.fromkeys(slice_case(n)[0] for n in read_list_file(root / "train_slices.list")))
    return cases + (read_list_file(root / "val.list") if (root / "val.list").is_file() else [])


def open_acdc(root: Path, cfg: Any, *, splits: tuple[str, ...], normalization: Any) -> Any:
    """ACDC (SSL4MIS h5) layout opener: slices for training, volumes for val/test; with ``data.split_file`` (a
    cross-validation fold over :func:`acdc_cases`) train and val are the fold's cases
    (:func:`mambaseg.data.volumetric.fold_datasets`)."""
    from mambaseg.data.task import DataTask, DataTaskError, image_size_of, volume_label_map
    from mambaseg.data.transforms import resolve_augmentation
    from mambaseg.data.volumetric import fold_split_datasets, paper_normalization

    norm = normalization if normalization is not None else paper_normalization(1)

    def slices() -> SliceDataset2D:
        return acdc_slices(root, image_size=image_size_of(cfg), augment=cfg.data.augment,
                           preset=resolve_augmentation(cfg.data.augmentation, "msvmunet"), normalization=norm)

    ds: dict[str, Any] = fold_split_datasets(
        cfg.data.split_file, splits, pool=lambda: acdc_cases(root), slices=slices,
        volumes=lambda: {"val": acdc_volumes(root, "val")} if (root / "val.list").is_file() else {})
    for s in splits:
        if s in ds:
            continue
        if s == "train":
            ds[s] = slices()
        elif s in ("val", "test"):
            ds[s] = acdc_volumes(root, s)
        else:
            raise DataTaskError(f"ACDC has splits train, val and test; got {s!r}")
    info = {"root": str(root), **{f"n_{s}": len(d) for s, d in ds.items()}}
    if cfg.data.split_file:
        info["split_file"] = str(cfg.data.split_file)
    return DataTask(name="acdc", datasets=ds, evaluation="volume_slicewise", label_map=volume_label_map(ACDC_LABELS),
                    num_classes=4, in_chans=1, normalization=norm, info=info)
