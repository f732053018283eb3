"""Slice-wise inference of 2-D networks on 3-D volumes, and volume file input/output.

The procedure of the TransUNet / MSVM-UNet / HeteroMedSeg test code: every slice along D is zoomed to the network size with a cubic spline (order 3),
normalised, passed through the network in batches, turned into labels by the library's one rule
(:func:`mambaseg.metrics.labels_from_logits`: argmax, or sigmoid >= 0.5 for a one-channel binary model), and the
label slice is zoomed back to the original in-plane size with nearest neighbour (order 0). The label slices are stacked into a (D, H, W) volume.

Files: ``.nii``/``.nii.gz`` (nibabel, geometry kept: predictions are written with the source affine and
orientation codes), ``.h5`` (dataset ``image``; predictions written as dataset ``label``), ``.npz`` (key ``image``
or ``img``; predictions written under ``label``) and ``.npy`` (the array itself). h5 and npz files carry the geometry
as ``spacing`` (D, H, W) and, from a NIfTI source, ``affine`` (its 4x4 matrix), both read back as the input's.
A 4-D NIfTI of one channel (X, Y, Z, 1) is read as 3-D and predicted as a 3-D (X, Y, Z) label map with its affine
(as nnU-Net and MONAI write it); one of several channels is refused: several channels come one file per channel,
nnU-Net's ``<case>_0000``, ``<case>_0001``, ... (:func:`read_channels`).

Axis order of h5/npz predictions: ``label`` and ``spacing`` are in the library's array order (D, H, W), a NIfTI
source's (Z, Y, X) (its (X, Y, Z) reversed), while ``affine`` is the source's NIfTI voxel-to-world matrix as nibabel
gives it, which maps voxel indices (x, y, z) = (w, h, d). So ``nib.Nifti1Image(label, affine)`` has the wrong
geometry (its axes are swapped); the NIfTI image, with the same data and affine as the ``.nii.gz`` prediction of
that source, is::

    nib.Nifti1Image(label.transpose(2, 1, 0), affine)

(``spacing[::-1]`` is the (x, y, z) voxel size; the source's header codes and units are not stored in h5/npz files.)

Example:
    >>> vol = read_volume("case.nii.gz")
    >>> labels = predict_volume(model, vol.image, image_size=(224, 224), normalization=paper_normalization())
    >>> write_prediction("pred.nii.gz", labels, vol)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from mambaseg.data.files import VOLUME_SUFFIXES, is_volume_path, volume_id, volume_suffix
from mambaseg.data.normalization import Normalization
from mambaseg.data.volumetric import Volume, zoom_image, zoom_labels
from mambaseg.inference.postprocess import postprocess_labels
from mambaseg.metrics import labels_from_logits, probabilities_from_logits
from mambaseg.runtime import autocast_for
from mambaseg.utils.files import atomic_write_npz
from mambaseg.utils.modules import weight_dtype

__all__ = [
    "VOLUME_SUFFIXES",
    "intensity_for_checkpoint",
    "is_volume_path",
    "iter_slice_batches",
    "predict_volume",
    "predict_volume_file",
    "predict_volume_probabilities",
    "probabilities_of",
    "read_channels",
    "channel_intensities",
    "volume_channels",
    "volume_scales",
    "stored_probabilities",
    "read_label_volume",
    "read_volume",
    "volume_output_path",
    "write_prediction",
]

def _read_arrays(p: Path, suf: str, wanted: Callable[[list[str]], list[str]]) -> tuple[list[str], dict]:
    """The keys of an h5 or npz file and the arrays of those of them ``wanted(keys)`` names; for npy ``[""]`` and
    the array under ``""``. ``DatasetError`` naming the file when it cannot be read."""
    from mambaseg.data.files import DatasetError

    try:
        if suf == ".h5":
            import h5py

            with h5py.File(p, "r") as f:
                keys = list(f.keys())
                return keys, {k: np.asarray(f[k][()]) for k in wanted(keys) if k in f}
        if suf == ".npz":
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.files)
                return keys, {k: np.asarray(z[k]) for k in wanted(keys) if k in keys}
        return [""], {"": np.load(p, allow_pickle=False)}
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{p}: cannot read as {'HDF5' if suf == '.h5' else suf[1:]} ({e})") from None


def _array_geometry(p: Path, got: dict, word: str) -> tuple[tuple[float, ...] | None, np.ndarray | None]:
    """The ``spacing`` (D, H, W) and ``affine`` (4x4, a NIfTI source's: voxel (x, y, z) = (w, h, d)) of an h5/npz
    file, as :func:`write_prediction` stores them (``None`` where absent); without ``spacing`` it comes from the affine.
    """
    from mambaseg.data.files import DatasetError

    spacing = affine = None
    if "affine" in got:
        affine = np.asarray(got["affine"], dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise DatasetError(f"{p}: {word} 'affine' of shape {affine.shape}; expected a finite 4x4 voxel-to-world "
                               "matrix")
    if "spacing" in got:
        spacing = tuple(float(v) for v in np.asarray(got["spacing"]).ravel())
    elif affine is not None:  # the lengths of its (x, y, z) columns, as (D, H, W)
        spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)[::-1])
    if spacing is not None and (len(spacing) != 3 or not all(np.isfinite(v) and v > 0 for v in spacing)):
        raise DatasetError(f"{p}: {word} 'spacing' = {list(spacing)}; expected 3 positive voxel sizes (D, H, W)")
    return spacing, affine


def read_volume(
    path: str | Path, *, image_key: str | None = None, label_key: str | None = None, scale: str = "auto"
) -> Volume:
    """Read a 3-D volume file into a :class:`~mambaseg.data.volumetric.Volume`.

    Args:
        path: ``.nii``/``.nii.gz``, ``.h5``, ``.npz`` or ``.npy`` file holding a (D, H, W) image (NIfTI: (X, Y, Z),
            or (X, Y, Z, 1)); h5/npz ``spacing`` and ``affine`` entries are read as its geometry.
        image_key: dataset/key of the image in h5/npz files (default ``image``, or ``img`` in npz).
        label_key: dataset/key of a label volume to read as well (optional).
        scale: intensity mapping to [0, 1]: ``"auto"`` (NIfTI: per-volume min-max; arrays already inside [0, 1]
            are kept, others min-max scaled), ``"minmax"``, ``"ct"`` (clip to the TransUNet window) or ``"none"``.

    Raises:
        ValueError / DatasetError: unknown suffix, unreadable file, missing keys, wrong rank, or NaN/inf voxels
            (the message names the file and the number of non-finite voxels; such volumes are never scaled, as
            one NaN would make the whole min-max-scaled volume NaN).
    """
    from mambaseg.data.files import DatasetError, require_finite
    from mambaseg.data.nnunet import read_nifti, scale_intensity

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: volume file not found")
    suf = volume_suffix(p)
    spacing = affine = header = None
    label = None
    if suf in (".nii", ".nii.gz"):
        image, spacing, affine, header = read_nifti(p)
        fmt = "nifti"
        if scale == "auto":
            scale = "minmax"
    elif suf in (".h5", ".npz", ".npy"):
        word = "dataset" if suf == ".h5" else "key"

        def wanted(keys: list[str]) -> list[str]:  # the image's key, then the label's, then the geometry
            image = image_key or ("image" if suf == ".h5" or "image" in keys else "img")
            return [image, label_key, "spacing", "affine"] if label_key else [image, "spacing", "affine"]

        keys, got = _read_arrays(p, suf, wanted)
        key = "" if suf == ".npy" else wanted(keys)[0]
        if key not in got:
            raise DatasetError(f"{p}: no {word} {key!r} (found {keys}); pass image_key=")
        image = got[key]
        if label_key and suf != ".npy":
            if label_key not in got:
                raise DatasetError(f"{p}: no {word} {label_key!r} (found {keys})")
            label = got[label_key]
        spacing, affine = _array_geometry(p, got, word)  # as write_prediction stores them
        fmt = suf[1:]
    else:
        raise ValueError(f"{p}: unsupported volume file type {suf!r}; expected one of {', '.join(VOLUME_SUFFIXES)}")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == np.bool_):
        raise DatasetError(f"{p}: the image has dtype {image.dtype}; expected numbers")
    if image.ndim != 3:
        raise DatasetError(f"{p}: expected a 3-D (D, H, W) image, got shape {image.shape}")
    image = require_finite(image.astype(np.float32), p, "the image")
    if scale == "auto":
        inside = float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        scale = "none" if inside else "minmax"
    if scale == "minmax":
        image = scale_intensity(image, "minmax")
    elif scale == "ct":
        image = scale_intensity(image, "CT")
    elif scale != "none":
        raise ValueError(f"scale must be 'auto', 'minmax', 'ct' or 'none', got {scale!r}")
    return Volume(
        id=volume_id(p), image=image, label=label, spacing=spacing, affine=affine, path=str(p), header=header,
        source_format=fmt,
    )


def read_channels(paths: Sequence[str | Path], *, scale: str | Sequence[str] = "auto") -> Volume:
    """The channel files of one case (nnU-Net's ``<case>_0000``, ``<case>_0001``, ... in channel order) as one
    (C, D, H, W) :class:`~mambaseg.data.volumetric.Volume` with the geometry of the first, each read by
    :func:`read_volume` with its ``scale`` (one for all, or one per channel).

    Raises:
        DatasetError: a file unreadable, or whose shape, voxel spacing or axis directions differ from the first
            file's beyond :data:`~mambaseg.data.nnunet.GEOMETRY_TOLERANCE` (the message names both files: voxels are
            paired by index, so the channels would not overlay). Another origin alone is a warning, as in training.
    """
    from mambaseg.data.files import DatasetError, channel_file
    from mambaseg.data.nnunet import GEOMETRY_TOLERANCE, _geometry_mismatch, _origin_shift

    files = [Path(f) for f in paths]
    scales = [scale] * len(files) if isinstance(scale, str) else list(scale)
    if not files or len(scales) != len(files):
        raise ValueError(f"read_channels: {len(files)} file(s) and {len(scales)} scale(s); expected one or more files "
                         "and one scale or one per file")
    vols = [read_volume(f, scale=s) for f, s in zip(files, scales)]
    first = vols[0]
    for f, v in zip(files[1:], vols[1:]):
        diff = None
        if v.image.shape != first.image.shape:
            diff = f"shape (D, H, W) {v.image.shape} vs {first.image.shape}"
        elif first.affine is not None and v.affine is not None:
            diff = _geometry_mismatch((first.spacing, first.affine), (v.spacing, v.affine), ref="channel 0's")
            shift = None if diff else _origin_shift(first.affine, v.affine, ref="channel 0's")
            if shift:  # voxels still pair by index: a warning, as in training (NnUNetRaw) and nnU-Net
                warnings.warn(f"{f}: {shift} of {files[0]}; voxels are paired by index, as nnU-Net does (write the "
                              "channel with channel 0's header to silence this)", UserWarning, stacklevel=2)
        elif v.spacing is not None and first.spacing is not None and not np.allclose(
                v.spacing, first.spacing, rtol=GEOMETRY_TOLERANCE["spacing"], atol=0.0):  # arrays without an affine
            diff = f"voxel spacing (D, H, W) {v.spacing} vs {first.spacing}"
        if diff:
            raise DatasetError(f"{f}: its geometry differs from {files[0]}, another channel of the same case: {diff}; "
                               "the channels of a case are paired voxel by voxel: resample them onto one grid")
    case = channel_file(files[0])
    return Volume(id=case[0] if case else first.id, image=np.stack([v.image for v in vols]), spacing=first.spacing,
                  affine=first.affine, path=first.path, header=first.header, source_format=first.source_format)


LABEL_KEYS = ("label", "labels", "seg", "mask")


def read_label_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """A label volume file as int64 (D, H, W) class values and its voxel spacing (``None`` where the file has none).

    Reads what :func:`write_prediction` writes and what segmentation tools hand over: NIfTI (spacing from the header,
    (X, Y, Z) turned into (D, H, W)), h5 and npz (the first of the keys ``label``, ``labels``, ``seg``, ``mask``;
    the spacing from a ``spacing`` entry, else from an ``affine`` one) and npy.

    Raises:
        DatasetError: unreadable file, no label key, not 3-D, or values that are not non-negative integers (the
            message names the file).
    """
    from mambaseg.data.files import DatasetError, require_finite

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: label volume not found")
    suf = volume_suffix(p)
    spacing = None
    if suf in (".nii", ".nii.gz"):
        from mambaseg.data.nnunet import read_nifti

        arr, spacing, _, _ = read_nifti(p)
    elif suf in (".h5", ".npz", ".npy"):
        keys, got = _read_arrays(p, suf, lambda keys: [k for k in LABEL_KEYS if k in keys][:1] + ["spacing", "affine"])
        arr = got.get("") if suf == ".npy" else next((got[k] for k in LABEL_KEYS if k in got), None)
        if arr is None:
            raise DatasetError(f"{p}: no label volume (keys {keys}; expected one of {', '.join(LABEL_KEYS)})")
        spacing = _array_geometry(p, got, "dataset" if suf == ".h5" else "key")[0]
    else:
        raise DatasetError(f"{p}: unsupported volume file type {suf!r}; expected one of {', '.join(VOLUME_SUFFIXES)}")
    if arr.ndim != 3:
        raise DatasetError(f"{p}: expected a 3-D (D, H, W) label volume, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise DatasetError(f"{p}: labels of dtype {arr.dtype}; expected integers")
    require_finite(arr, p, "the labels")
    if arr.size and (float(arr.min()) < 0 or not np.array_equal(arr, np.round(arr))):
        raise DatasetError(f"{p}: label values must be non-negative integers (found min {arr.min()}, "
                           f"e.g. {arr.ravel()[arr.ravel() != np.round(arr.ravel())][:3].tolist()})")
    return arr.astype(np.int64), spacing


def volume_channels(ckpt: dict[str, Any], in_chans: int) -> int:
    """How many volume files a case of a checkpoint's inputs has: one per channel name an nnU-Net run records (an
    nnU-Net run without names: its ``in_chans``), else 1 (other layouts have one channel, repeated for a 3-channel
    model, so ``in_chans`` is not a file count there). ``ckpt``: a checkpoint, or any dict with its ``task``."""
    task = ckpt.get("task") or {}
    return len(task.get("channel_names") or []) or (in_chans if task.get("layout") == "nnunet" else 1)


def volume_scales(ckpt: dict[str, Any], channels: int) -> str | list[str]:
    """The :func:`read_volume` ``scale`` of a checkpoint's inputs of ``channels`` files per case: one for one file
    (:func:`intensity_for_checkpoint`), one per channel otherwise (:func:`channel_intensities`).

    Raises:
        ValueError: see :func:`channel_intensities`.
    """
    return intensity_for_checkpoint(ckpt) if channels == 1 else channel_intensities(ckpt)


def intensity_for_checkpoint(ckpt: dict[str, Any]) -> str:
    """The :func:`read_volume` ``scale`` matching a checkpoint's training data: ``"ct"`` when every channel of an
    nnU-Net run is CT, ``"minmax"`` for other nnU-Net runs (:func:`channel_intensities`), ``"auto"`` for everything
    else (arrays already in [0, 1] kept, others min-max scaled).

    Raises:
        ValueError: see :func:`channel_intensities`.
    """
    scales = channel_intensities(ckpt)
    return "auto" if scales is None else "ct" if all(s == "ct" for s in scales) else "minmax"


def channel_intensities(ckpt: dict[str, Any]) -> list[str] | None:
    """The :func:`read_volume` ``scale`` of each input channel of a checkpoint trained on an nnU-Net raw dataset,
    ``None`` for other layouts.

    Such runs scaled CT channels with the CT window (``"ct"``) and other channels per volume (``"minmax"``), by the
    channel names the checkpoint records (checkpoints written before they were recorded: the dataset's
    ``dataset.json``, while it is readable).

    Raises:
        ValueError: an nnU-Net run whose channels are known neither from the checkpoint nor from its dataset: which
            scaling it needs cannot be told (a CT model fed min-max scaled volumes predicts garbage); the message
            says to pass the scaling (``--intensity ct`` or ``minmax``).
    """
    task = ckpt.get("task") or {}
    if task.get("layout") != "nnunet":
        return None
    names = task.get("channel_names")
    if not names:
        path = ((ckpt.get("config") or {}).get("data") or {}).get("path")
        try:
            from mambaseg.data.nnunet import NnUNetRaw

            names = NnUNetRaw(path).channel_names if path else None
        except (ValueError, OSError) as e:
            why = f"its dataset {path} cannot be read ({str(e).splitlines()[0]})"
        else:
            why = "it names no dataset"
        if not names:
            raise ValueError(f"the checkpoint was trained on an nnU-Net dataset but records no channel names, and {why}"
                             ": the intensity scaling of its inputs is unknown; pass --intensity ct (CT, "
                             "Hounsfield units) or --intensity minmax (other modalities) (intensity= in Python)")
    return ["ct" if str(n).strip().upper() == "CT" else "minmax" for n in names]


def write_prediction(path: str | Path, labels: np.ndarray, reference: Volume | None = None) -> Path:
    """Write a (D, H, W) label volume; NIfTI gets the geometry of ``reference`` (affine, orientation, spacing).

    The file type follows ``path``'s suffix: ``.nii``/``.nii.gz`` (needs nibabel), ``.h5`` (dataset ``label``) or
    ``.npz`` (key ``label``), each plus ``spacing`` and ``affine`` (the reference's 4x4 NIfTI matrix) when known, or
    ``.npy``.

    In h5/npz files ``label`` (uint8, or uint16 above 255) and ``spacing`` are stored in (D, H, W) order, a NIfTI
    source's (Z, Y, X); ``affine`` is the source's NIfTI matrix of voxel indices (x, y, z) = (w, h, d), not of
    (d, h, w). Rebuild the NIfTI image (the data and affine a ``.nii.gz`` prediction gets) with
    ``nib.Nifti1Image(label.transpose(2, 1, 0), affine)``; ``nib.Nifti1Image(label, affine)`` swaps the axes.
    """
    from mambaseg.data.nnunet import write_nifti

    p = Path(path)
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"labels must be (D, H, W), got shape {lab.shape}")
    if reference is not None and reference.label_shape != lab.shape:
        raise ValueError(f"labels shape {lab.shape} differs from the reference volume {reference.label_shape}")
    dtype = np.uint8 if lab.size == 0 or int(lab.max()) < 256 else np.uint16
    lab = lab.astype(dtype)
    p.parent.mkdir(parents=True, exist_ok=True)
    suf = volume_suffix(p)
    if suf in (".nii", ".nii.gz"):
        return write_nifti(
            p,
            lab,
            affine=None if reference is None else reference.affine,
            header=None if reference is None else reference.header,
            spacing=None if reference is None else reference.spacing,
            dtype=dtype,
        )
    geometry = {k: np.asarray(v, dtype=np.float64) for k, v in (("spacing", getattr(reference, "spacing", None)),
                                                                 ("affine", getattr(reference, "affine", None)))
                if v is not None}
    if suf == ".h5":
        import h5py

        with h5py.File(p, "w") as f:
            f.create_dataset("label", data=lab, compression="gzip")
            for k, v in geometry.items():
                f.create_dataset(k, data=v)
        return p
    if suf == ".npz":
        np.savez_compressed(p, label=lab, **geometry)
        return p
    if suf == ".npy":
        np.save(p, lab)
        return p
    raise ValueError(f"{p}: unsupported output type {suf!r}; expected one of {', '.join(VOLUME_SUFFIXES)}")


def _prepare_slice(
    sl: np.ndarray, image_size: tuple[int, int], normalization: Normalization | None, in_chans: int
) -> np.ndarray:
    x = zoom_image(sl, image_size, order=3)
    if x.shape[-1] == 1 and in_chans > 1:
        x = np.repeat(x, in_chans, axis=-1)
    if normalization is not None:
        x = normalization.apply(x)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def iter_slice_batches(
    volume: Volume | np.ndarray,
    *,
    image_size: tuple[int, int],
    normalization: Normalization | None,
    batch_size: int = 8,
    in_chans: int | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(slice_indices, x)`` with x (B, C, h, w) float32: zoomed (order 3) and normalised slices."""
    vol = volume if isinstance(volume, Volume) else Volume(id="", image=np.asarray(volume, dtype=np.float32))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chans = in_chans or vol.num_channels
    if vol.num_channels != chans and not (vol.num_channels == 1 and chans == 3):
        raise ValueError(
            f"the volume has {vol.num_channels} channel(s) but the model expects {chans} (a single-channel volume is "
            "repeated only for 3-channel models)"
        )
    depth = vol.spatial_shape[0]
    for start in range(0, depth, batch_size):
        idx = list(range(start, min(depth, start + batch_size)))
        x = np.stack([_prepare_slice(vol.slice_image(z), image_size, normalization, chans) for z in idx])
        yield idx, torch.from_numpy(x)


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    volume: Volume | np.ndarray,
    *,
    image_size: int | Sequence[int] = 224,
    normalization: Normalization | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    on_batch: Callable[[list[int], torch.Tensor, torch.Tensor], None] | None = None,
) -> np.ndarray:
    """Label volume (D, H, W) int64 of a 2-D model applied slice by slice.

    Args:
        model: 2-D segmentation model returning logits (B, K, h, w).
        volume: :class:`Volume` or array (D, H, W) / (C, D, H, W) with intensities in [0, 1].
        image_size: network input size (int or (h, w)).
        normalization: applied to each zoomed slice (channels-last, [0, 1] units), e.g. the checkpoint's.
        batch_size: slices per forward pass.
        device: where to run (default: the model's device).
        amp_dtype: optional autocast dtype.
        on_batch: optional callback ``(slice_indices, x, logits)`` (e.g. to compute a loss at network size).

    Returns:
        int64 labels (D, H, W) at the volume's original in-plane size.
    """
    from mambaseg.data.transforms import as_size

    size = as_size(image_size if not isinstance(image_size, Sequence) else tuple(image_size))
    if device is not None:
        dev = torch.device(device)
    else:
        first = next(iter(model.parameters()), None)  # not `a or b`: the truth value of a tensor is an error
        if first is None:
            first = next(iter(model.buffers()), None)
        dev = first.device if first is not None else torch.device("cpu")
    # slices go in at the weights' dtype: a model converted with .half()/.bfloat16() takes that dtype
    dtype = weight_dtype(model)
    in_chans = int(getattr(model, "in_chans", 0)) or None
    vol = volume if isinstance(volume, Volume) else Volume(id="", image=np.asarray(volume, dtype=np.float32))
    d, h, w = vol.label_shape
    out = np.zeros((d, h, w), dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        for idx, x in iter_slice_batches(
            vol, image_size=size, normalization=normalization, batch_size=batch_size, in_chans=in_chans
        ):
            x = x.to(dev, dtype)
            with autocast_for(dev, amp_dtype):
                logits = model(x).float()
            if on_batch is not None:
                on_batch(idx, x, logits)
            lab = labels_from_logits(logits).cpu().numpy()
            for j, z in enumerate(idx):
                out[z] = zoom_labels(lab[j], (h, w))
    finally:
        model.train(was_training)
    return out


def probabilities_of(logits: torch.Tensor) -> np.ndarray:
    """(C, H, W) logits -> probabilities as numpy: (1, H, W) sigmoid for one channel, else softmax over C (the form
    saved by ``predict --save-probabilities`` and a cross-validation's out-of-fold files)."""
    return probabilities_from_logits(logits[None])[0].cpu().numpy()


def stored_probabilities(logits: torch.Tensor) -> np.ndarray:
    """:func:`probabilities_of` in float16, the form written to ``probabilities/*.npz``, kept on the label side of
    the one rule for one channel: a float32 probability just below 0.5 that float16 would round up to exactly 0.5
    (foreground under ``>= 0.5``) is stored as the largest float16 below 0.5, so thresholding the file gives the
    saved mask. (Softmax ties that float16 creates between two classes are not adjusted.)"""
    probs = probabilities_of(logits)
    out = probs.astype(np.float16)
    if probs.shape[0] == 1:
        flipped = (out >= 0.5) & (probs < 0.5)
        if flipped.any():
            out[flipped] = np.nextafter(np.float16(0.5), np.float16(0))
    return out


def predict_volume_probabilities(model: nn.Module, volume: Volume, *, image_size: int | Sequence[int] = 224,
                                 normalization: Normalization | None = None, batch_size: int = 8,
                                 device: torch.device | str | None = None,
                                 amp_dtype: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A volume's labels (D, H, W) at its own size (:func:`predict_volume`) and its probabilities, float16
    (C', D, h, w) at the network size (:func:`stored_probabilities` of each slice's logits)."""
    slices: dict[int, np.ndarray] = {}

    def keep(idx: list[int], x: torch.Tensor, logits: torch.Tensor) -> None:
        for j, z in enumerate(idx):
            slices[z] = stored_probabilities(logits[j])

    labels = predict_volume(model, volume, image_size=image_size, normalization=normalization, batch_size=batch_size,
                            device=device, amp_dtype=amp_dtype, on_batch=keep)
    return labels, np.stack([slices[z] for z in range(len(slices))], axis=1)


def predict_volume_file(
    model: nn.Module,
    input_path: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    image_size: int | Sequence[int] = 224,
    normalization: Normalization | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    label_values: Sequence[int] | None = None,
    scale: str | Sequence[str] = "auto",
    postprocess: str | Sequence[str] | None = None,
    save_probabilities: bool = False,
) -> Path:
    """Predict one volume file and write the label volume (and, with ``save_probabilities``,
    :func:`probabilities_path`: ``probabilities`` float16 (C', D, h, w) at the network size, as
    :func:`predict_volume_probabilities` gives them, and ``shape``, the volume's (D, H, W)).

    Args:
        model: 2-D model.
        input_path: volume file (see :func:`read_volume`), or the channel files of one case (:func:`read_channels`:
            ``<case>_0000``, ``<case>_0001``, ...).
        out: output file, or a folder (then ``<id>_pred`` + the input's type; NIfTI stays NIfTI; ``<case>_pred`` for
            nnU-Net channel files, :func:`volume_output_path`).
        image_size: network input size.
        normalization: input normalisation (the checkpoint's).
        batch_size: slices per forward pass.
        device: where to run.
        label_values: value written for each class index (default: the index itself).
        scale: intensity mapping, see :func:`read_volume` (channel files: one for all, or one per channel).
        postprocess: post-processing of the whole label volume (:mod:`mambaseg.inference.postprocess`).

    Returns:
        The written path.
    """
    if isinstance(input_path, (str, Path)):
        vol, target = read_volume(input_path, scale=scale), volume_output_path(input_path, out)
    else:
        vol, target = read_channels(input_path, scale=scale), volume_output_path(input_path[0], out)
    if save_probabilities:
        labels, probs = predict_volume_probabilities(model, vol, image_size=image_size, normalization=normalization,
                                                     batch_size=batch_size, device=device)
        prob_file = probabilities_path(target)
        prob_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_npz(prob_file, probabilities=probs, shape=np.asarray(vol.label_shape))
    else:
        labels = predict_volume(model, vol, image_size=image_size, normalization=normalization,
                                batch_size=batch_size, device=device)
    labels = postprocess_labels(labels, postprocess)  # no steps: the array itself
    if label_values is not None:
        lut = np.asarray(list(label_values), dtype=np.int64)
        if int(labels.max(initial=0)) >= lut.size:
            raise ValueError(f"the model predicted class {int(labels.max())} but label_values has {lut.size} entries")
        labels = lut[labels]
    return write_prediction(target, labels, vol)


def probabilities_path(prediction: str | Path) -> Path:
    """Where the probabilities of the label volume ``prediction`` go: ``probabilities/<id>.npz`` in its folder
    (``<id>_pred`` loses its ``_pred``; a sub-folder, so the folder still holds label volumes only, as
    ``mambaseg score`` reads it)."""
    p = Path(prediction)
    stem = volume_id(p)
    stem = stem[: -len("_pred")] if stem.endswith("_pred") else stem
    return p.parent / "probabilities" / f"{stem}.npz"


def volume_output_path(input_path: str | Path, out: str | Path) -> Path:
    """Where :func:`predict_volume_file` writes the prediction of ``input_path``: ``out`` itself when it is a
    volume file name, else ``out/<case>_pred.<input type>``. The case of an nnU-Net channel file ``<case>_0000``
    is ``<case>``, as nnU-Net names its predictions, so ``mambaseg score`` pairs the prediction with
    ``labelsTr/<case>``."""
    o = Path(out)
    if is_volume_path(o):
        return o
    case = volume_id(Path(input_path))
    case = case[: -len("_0000")] if case.endswith("_0000") and len(case) > len("_0000") else case
    return o / f"{case}_pred{volume_suffix(input_path)}"
