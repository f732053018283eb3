"""nnU-Net raw datasets (``dataset.json`` + ``imagesTr``/``labelsTr`` NIfTI) and NIfTI input/output.

Layout (nnU-Net v2; the v1 ``dataset.json`` keys ``modality`` and ``{"0": "background"}``-style labels are also
read)::

    root/dataset.json          {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, ...},
                                "numTraining": N, "file_ending": ".nii.gz"}
    root/imagesTr/<case>_0000.nii.gz, <case>_0001.nii.gz ...   one file per channel (4-digit suffix)
    root/labelsTr/<case>.nii.gz
    root/imagesTs/...          (unlabelled test cases, optional)
    root/splits_final.json     (optional, nnU-Net's folds: fold 0's train/val lists are used)

Checks (as nnU-Net's ``verify_dataset_integrity``, each naming the file): every label file has an image and every
image a label; a label has the shape, voxel spacing and axis directions of its image (nnU-Net only warns about the
directions, yet a flipped axis misaligns every voxel), within :data:`GEOMETRY_TOLERANCE`, and another origin is a
warning (voxels are paired by index, as in nnU-Net); every channel file ``<case>_0001``, ... is checked against
``<case>_0000`` the same way (an error names both files; ``predict`` refuses such files too, another origin
included); a channel file ``<case>_NNNN`` of a channel that ``channel_names`` does not declare is refused (declare it
or remove the files); fold 0 of ``splits_final.json`` trains on no case it validates on (labelled cases it leaves out
are a warning: nnU-Net uses a custom split as given). A class of ``dataset.json`` that no label file of the opened
split holds is a warning.
Warnings go through :mod:`warnings` and are kept in :attr:`NnUNetRaw.notes`
(and in the task's ``info["warnings"]``).

Without ``splits_final.json`` the validation cases are a seeded carve of whole patients
(:func:`mambaseg.data.folds.carve_groups`: ``patient001_frame01`` and ``..._frame12`` are held out together).

NIfTI files are read with nibabel (optional dependency: ``pip install mambaseg[medical]``); arrays come as
(X, Y, Z) and are transposed to the library's (D, H, W) = (Z, Y, X) order, with the voxel spacing reordered to
match. Affine and header are kept so predictions are written back with the source geometry.

Intensities are mapped to [0, 1] like the preprocessed sets the papers used, each channel by its name in
``channel_names`` (compared case-insensitively): ``"CT"`` is clipped to the fixed TransUNet abdomen window
:data:`CT_WINDOW` = [-125, 275] HU and scaled by 1/400; every other name (``"MRI"``, ``"T2"``, ...) is min-max scaled
per volume (a constant volume gives zeros). This is not nnU-Net's normalisation (its ``"CT"`` clips to the dataset's
foreground 0.5/99.5 percentiles and z-scores, any other name is z-scored per case). Of nnU-Net's scheme names,
``"rescale_to_0_1"`` is the same per-volume min-max scaling; ``"noNorm"``, ``"zscore"`` and ``"rgb_to_0_1"``
(:data:`NNUNET_SCHEMES`) are not implemented as such: they are min-max scaled, with a warning naming the channel each
time the dataset is opened. Checkpoints record the channel names and ``predict`` scales by the same rule.

Example:
    >>> raw = NnUNetRaw("Dataset027_ACDC")
    >>> splits = raw.splits(val_fraction=0.2, seed=0)
    >>> train = nnunet_slices(raw, splits["train"], image_size=224)
    >>> val = nnunet_volumes(raw, splits["val"])
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mambaseg.data.files import DatasetError, require_finite
from mambaseg.data.folds import carve_groups
from mambaseg.data.normalization import Normalization
from mambaseg.data.volumetric import SliceDataset2D, Volume, VolumeDataset, _LRU, check_labels

__all__ = [
    "CT_WINDOW",
    "GEOMETRY_TOLERANCE",
    "NNUNET_SCHEMES",
    "NnUNetRaw",
    "is_nnunet_root",
    "nnunet_cases",
    "nnunet_folds",
    "nnunet_slices",
    "nnunet_volumes",
    "read_nifti",
    "require_nibabel",
    "scale_intensity",
    "write_nifti",
]

#: TransUNet Synapse preprocessing window (HU)
CT_WINDOW: tuple[float, float] = (-125.0, 275.0)

#: nnU-Net's normalisation-scheme channel names (matched case-insensitively, as nnU-Net does) that are not
#: implemented as such: such channels are min-max scaled per volume (with a warning), as every name but "CT" is.
#: ``rescale_to_0_1`` is not listed: nnU-Net's scheme is the same per-volume min-max scaling.
NNUNET_SCHEMES: dict[str, tuple[str, str]] = {
    "nonorm": ("noNorm", "no scaling at all"),
    "zscore": ("zscore", "per-volume z-scoring"),
    "rgb_to_0_1": ("rgb_to_0_1", "division by 255"),
}

#: how far a label's geometry may differ from its image's: relative for the voxel spacing, absolute for the
#: direction cosines of the affine, in mm for its origin (float32 header rounding passes, a real shift does not)
GEOMETRY_TOLERANCE: dict[str, float] = {"spacing": 1e-4, "direction": 1e-4, "origin_mm": 1e-3}


def require_nibabel() -> Any:
    """Import nibabel or raise an ImportError that says how to install it."""
    try:
        import nibabel
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading/writing NIfTI needs nibabel: pip install 'mambaseg[medical]' (or pip install nibabel)"
        ) from e
    return nibabel


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, Any]:
    """Read a 3-D NIfTI file.

    Returns:
        ``(array, spacing, affine, header)``: array (D, H, W) = the file's (Z, Y, X), spacing per (D, H, W) axis,
        the 4x4 affine and the header of the file.

    Raises:
        DatasetError: unreadable file or not 3-D (a trailing singleton 4th axis is dropped).
    """
    nib = require_nibabel()
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: file not found")
    try:
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises several exception types for corrupt files
        raise DatasetError(f"{p}: cannot read as NIfTI ({e})") from None
    require_finite(data, p, "volume")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"{p}: expected a 3-D volume, got shape {data.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    array = np.ascontiguousarray(data.transpose(2, 1, 0))
    return array, (zooms[2], zooms[1], zooms[0]), np.asarray(img.affine), img.header


def file_shape(shape: Sequence[int]) -> str:
    """A (D, H, W) shape of :func:`read_nifti` as the NIfTI file stores it, for messages: ``(X, Y, Z) = (...)``, the
    order nibabel, ITK-SNAP and ``fslinfo`` show (a user comparing with them would otherwise see it reversed)."""
    return f"(X, Y, Z) = {tuple(int(n) for n in reversed(tuple(shape)))}"


def write_nifti(
    path: str | Path,
    array: np.ndarray,
    *,
    affine: np.ndarray | None = None,
    header: Any = None,
    spacing: Sequence[float] | None = None,
    dtype: Any = np.uint8,
) -> Path:
    """Write a (D, H, W) array as NIfTI (transposed back to (X, Y, Z)) with the given geometry.

    Args:
        path: output file (``.nii`` or ``.nii.gz``).
        array: (D, H, W) array.
        affine: 4x4 voxel-to-world matrix (default: diagonal from ``spacing`` or identity).
        header: source header whose qform and sform (each with its code, 0 included: a qform-only source gives a
            qform-only file) and units are copied (never its intensity scaling).
        spacing: per (D, H, W) axis, used when ``affine`` is None.
        dtype: on-disk data type (uint8 for label maps).
    """
    nib = require_nibabel()
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"write_nifti expects a (D, H, W) array, got shape {arr.shape}")
    if affine is None:
        affine = np.eye(4)
        if spacing is not None:
            affine[0, 0], affine[1, 1], affine[2, 2] = spacing[2], spacing[1], spacing[0]
    data = np.ascontiguousarray(arr.transpose(2, 1, 0)).astype(dtype)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    if header is not None:
        try:
            img.header.set_xyzt_units(*header.get_xyzt_units())
            qform, qcode = header.get_qform(coded=True)
            sform, scode = header.get_sform(coded=True)
            img.set_qform(qform, int(qcode))  # codes 0 too: nibabel's default would add an sform to a qform-only source
            img.set_sform(sform, int(scode))
        except AttributeError:  # non-NIfTI1 headers: keep the affine only
            pass
    img.header.set_data_dtype(dtype)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    return out


def scale_intensity(volume: np.ndarray, channel_name: str) -> np.ndarray:
    """Map one channel to [0, 1]: CT -> clip to :data:`CT_WINDOW` and scale; otherwise per-volume min-max."""
    v = np.asarray(volume, dtype=np.float32)
    if channel_name.strip().upper() == "CT":
        lo, hi = CT_WINDOW
        return ((np.clip(v, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.zeros_like(v, dtype=np.float32)
    return ((v - lo) / (hi - lo)).astype(np.float32)


def is_nnunet_root(path: str | Path) -> bool:
    """True when ``path`` holds ``dataset.json`` and ``imagesTr/``."""
    p = Path(path)
    return p.is_dir() and (p / "dataset.json").is_file() and (p / "imagesTr").is_dir()


def _parse_labels(labels: Any, where: Path) -> dict[int, str]:
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f"{where}: 'labels' must be a non-empty mapping")
    out: dict[int, str] = {}
    for k, v in labels.items():
        if isinstance(v, (list, tuple)):
            raise DatasetError(f"{where}: region-based label {k!r}: {v} is not supported (one value per class only)")
        try:
            if isinstance(v, (int, float)) and not isinstance(v, bool):  # v2: {"name": value}
                out[int(v)] = str(k)
            else:  # v1: {"value": "name"}
                out[int(k)] = str(v)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: cannot read label entry {k!r}: {v!r}") from None
    values = sorted(out)
    if values != list(range(len(values))):
        raise DatasetError(f"{where}: label values must be consecutive from 0, got {values}")
    return out


def _fmt(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in np.ravel(values)) + ")"


def _geometry_mismatch(image: tuple[tuple[float, ...], np.ndarray], label: tuple[tuple[float, ...], np.ndarray],
                       *, ref: str = "the image's") -> str | None:
    """What differs between the ``(spacing, affine)`` of an image and of its label (or of channel 0 and another
    channel of a case) beyond :data:`GEOMETRY_TOLERANCE` in the voxel grid (spacing, axis directions); ``None`` when
    they match. ``ref`` names the first in the message. The origin is :func:`_origin_shift`'s."""
    (isp, iaff), (lsp, laff) = image, label
    iaff, laff = np.asarray(iaff, dtype=np.float64), np.asarray(laff, dtype=np.float64)
    tol = GEOMETRY_TOLERANCE
    problems = []
    if not np.allclose(lsp, isp, rtol=tol["spacing"], atol=0.0):
        problems.append(f"voxel spacing (D, H, W) {_fmt(lsp)} vs {ref} {_fmt(isp)}")
    idir = iaff[:3, :3] / np.maximum(np.linalg.norm(iaff[:3, :3], axis=0), 1e-12)
    ldir = laff[:3, :3] / np.maximum(np.linalg.norm(laff[:3, :3], axis=0), 1e-12)
    if not np.allclose(ldir, idir, rtol=0.0, atol=tol["direction"]):
        problems.append(f"axis directions (affine columns) {(np.round(ldir, 4) + 0.0).T.tolist()} vs {ref} "
                        f"{(np.round(idir, 4) + 0.0).T.tolist()} (an axis flipped or permuted: the voxels do not "
                        "overlay)")  # + 0.0: no -0.0
    return "; ".join(problems) or None


def _origin_shift(image_affine: np.ndarray, label_affine: np.ndarray, *, ref: str = "the image's") -> str | None:
    """The label's origin against its image's (or a channel's against channel 0's, ``ref`` naming it), when they
    differ beyond :data:`GEOMETRY_TOLERANCE`; ``None`` otherwise. A shifted origin alone leaves voxel (i, j, k) of
    the label on voxel (i, j, k) of the image, the correspondence training uses; only the placement in the scanner
    frame disagrees (nnU-Net warns, too)."""
    lo, io = np.asarray(label_affine, np.float64)[:3, 3], np.asarray(image_affine, np.float64)[:3, 3]
    if np.allclose(lo, io, rtol=0.0, atol=GEOMETRY_TOLERANCE["origin_mm"]):
        return None
    return f"origin {_fmt(lo)} mm vs {ref} {_fmt(io)} mm"


class NnUNetRaw:
    """An nnU-Net raw dataset folder.

    Args:
        root: folder with ``dataset.json``, ``imagesTr`` and ``labelsTr``.

    Attributes:
        labels: ``{value: name}`` of all classes incl. background.
        channel_names: one name per input channel (``"CT"``, ``"MRI"``, ...); it sets the channel's intensity scaling
            (module docstring).
        channel_key: the ``dataset.json`` key they come from (``"channel_names"``, v1: ``"modality"``).
        file_ending: e.g. ``".nii.gz"``.
        cases: sorted training case names (with a label file).
        notes: the warnings this dataset raised so far (each also issued with :func:`warnings.warn`).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.notes: list[str] = []
        ds_json = self.root / "dataset.json"
        if not ds_json.is_file():
            raise DatasetError(f"{self.root}: no dataset.json (expected an nnU-Net raw dataset folder)")
        try:
            meta = json.loads(ds_json.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{ds_json}: invalid JSON ({e})") from None
        self.meta = meta
        if "labels" not in meta:
            raise DatasetError(f"{ds_json}: missing key 'labels'")
        self.labels = _parse_labels(meta["labels"], ds_json)
        channels = meta.get("channel_names", meta.get("modality"))
        if not isinstance(channels, dict) or not channels:
            raise DatasetError(f"{ds_json}: missing 'channel_names' (v2) or 'modality' (v1)")
        self.channel_key = "channel_names" if "channel_names" in meta else "modality"
        self.channel_names = [str(channels[k]) for k in sorted(channels, key=lambda s: int(s))]
        self.file_ending = str(meta.get("file_ending", ".nii.gz"))
        if self.file_ending not in (".nii.gz", ".nii"):
            raise DatasetError(f"{ds_json}: file_ending {self.file_ending!r} is not NIfTI; only .nii/.nii.gz are read")
        self.cases = self._discover()
        n = meta.get("numTraining")
        if isinstance(n, int) and n != len(self.cases):
            raise DatasetError(
                f"{ds_json}: numTraining is {n} but {len(self.cases)} labelled cases were found in imagesTr/labelsTr"
            )
        for c, name in enumerate(self.channel_names):
            scheme = NNUNET_SCHEMES.get(name.strip().casefold())
            if scheme is not None:
                self._warn(
                    f"{ds_json}: channel {c} is named {name!r}, nnU-Net's {scheme[0]!r} normalisation ({scheme[1]}), "
                    "which is not implemented here: the channel is min-max scaled to [0, 1] per volume instead (only "
                    f"'CT' has a scaling of its own, the fixed window [{CT_WINDOW[0]:g}, {CT_WINDOW[1]:g}] HU; every "
                    "other name is min-max scaled)")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def _warn(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
        warnings.warn(message, UserWarning, stacklevel=3)

    @property
    def label_names(self) -> dict[int, str]:
        """Foreground classes ``{value: name}``."""
        return {k: v for k, v in self.labels.items() if k != 0}

    def _discover(self) -> list[str]:
        img_dir, lab_dir = self.root / "imagesTr", self.root / "labelsTr"
        if not lab_dir.is_dir():
            raise DatasetError(f"{self.root}: missing labelsTr/ folder")
        end = self.file_ending
        first = sorted(p.name[: -len(end)][:-5] for p in img_dir.glob(f"*_0000{end}"))
        if not first:
            raise DatasetError(f"{img_dir}: no '<case>_0000{end}' files")
        for case in first:
            for c in range(len(self.channel_names)):
                f = img_dir / f"{case}_{c:04d}{end}"
                if not f.is_file():
                    raise DatasetError(f"{f}: channel {c} ({self.channel_names[c]}) of case {case!r} not found")
            if not (lab_dir / f"{case}{end}").is_file():
                raise DatasetError(f"{lab_dir / (case + end)}: label of case {case!r} not found")
        self._refuse_undeclared_channels(img_dir)
        have = set(first)
        stray = sorted(p for p in img_dir.glob(f"*_[0-9][0-9][0-9][0-9]{end}")
                       if not p.name.startswith(".") and p.name[: -len(end)][:-5] not in have)
        if stray:  # another channel's file of a case without its channel 0 file: nnU-Net refuses it too
            case = stray[0].name[: -len(end)][:-5]
            more = f" (and {len(stray) - 1} more)" if len(stray) > 1 else ""
            raise DatasetError(f"{stray[0]}{more}: channel file of case {case!r}, whose channel 0 file "
                               f"{img_dir / (case + '_0000' + end)} is not there; every case needs all its channel "
                               f"files '<case>_0000{end}' .. (add it, or remove the case's files)")
        orphans = sorted(p for p in lab_dir.glob(f"*{end}")
                         if not p.name.startswith(".") and p.name[: -len(end)] not in have)
        if orphans:
            more = f" (and {len(orphans) - 5} more)" if len(orphans) > 5 else ""
            raise DatasetError(
                f"{', '.join(map(str, orphans[:5]))}{more}: label file(s) without an image; expected "
                f"{img_dir / (orphans[0].name[: -len(end)] + '_0000' + end)} (one '<case>_<channel>{end}' file per "
                "channel in imagesTr)")
        return first

    def _refuse_undeclared_channels(self, img_dir: Path) -> None:
        """Refuse channel files ``<case>_NNNN`` of ``imagesTr`` whose channel dataset.json does not declare (nnU-Net's
        integrity check accepts no file it does not expect; training would silently ignore them)."""
        end, n = self.file_ending, len(self.channel_names)
        pattern = re.compile(r"_(\d{4})" + re.escape(end) + "$")
        extra = sorted(p for p in img_dir.glob(f"*_[0-9][0-9][0-9][0-9]{end}")
                       if not p.name.startswith(".") and (m := pattern.search(p.name)) and int(m.group(1)) >= n)
        if not extra:
            return
        declared = {str(c): name for c, name in enumerate(self.channel_names)}
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        files = f"'<case>_0000{end}'" + (f" .. '<case>_{n - 1:04d}{end}'" if n > 1 else "")
        raise DatasetError(
            f"{extra[0]}{more}: channel file(s) of a channel that {self.root / 'dataset.json'} does not declare: its "
            f"{self.channel_key!r} is {json.dumps(declared)} ({n} channel(s), files {files} only), so they would be "
            f"ignored; declare the channel in dataset.json (e.g. \"{self.channel_key}\": "
            f"{json.dumps({**declared, str(n): '<name>'})}) or remove the file(s) from {img_dir}")

    def image_files(self, case: str, folder: str = "imagesTr") -> list[Path]:
        """The channel files of ``case``."""
        return [self.root / folder / f"{case}_{c:04d}{self.file_ending}" for c in range(len(self.channel_names))]

    def label_file(self, case: str) -> Path:
        return self.root / "labelsTr" / f"{case}{self.file_ending}"

    def load_case(self, case: str, *, with_label: bool = True, folder: str = "imagesTr") -> Volume:
        """Read one case: image (D, H, W) or (C, D, H, W) scaled to [0, 1], labels, spacing, affine, header."""
        files = self.image_files(case, folder)
        chans: list[np.ndarray] = []
        spacing, affine, header = None, None, None
        for c, f in enumerate(files):
            arr, sp, aff, hdr = read_nifti(f)
            if chans:
                self._check_channel(case, c, f, files[0], (arr.shape, sp, aff), (chans[0].shape, spacing, affine))
            chans.append(scale_intensity(arr, self.channel_names[c]))
            if spacing is None:
                spacing, affine, header = sp, aff, hdr
        image = chans[0] if len(chans) == 1 else np.stack(chans)
        label = None
        if with_label:
            lf = self.label_file(case)
            lab, lsp, laff, _ = read_nifti(lf)
            if lab.shape != chans[0].shape:
                raise DatasetError(f"{lf}: label shape {file_shape(lab.shape)} differs from image shape "
                                   f"{file_shape(chans[0].shape)} of {files[0]}")
            assert spacing is not None and affine is not None
            diff = _geometry_mismatch((spacing, affine), (lsp, laff))
            if diff is not None:
                raise DatasetError(f"{lf}: label geometry differs from its image {files[0]}: {diff}; expected the "
                                   "image's spacing and affine (resample the label onto the image grid, or write it "
                                   "with the image's header)")
            shift = _origin_shift(affine, laff)
            if shift is not None:
                self._warn(f"{lf}: {shift} of {files[0]}; voxels are paired by index, as nnU-Net does (write the "
                           "label with the image's header to silence this)")
            check_labels(lab, self.num_classes, str(lf))
            label = lab.astype(np.int64)
        return Volume(
            id=case, image=image, label=label, spacing=spacing, affine=affine, path=str(files[0]),
            header=header, source_format="nifti",
        )

    def _check_channel(self, case: str, c: int, f: Path, first: Path, got: tuple[Any, Any, Any],
                       ref: tuple[Any, Any, Any]) -> None:
        """Channel ``c`` (file ``f``) of ``case`` against channel 0 (file ``first``), each ``(shape, spacing,
        affine)``: another shape, spacing or axis direction is an error naming both files, another origin a warning
        (the tolerances and helpers of the label check, which ``predict`` applies to channel files too)."""
        (shape, sp, aff), (shape0, sp0, aff0) = got, ref
        name = f"channel {c} ({self.channel_names[c]})"
        if shape != shape0:
            raise DatasetError(f"{f}: shape {file_shape(shape)} of {name} differs from channel 0 {first} "
                               f"{file_shape(shape0)} of case {case!r}")
        diff = _geometry_mismatch((sp0, aff0), (sp, aff), ref="channel 0's")
        if diff is not None:
            raise DatasetError(f"{f}: geometry of {name} differs from channel 0 {first} of case {case!r}: {diff}; "
                               "the channels of a case are paired voxel by voxel: resample them onto channel 0's "
                               "grid, or write them with its header")
        shift = _origin_shift(aff0, aff, ref="channel 0's")
        if shift is not None:
            self._warn(f"{f}: {shift} of {first} ({name} of case {case!r}); voxels are paired by index, as nnU-Net "
                       "does (write the channel with channel 0's header to silence this)")

    def given_folds(self) -> list[dict[str, list[str]]] | None:
        """The folds of the dataset's own ``splits_final.json`` (nnU-Net's list of ``{"train", "val"}``), checked to
        name only labelled cases; ``None`` when the file is absent."""
        sf = self.root / "splits_final.json"
        if not sf.is_file():
            return None
        try:
            folds = json.loads(sf.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{sf} cannot be read as JSON ({exc})") from None
        if not isinstance(folds, list) or not folds or not all(
                isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("val"), list)
                for f in folds):
            raise DatasetError(f"{sf}: expected a list of {{'train': [...], 'val': [...]}} folds")
        unknown = sorted({str(c) for f in folds for c in (*f["train"], *f["val"])} - set(self.cases))
        if unknown:
            raise DatasetError(f"{sf}: cases {unknown[:5]} are not in imagesTr/labelsTr")
        return [{"train": [str(c) for c in f["train"]], "val": [str(c) for c in f["val"]]} for f in folds]

    def splits(self, *, val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[str]]:
        """Train/val case lists: fold 0 of ``splits_final.json`` when present (checked: no case in both lists, neither
        list empty; labelled cases in neither list are a warning), else a seeded carve of whole patients
        (:func:`mambaseg.data.folds.carve_groups`, the grouping of ``--folds``)."""
        given = self.given_folds()
        if given is not None:
            return self._check_fold0(given[0])
        val = set(carve_groups(self.cases, val_fraction, seed, where=self.root))
        return {"train": [c for c in self.cases if c not in val], "val": sorted(val)}

    def _check_fold0(self, fold: dict[str, list[str]]) -> dict[str, list[str]]:
        sf = self.root / "splits_final.json"
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both:
            raise DatasetError(f"{sf}: fold 0 lists {len(both)} case(s) in both 'train' and 'val': {both[:5]}; "
                               "expected disjoint lists (a validation case must not be trained on)")
        for key in ("train", "val"):
            if not fold[key]:
                raise DatasetError(f"{sf}: fold 0 has an empty {key!r} list; expected at least one case")
        unused = sorted(set(self.cases) - set(fold["train"]) - set(fold["val"]))
        if unused:
            self._warn(f"{sf}: fold 0 leaves {len(unused)} of the {len(self.cases)} labelled cases out of both "
                       f"'train' and 'val' ({', '.join(unused[:5])}{', ...' if len(unused) > 5 else ''}); they are "
                       "not used, as nnU-Net uses a custom split as given")
        return fold

    def absent_classes(self, cases: Sequence[str]) -> dict[int, str]:
        """The foreground classes of ``dataset.json`` that occur in none of the label files of ``cases``
        (``{value: name}``). Label files are read until every class has been seen (usually the first few);
        unreadable files are skipped here (:meth:`load_case` reports them)."""
        missing = set(self.label_names)
        for case in cases:
            if not missing:
                break
            try:
                lab = read_nifti(self.label_file(case))[0]
            except DatasetError:
                continue
            missing = {v for v in missing if not np.any(lab == v)}
        return {v: self.label_names[v] for v in sorted(missing)}

    def warn_absent_classes(self, cases: Sequence[str], split: str) -> dict[int, str]:
        """Warn (:attr:`notes`) about each class of ``dataset.json`` that no label of ``cases`` holds; return them."""
        absent = self.absent_classes(cases)
        for v, name in absent.items():
            self._warn(
                f"{self.root / 'dataset.json'}: class {name!r} (label {v}) occurs in none of the {len(cases)} "
                f"{split} label file(s) in labelsTr: "
                + ("it is never learned, and " if split == "train" else "")
                + "its Dice is meaningless (the TransUNet rule scores 1.0 on every volume where it is predicted at "
                "all, inflating the mean): remove it from 'labels' or check the label files")
        return absent


class _CaseLoader:
    """Picklable ``loader(i) -> Volume`` of labelled cases."""

    def __init__(self, raw: NnUNetRaw, cases: list[str]) -> None:
        self.raw, self.cases = raw, list(cases)

    def __call__(self, i: int) -> Volume:
        return self.raw.load_case(self.cases[i])


class _CaseSliceLoader:
    """Picklable ``loader(i) -> (image (H, W, C), label)`` of slice ``z`` of a case, with a small volume cache;
    ``spacing(i)``: the case's voxel spacing (D, H, W), as :meth:`NnUNetRaw.load_case` reads it."""

    def __init__(self, raw: NnUNetRaw, index: list[tuple[str, int]], cache_size: int) -> None:
        self.raw, self.index = raw, list(index)
        self.cache = _LRU(cache_size)

    def _volume(self, i: int) -> Volume:
        case = self.index[i][0]
        return self.cache.get(case, lambda: self.raw.load_case(case))

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        vol, z = self._volume(i), self.index[i][1]
        assert vol.label is not None
        return vol.slice_image(z), vol.label[z]

    def spacing(self, i: int) -> tuple[float, ...] | None:
        return self._volume(i).spacing


def nnunet_volumes(raw: NnUNetRaw, cases: Sequence[str]) -> VolumeDataset:
    """Evaluation volumes of ``cases``."""
    cases = list(cases)
    unknown = [c for c in cases if c not in set(raw.cases)]
    if unknown:
        raise DatasetError(f"{raw.root}: cases {unknown[:5]} not found in imagesTr/labelsTr")
    return VolumeDataset(
        cases,
        _CaseLoader(raw, cases),
        label_names=raw.label_names,
        num_classes=raw.num_classes,
        paths=[str(raw.image_files(c)[0]) for c in cases],
    )


def nnunet_slices(
    raw: NnUNetRaw,
    cases: Sequence[str],
    *,
    image_size: int | tuple[int, int] = 224,
    augment: bool = True,
    normalization: Normalization | None | str = "paper",
    preset: str = "msvmunet",
    seed: int | None = None,
    cache_volumes: int = 4,
) -> SliceDataset2D:
    """2-D training slices (along D) of ``cases``; volumes are read on demand and kept in a small LRU cache."""
    cases = list(cases)
    depths = []
    nib = require_nibabel()
    for c in cases:
        f = raw.image_files(c)[0]
        shape = nib.load(str(f)).shape
        depths.append(int(shape[2]))
    index = [(c, z) for c, d in zip(cases, depths) for z in range(d)]
    return SliceDataset2D(
        [f"{c}_slice{z:03d}" for c, z in index],
        _CaseSliceLoader(raw, index, max(1, cache_volumes)),
        image_size=image_size,
        augment=augment,
        num_classes=raw.num_classes,
        label_names=raw.label_names,
        normalization=normalization,
        paths=[str(raw.image_files(c)[0]) for c, _ in index],
        preset=preset,
        seed=seed,
        in_chans=len(raw.channel_names),
    )


def nnunet_cases(root: str | Path) -> list[str]:
    """The cross-validation pool: every labelled case of ``imagesTr``/``labelsTr``."""
    return list(NnUNetRaw(root).cases)


def nnunet_folds(root: str | Path) -> list[dict[str, list[str]]] | None:
    """The folds of the dataset's own ``splits_final.json`` (:meth:`NnUNetRaw.given_folds`), ``None`` without it."""
    return NnUNetRaw(root).given_folds()


def open_nnunet(root: Path, cfg: Any, *, splits: tuple[str, ...], normalization: Any) -> Any:
    """nnU-Net raw (NIfTI) layout opener: slices of the training cases, volumes of the validation cases (fold 0 of
    the dataset's ``splits_final.json``, a seeded carve, or with ``data.split_file`` that file's train/val cases: a
    cross-validation fold)."""
    from mambaseg.data.task import DataTask, DataTaskError, image_size_of, volume_label_map
    from mambaseg.data.transforms import resolve_augmentation
    from mambaseg.data.volumetric import paper_normalization

    raw = NnUNetRaw(root)
    if cfg.data.split_file:
        from mambaseg.data.splits import read_split_file

        sp = read_split_file(cfg.data.split_file, list(raw.cases))
    else:
        sp = raw.splits(val_fraction=cfg.data.val_fraction, seed=cfg.data.split_seed)
    in_chans = len(raw.channel_names)
    norm = normalization if normalization is not None else paper_normalization(in_chans)
    ds: dict[str, Any] = {}
    for s in splits:
        if s in ("train", "val"):
            raw.warn_absent_classes(sp[s], s)
        if s == "train":
            ds[s] = nnunet_slices(raw, sp["train"], image_size=image_size_of(cfg), augment=cfg.data.augment,
                                  preset=resolve_augmentation(cfg.data.augmentation, "msvmunet"),
                                  normalization=norm)
        elif s == "val":
            ds[s] = nnunet_volumes(raw, sp["val"])
        else:
            held = (f"{root / 'labelsTs'} is not part of nnU-Net's format; score the test cases with `mambaseg "
                    f"predict --checkpoint CKPT --input {root / 'imagesTs'} --out PRED` then `mambaseg score PRED "
                    f"{root / 'labelsTs'}`" if (root / "labelsTs").is_dir() else "imagesTs has no labels")
            raise DataTaskError(f"nnU-Net raw datasets have labelled splits train and val only ({held}); got {s!r}")
    return DataTask(name="nnunet", datasets=ds, evaluation="volume_slicewise",
                    label_map=volume_label_map(raw.label_names), num_classes=raw.num_classes, in_chans=in_chans,
                    normalization=norm, info={"root": str(root), "val_cases": sp["val"],
                                              "channel_names": list(raw.channel_names),
                                              **{f"n_{s}": len(d) for s, d in ds.items()},
                                              **({"warnings": list(raw.notes)} if raw.notes else {})})
