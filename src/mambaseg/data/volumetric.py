"""Volumes and 2-D slice datasets shared by the ACDC, Synapse and nnU-Net readers.

Two objects make up a volumetric task (2-D networks trained on slices, evaluated per 3-D volume):

* :class:`SliceDataset2D`: training slices in the 2-D item contract of :class:`~mambaseg.data.FolderDataset2D`
  (``{"image": float32 (C, H, W), "mask": int64 (H, W), "id", "orig_size", "path"}``), augmented and resized to the
  network size. Resizing follows the TransUNet / MSVM-UNet / HeteroMedSeg code: the image is zoomed with a cubic
  spline (``scipy.ndimage.zoom`` order 3) and the label with nearest neighbour (order 0).
* :class:`VolumeDataset`: evaluation volumes (:class:`Volume`: image (D, H, W) or (C, D, H, W), label (D, H, W),
  optional spacing and affine), evaluated slice by slice by :mod:`mambaseg.inference.volume`.

Array convention: volumes are (D, H, W) = (slice, row, column); ``spacing`` follows the same axis order. NIfTI
volumes (stored (X, Y, Z) by nibabel) are transposed to (Z, Y, X) when read and back when written.

Training slices are augmented with a preset of the one table :data:`mambaseg.data.transforms.AUGMENTATIONS`
(``"msvmunet"`` by default, the MSVM-UNet / HeteroMedSeg pipeline), then zoomed to the network size.
"""

from __future__ import annotations

import copy
import functools
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mambaseg.data.normalization import Normalization
from mambaseg.data.transforms import as_size, build_augmentation

__all__ = [
    "SliceDataset2D",
    "SliceAugment",
    "Volume",
    "VolumeDataset",
    "VolumeSlices",
    "check_labels",
    "fold_datasets",
    "fold_split_datasets",
    "join_volume_slices",
    "slice_case",
    "volumes_from_slices",
    "paper_normalization",
    "zoom_image",
    "zoom_labels",
    "zoom_spacing",
]

def paper_normalization(in_chans: int = 1) -> Normalization:
    """``(x - 0.5) / 0.5`` per channel: the ToTensor + Normalize(0.5, 0.5) of the MSVM-UNet/HeteroMedSeg code."""
    return Normalization(mean=(0.5,) * in_chans, std=(0.5,) * in_chans)


def zoom_image(image: np.ndarray, size: tuple[int, int], order: int = 3) -> np.ndarray:
    """Resize the two leading axes of a (H, W) or (H, W, C) array to ``size`` with a spline of ``order``.

    Uses ``scipy.ndimage.zoom`` (order 3 = the papers' cubic zoom) with factors chosen so the output has exactly
    ``size``. Returns float32 for float input, the input dtype for order 0.
    """
    h, w = image.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return image
    from scipy import ndimage  # here, not at import: scipy.ndimage adds ~0.2 s to every start of the CLI

    factors = (th / h, tw / w)
    if image.ndim == 3:  # channel by channel: a 3-D spline over a singleton axis is several times slower
        out = np.stack([ndimage.zoom(image[..., c], factors, order=order) for c in range(image.shape[2])], axis=-1)
    else:
        out = ndimage.zoom(image, factors, order=order)  # scipy defaults, as the papers' ``zoom(x, f, order=3)``
    if out.shape[:2] != (th, tw):  # guard against rounding of the output shape
        raise RuntimeError(f"zoom produced {out.shape[:2]} instead of {(th, tw)}")
    return out


def zoom_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour (order 0) zoom of an (H, W) label map to ``size`` (hard labels stay hard)."""
    return zoom_image(labels, size, order=0)


def zoom_spacing(spacing: Sequence[float] | None, hw: Sequence[int],
                 size: Sequence[int]) -> tuple[float, float, float] | None:
    """The voxel spacing (D, H, W) of slices of in-plane size ``hw`` once :func:`zoom_image` (or
    :func:`zoom_labels`) has resized them to ``size``; ``None`` for ``None``.

    ``scipy.ndimage.zoom`` (``grid_mode=False``, the default :func:`zoom_image` uses) keeps the centres of the first
    and last pixels of each axis where they were: output pixel ``o`` of ``N`` samples input ``o * (n - 1) / (N - 1)``
    of ``n``, so the in-plane spacing becomes ``s * (n - 1) / (N - 1)`` (not ``s * n / N``); an axis zoomed from or
    to a single pixel keeps its extent, ``s * n / N``. The depth axis is not resized.
    """
    if spacing is None:
        return None
    sd, sh, sw = (float(v) for v in spacing)
    (h, w), (th, tw) = (int(v) for v in hw[:2]), (int(v) for v in size[:2])

    def axis(s: float, n: int, m: int) -> float:
        if n == m:  # zoom_image returns the slice unchanged
            return s
        return s * (n - 1) / (m - 1) if n > 1 and m > 1 else s * n / m

    return sd, axis(sh, h, th), axis(sw, w, tw)


def check_labels(label: np.ndarray, num_classes: int, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` when ``label`` holds values outside ``0..num_classes-1``."""
    if label.size == 0:
        return
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or hi >= num_classes:
        bad = sorted(v for v in np.unique(label).tolist() if v < 0 or v >= num_classes)
        raise ValueError(
            f"{where}: label values {bad[:10]} are outside the label map (expected 0..{num_classes - 1})"
        )
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(label == np.round(label)):
            raise ValueError(f"{where}: label array of dtype {label.dtype} holds non-integer values")


@dataclass
class Volume:
    """One 3-D case.

    Attributes:
        id: case name.
        image: float32 (D, H, W) or (C, D, H, W).
        label: integer (D, H, W) or ``None`` (unlabelled input).
        spacing: voxel size per (D, H, W) axis (mm), or ``None`` when the source has none (ACDC/Synapse h5).
        affine: 4x4 voxel-to-world matrix of the source NIfTI (in the file's own axis order), or ``None``.
        path: source file (the first channel file for multi-file NIfTI cases).
        header: source NIfTI header (used to write predictions with the same geometry), or ``None``.
        source_format: ``"nifti"``, ``"h5"``, ``"npz"``, ``"npy"``, or ``"slices"`` (rebuilt from training slices).
        target_hw: in-plane size of labels and predictions when the image was stored already resized (caches);
            ``None`` = the image's own (H, W).
    """

    id: str
    image: np.ndarray
    label: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    path: str = ""
    header: Any = None
    source_format: str = "h5"
    target_hw: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.image.ndim not in (3, 4):
            raise ValueError(
                f"{self.path or self.id}: volume image must be (D, H, W) or (C, D, H, W), got {self.image.shape}"
            )
        if self.target_hw is not None:
            self.target_hw = (int(self.target_hw[0]), int(self.target_hw[1]))
        if self.label is not None and self.label.shape != self.label_shape:
            raise ValueError(
                f"{self.path or self.id}: label shape {self.label.shape} differs from the expected {self.label_shape}"
            )
        if self.spacing is not None and len(self.spacing) != 3:
            raise ValueError(f"{self.path or self.id}: spacing must have 3 values (D, H, W), got {self.spacing}")

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """(D, H, W)."""
        return tuple(int(s) for s in self.image.shape[-3:])  # type: ignore[return-value]

    @property
    def label_shape(self) -> tuple[int, int, int]:
        """(D, H, W) of labels and predictions: the image's, or (D, *target_hw) for pre-resized caches."""
        d, h, w = self.spatial_shape
        return (d, *self.target_hw) if self.target_hw is not None else (d, h, w)

    @property
    def num_channels(self) -> int:
        return 1 if self.image.ndim == 3 else int(self.image.shape[0])

    def slice_image(self, z: int) -> np.ndarray:
        """Channels-last (H, W, C) float32 slice ``z``."""
        s = self.image[z] if self.image.ndim == 3 else self.image[:, z]
        s = np.asarray(s, dtype=np.float32)
        return s[..., None] if s.ndim == 2 else np.moveaxis(s, 0, -1)


class VolumeDataset(Dataset):
    """Lazily loaded evaluation volumes.

    Args:
        ids: case names, in order.
        loader: ``loader(i) -> Volume`` for index ``i``.
        label_names: ``{class_value: name}`` of the foreground classes (background 0 excluded).
        num_classes: classes incl. background.
        paths: source path of each case (for messages and reports).
    """

    def __init__(
        self,
        ids: Sequence[str],
        loader: Callable[[int], Volume],
        *,
        label_names: Mapping[int, str],
        num_classes: int,
        paths: Sequence[str] | None = None,
    ) -> None:
        self.ids = [str(i) for i in ids]
        self._loader = loader
        self.label_names = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}
        self.num_classes = int(num_classes)
        self.paths = [str(p) for p in paths] if paths is not None else ["" for _ in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Volume:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} volumes")
        vol = self._loader(index % len(self))
        if vol.label is not None:
            check_labels(vol.label, self.num_classes, vol.path or vol.id)
        return vol

    def __iter__(self) -> Iterator[Volume]:
        for i in range(len(self)):
            yield self[i]

    @property
    def label_map(self) -> dict[str, Any]:
        """Label map for checkpoints: class names by value and the class count."""
        names = {0: "background", **self.label_names}
        return {"binary": False, "num_classes": self.num_classes, "names": {str(k): v for k, v in names.items()}}

    def __repr__(self) -> str:
        return f"VolumeDataset(n={len(self)}, classes={self.label_names})"


class SliceAugment:
    """Augmentation of one (H, W, C) float slice in [0, 1] and its (H, W) labels (no resize).

    Args:
        preset: a name of :data:`mambaseg.data.transforms.AUGMENTATIONS` (the one preset table; ``"msvmunet"``
            is the default of volumetric layouts).
    """

    def __init__(self, preset: str = "msvmunet") -> None:
        self.preset = preset
        self._op = build_augmentation(preset)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self._op is None:
            return image, mask
        return self._op(image, mask, rng)

    def __repr__(self) -> str:
        return f"SliceAugment({self.preset!r})"


@dataclass
class _LRU:
    size: int
    data: OrderedDict = field(default_factory=OrderedDict)

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        value = make()
        self.data[key] = value
        while len(self.data) > self.size:
            self.data.popitem(last=False)
        return value


class SliceDataset2D(Dataset):
    """2-D training slices in the :class:`~mambaseg.data.FolderDataset2D` item contract.

    Args:
        ids: slice names, in order.
        loader: ``loader(i) -> (image, label)`` with image (H, W) or (H, W, C) float in [0, 1] and label (H, W)
            integer, at the original resolution. A loader that knows the voxel spacing of its slices' volumes also
            has ``loader.spacing(i) -> (D, H, W) spacing or None``, at that resolution (:meth:`spacing_of`).
        image_size: network input (H, W) (an int means square).
        augment: apply ``preset`` augmentation.
        normalization: per-channel mean/std applied after augmentation (default: :func:`paper_normalization`);
            ``None`` keeps [0, 1] inputs.
        num_classes: classes incl. background; labels outside ``0..num_classes-1`` raise naming the file.
        label_names: ``{class_value: name}`` of the foreground classes.
        paths: source path per slice (reported in items and errors).
        preset: augmentation preset (``"msvmunet"`` default).
        seed: when set, slice ``i`` in epoch ``e`` uses ``numpy.random.default_rng([seed, e, i])``; otherwise the
            generator is seeded from torch's RNG (deterministic after ``torch.manual_seed``, per worker).
    """

    def __init__(
        self,
        ids: Sequence[str],
        loader: Callable[[int], tuple[np.ndarray, np.ndarray]],
        *,
        image_size: int | tuple[int, int],
        augment: bool,
        num_classes: int,
        label_names: Mapping[int, str],
        normalization: Normalization | None | str = "paper",
        paths: Sequence[str] | None = None,
        preset: str = "msvmunet",
        seed: int | None = None,
        in_chans: int = 1,
    ) -> None:
        self.ids = [str(i) for i in ids]
        if not self.ids:
            raise ValueError("SliceDataset2D needs at least one slice")
        self._loader = loader
        self.image_size = as_size(image_size)
        self.augment = bool(augment)
        self.in_chans = int(in_chans)
        if isinstance(normalization, str):
            if normalization != "paper":
                raise ValueError(f"normalization must be a Normalization, None or 'paper', got {normalization!r}")
            normalization = paper_normalization(self.in_chans)
        self.normalization = normalization
        self.num_classes = int(num_classes)
        self.label_names = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}
        self.paths = [str(p) for p in paths] if paths is not None else ["" for _ in self.ids]
        self.transforms = SliceAugment(preset if augment else "none")
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def label_map(self) -> dict[str, Any]:
        """Label map for checkpoints: class names by value and the class count."""
        names = {0: "background", **self.label_names}
        return {"binary": False, "num_classes": self.num_classes, "names": {str(k): v for k, v in names.items()}}

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used in the augmentation seed (only matters when ``seed`` is set)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng([int(self.seed), self.epoch, int(index)])
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Original-resolution (H, W, C) float32 image and (H, W) int64 labels of slice ``index``, checked."""
        image, label = self._loader(index)
        where = self.paths[index] or self.ids[index]
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise ValueError(f"{where}: slice image must be (H, W) or (H, W, C), got shape {image.shape}")
        if image.shape[-1] != self.in_chans:
            raise ValueError(f"{where}: slice has {image.shape[-1]} channel(s) but in_chans={self.in_chans}")
        label = np.asarray(label)
        if label.shape != image.shape[:2]:
            raise ValueError(f"{where}: image shape {image.shape[:2]} differs from label shape {label.shape}")
        check_labels(label, self.num_classes, where)
        return image, label.astype(np.int64)

    def spacing_of(self, index: int) -> tuple[float, float, float] | None:
        """Voxel spacing (D, H, W) of the volume slice ``index`` was cut from, at the resolution :meth:`load` returns
        (``loader.spacing(index)``); ``None`` when the loader knows none (ACDC/Synapse slices)."""
        fn = getattr(self._loader, "spacing", None)
        sp = None if fn is None else fn(index)
        return None if sp is None else tuple(float(v) for v in sp)  # type: ignore[return-value]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} slices")
        index = index % len(self)
        image, label = self.load(index)
        orig = (int(label.shape[0]), int(label.shape[1]))
        if self.augment:
            image, label = self.transforms(image, label.astype(np.uint8), self._rng(index))
        image = zoom_image(np.asarray(image, np.float32), self.image_size, order=3)
        label = zoom_labels(np.asarray(label), self.image_size)
        if self.normalization is not None:
            image = self.normalization.apply(image)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)),
            "id": self.ids[index],
            "orig_size": orig,
            "path": self.paths[index],
        }

    def iter_unnormalized_images(self) -> Iterator[np.ndarray]:
        """Each slice resized to ``image_size`` (H, W, C) in [0, 1], without augmentation or normalisation."""
        for i in range(len(self)):
            image, _ = self.load(i)
            yield zoom_image(image, self.image_size, order=3)

    def __repr__(self) -> str:
        return (
            f"SliceDataset2D(n={len(self)}, image_size={self.image_size}, augment={self.augment}, "
            f"classes={self.label_names})"
        )


class VolumeSlices:
    """Picklable ``loader(i) -> (image, label)`` over every axial slice of the volumes of a :class:`VolumeDataset`
    (slice ``i`` = volume ``index[i][0]``, depth ``index[i][1]``), for :class:`SliceDataset2D`.

    A volume stored at network size with labels at its original size (``Volume.target_hw``, the volcache) gets
    its label slice zoomed to the image's size with nearest neighbours, as the cache's own training slices were.
    The last two volumes read stay in memory (slices are drawn in random order, volumes are small).
    """

    def __init__(self, volumes: VolumeDataset, index: Sequence[tuple[int, int]]) -> None:
        self.volumes, self.index = volumes, [(int(v), int(z)) for v, z in index]
        self._cache = _LRU(2)

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        v, z = self.index[i]
        vol = self._cache.get(v, lambda: self.volumes[v])
        image = vol.slice_image(z)
        label = np.asarray(vol.label[z])
        if label.shape != image.shape[:2]:
            label = zoom_labels(label.astype(np.uint8), (int(image.shape[0]), int(image.shape[1])))
        return image, label

    def spacing(self, i: int) -> tuple[float, float, float] | None:
        """The spacing of slice ``i``'s volume at the image's size (a cached volume's is its labels')."""
        v, _ = self.index[i]
        vol = self._cache.get(v, lambda: self.volumes[v])
        return zoom_spacing(vol.spacing, vol.label_shape[1:], vol.spatial_shape[1:])

    def __getstate__(self) -> dict[str, Any]:  # workers start with an empty cache
        return {"volumes": self.volumes, "index": self.index}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.volumes, self.index, self._cache = state["volumes"], state["index"], _LRU(2)


class _Chain:
    """Picklable ``loader(i)`` over several loaders one after the other (``sizes[k]`` items each)."""

    def __init__(self, loaders: Sequence[Callable[[int], Any]], sizes: Sequence[int]) -> None:
        self.loaders, self.offsets = list(loaders), np.cumsum([0, *sizes])

    def __call__(self, i: int) -> Any:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.loaders[k](i - int(self.offsets[k]))

    def spacing(self, i: int) -> Any:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        fn = getattr(self.loaders[k], "spacing", None)
        return None if fn is None else fn(i - int(self.offsets[k]))


def join_volume_slices(train: SliceDataset2D, extra: Mapping[str, VolumeDataset]) -> SliceDataset2D:
    """``train`` with every axial slice of each ``extra`` split's volumes appended (same size, augmentation,
    normalisation and seed); the new slices are named ``<split>/<case>#<z>``.

    Raises:
        ValueError: an extra volume without labels (it cannot train), naming the split and case.
    """
    ids, paths, loaders, sizes = list(train.ids), list(train.paths), [train._loader], [len(train)]
    for split, volumes in extra.items():
        index = []
        for v in range(len(volumes)):
            vol = volumes[v]
            if vol.label is None:
                raise ValueError(f"data.train_splits: {split!r} case {vol.id!r} ({vol.path}) has no labels to "
                                 "train on")
            for z in range(vol.spatial_shape[0]):
                index.append((v, z))
                ids.append(f"{split}/{vol.id}#{z}")
                paths.append(f"{vol.path or vol.id}#z={z}")
        loaders.append(VolumeSlices(volumes, index))
        sizes.append(len(index))
    out = copy.copy(train)
    out.ids, out.paths, out._loader = ids, paths, _Chain(loaders, sizes)
    return out


_SLICE_NAME = re.compile(r"^(?P<case>.+?)_slice_?(?P<z>\d+)$")


def slice_case(name: str) -> tuple[str, int]:
    """``(case, z)`` of a training slice name ``<case>_slice<z>`` or ``<case>_slice_<z>`` (the names of the Synapse
    and nnU-Net slices, and of ACDC's ``patient003_frame01_slice_5``).

    Raises:
        DatasetError: a name of another form.
    """
    from mambaseg.data.files import DatasetError

    m = _SLICE_NAME.match(str(name))
    if m is None:
        raise DatasetError(f"slice name {name!r} does not look like '<case>_slice<z>' or '<case>_slice_<z>', so its "
                         "volume is unknown")
    return m.group("case"), int(m.group("z"))


class _Pick:
    """Picklable ``loader(i) = base(index[i])``: a subset of another loader's items."""

    def __init__(self, base: Callable[[int], Any], index: Sequence[int]) -> None:
        self.base, self.index = base, [int(i) for i in index]

    def __call__(self, i: int) -> Any:
        return self.base(self.index[i])

    def spacing(self, i: int) -> Any:
        fn = getattr(self.base, "spacing", None)
        return None if fn is None else fn(self.index[i])


class _StackedSlices:
    """Picklable ``loader() -> Volume``: the slices of one case of a :class:`SliceDataset2D` stacked in ``z`` order
    (images and labels at the resolution the slices are stored at), with the spacing of its slices
    (:meth:`SliceDataset2D.spacing_of`) where every slice has the same one, else none."""

    def __init__(self, slices: SliceDataset2D, case: str, items: Sequence[tuple[int, int]], where: str = "") -> None:
        self.slices, self.case, self.items = slices, case, sorted((int(z), int(i)) for z, i in items)
        zs = [z for z, _ in self.items]
        if not zs:
            raise ValueError(f"{where}no slices of case {case!r}")
        if zs != list(range(zs[0], zs[0] + len(zs))):
            raise ValueError(f"{where}the slices of case {case!r} are not consecutive ({zs[:3]}...{zs[-3:]}), so "
                             "they do not make one volume")

    def __call__(self) -> Volume:
        pairs = [self.slices.load(i) for _, i in self.items]
        first = pairs[0][0].shape
        for (z, i), (image, _) in zip(self.items, pairs):
            if image.shape != first:
                raise ValueError(f"{self.slices.paths[i] or self.slices.ids[i]}: slice {z} of case {self.case!r} is "
                                 f"{image.shape}, its first slice {first}; the slices do not make one volume")
        image = np.stack([im for im, _ in pairs])  # (D, H, W, C)
        image = image[..., 0] if image.shape[-1] == 1 else np.moveaxis(image, -1, 0)
        return Volume(id=self.case, image=image, label=np.stack([lb for _, lb in pairs]), spacing=self.spacing(),
                      path=self.path, source_format="slices")

    def spacing(self) -> tuple[float, float, float] | None:
        """The one spacing of the case's slices; ``None`` when one has none or they differ."""
        spacings = [self.slices.spacing_of(i) for _, i in self.items]
        first = spacings[0]
        if first is None or any(s is None or not np.allclose(s, first, rtol=1e-6, atol=0.0) for s in spacings):
            return None
        return first

    @property
    def path(self) -> str:
        return self.slices.paths[self.items[0][1]] or self.slices.ids[self.items[0][1]]


class _Cases:
    """Picklable ``loader(i) -> Volume`` over one zero-argument loader per case."""

    def __init__(self, loaders: Sequence[Callable[[], Volume]]) -> None:
        self.loaders = list(loaders)

    def __call__(self, i: int) -> Volume:
        return self.loaders[i]()


def _slices_by_case(slices: SliceDataset2D) -> dict[str, list[tuple[int, int]]]:
    by_case: dict[str, list[tuple[int, int]]] = {}
    for i, name in enumerate(slices.ids):
        case, z = slice_case(name)
        by_case.setdefault(case, []).append((z, i))
    return by_case


def volumes_from_slices(slices: SliceDataset2D, cases: Sequence[str], *, where: str = "") -> VolumeDataset:
    """The volumes of ``cases`` rebuilt from the training slices ``<case>_slice<z>`` of ``slices``: each case's
    slices stacked in ``z`` order (consecutive numbers, one size), at the resolution they are stored at, with their
    voxel spacing where the slices' loader knows it (:meth:`SliceDataset2D.spacing_of`, e.g. a volcache's training
    cases, stored at the cached grid), else none.

    Raises:
        ValueError: a case without slices, or whose slices are not consecutive (``where`` starts the message).
    """
    where = f"{where}: " if where else ""
    by_case = _slices_by_case(slices)
    loaders = [_StackedSlices(slices, c, by_case.get(c, []), where) for c in cases]
    return VolumeDataset(list(cases), _Cases(loaders), label_names=slices.label_names, num_classes=slices.num_classes,
                         paths=[ld.path for ld in loaders])


def fold_datasets(slices: SliceDataset2D, volumes: Mapping[str, VolumeDataset],
                  split: Mapping[str, Sequence[str]], *, where: str = "") -> tuple[SliceDataset2D, VolumeDataset]:
    """The training slices and held-out volumes of one cross-validation fold over the cases of a volumetric layout.

    A case is a volume: either a volume of one of the ``volumes`` splits (e.g. ``{"val": ...}``) or the training
    slices of ``slices`` named ``<case>_slice<z>`` (:func:`slice_case`). The fold trains on every slice of its
    ``split["train"]`` cases (a volume's slices are named ``<split>/<case>#<z>`` as in :func:`join_volume_slices`)
    and holds out the volumes of its ``split["val"]`` cases; a case known only by its slices becomes the volume of
    its slices (:func:`volumes_from_slices`).

    Raises:
        ValueError: a case of the split is in neither source or in two, the slices of a held-out case are not
            consecutive, or no slice is left to train on; ``where`` (the split file) starts the message.
    """
    prefix = f"{where}: " if where else ""
    by_case = _slices_by_case(slices)
    vol_of: dict[str, tuple[VolumeDataset, int]] = {}
    for name, vd in volumes.items():
        for j, vid in enumerate(vd.ids):
            if vid in by_case or vid in vol_of:
                raise ValueError(f"{prefix}case {vid!r} of {name!r} is also a set of training slices or another "
                                 "volume; a fold split needs each case once")
            vol_of[vid] = (vd, j)
    unknown = [c for c in (*split["train"], *split["val"]) if c not in by_case and c not in vol_of]
    if unknown:
        raise ValueError(f"{prefix}{len(unknown)} case(s) are neither volumes nor slices of this dataset: "
                         f"{unknown[:5]}")
    train_cases = set(split["train"])
    keep = [i for case in sorted(train_cases & set(by_case)) for _, i in sorted(by_case[case])]
    train = copy.copy(slices)
    train.ids, train.paths = [slices.ids[i] for i in keep], [slices.paths[i] for i in keep]
    train._loader = _Pick(slices._loader, keep)
    extra = {}
    for name, vd in volumes.items():
        picked = [j for j, vid in enumerate(vd.ids) if vid in train_cases]
        if picked:
            extra[name] = VolumeDataset([vd.ids[j] for j in picked], _Pick(vd.__getitem__, picked),
                                        label_names=vd.label_names, num_classes=vd.num_classes,
                                        paths=[vd.paths[j] for j in picked])
    train = join_volume_slices(train, extra) if extra else train
    if not train.ids:
        raise ValueError(f"{prefix}no training slices are left for this fold")
    held = list(split["val"])
    rebuilt = volumes_from_slices(slices, [c for c in held if c not in vol_of], where=where)
    loaders: list[Callable[[], Volume]] = [
        functools.partial(vol_of[c][0].__getitem__, vol_of[c][1]) if c in vol_of
        else functools.partial(rebuilt.__getitem__, rebuilt.ids.index(c)) for c in held]
    paths = [vol_of[c][0].paths[vol_of[c][1]] if c in vol_of else rebuilt.paths[rebuilt.ids.index(c)] for c in held]
    val = VolumeDataset(held, _Cases(loaders), label_names=slices.label_names, num_classes=slices.num_classes,
                        paths=paths)
    return train, val


def fold_split_datasets(split_file: Any, splits: Sequence[str], *, pool: Callable[[], list[str]],
                        slices: Callable[[], SliceDataset2D],
                        volumes: Callable[[], Mapping[str, VolumeDataset]]) -> dict[str, Any]:
    """What a volumetric layout's opener takes for ``train`` and ``val`` under a cross-validation fold: with a
    ``split_file`` (``data.split_file``: ``{"train", "val"}`` over the layout's ``pool()`` of cases) and ``train`` or
    ``val`` asked for, those of :func:`fold_datasets` among ``splits``; else ``{}`` (the opener's own splits).
    ``pool``, ``slices`` and ``volumes`` are called only then."""
    if not split_file or not any(s in ("train", "val") for s in splits):
        return {}
    from mambaseg.data.splits import read_split_file

    train, val = fold_datasets(slices(), volumes(), read_split_file(split_file, pool()), where=str(split_file))
    return {s: d for s, d in (("train", train), ("val", val)) if s in splits}
