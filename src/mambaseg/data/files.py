"""File discovery, reading and mask interpretation for 2-D folder datasets.

Layout: ``ROOT/<split>/images/<id>.<ext>`` and ``ROOT/<split>/masks/<id>[_segmentation|_mask].<ext>``.
Pairs are matched by file stem; a mask stem may carry the ISIC suffix ``_segmentation`` (or ``_mask``).
Images and masks are read with Pillow, which raises on truncated or corrupt files instead of returning
partial pixels; the EXIF ``Orientation`` tag is applied on read (images and masks alike). 16-bit colour PNG/TIFF
images, which Pillow reduces to 8 bits, are decoded with OpenCV (a required dependency) to keep every level.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DatasetError",
    "IMAGE_EXTENSIONS",
    "LOSSY_EXTENSIONS",
    "IMAGE_DIR_NAMES",
    "MASK_DIR_NAMES",
    "MASK_SUFFIXES",
    "VOLUME_SUFFIXES",
    "Pair",
    "FolderListing",
    "channel_file",
    "group_channel_files",
    "holds_volumes",
    "is_volume_path",
    "list_split",
    "match_mask_files",
    "image_from_pil",
    "read_image",
    "read_mask",
    "mask_to_labels",
    "to_uint8",
    "require_finite",
    "volume_id",
    "volume_suffix",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOSSY_EXTENSIONS = (".jpg", ".jpeg")
IMAGE_DIR_NAMES = ("images", "image", "imgs", "img")
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "gt", "annotations")
MASK_SUFFIXES = ("", "_segmentation", "_Segmentation", "_mask")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".h5", ".npz", ".npy")


class DatasetError(ValueError):
    """A dataset on disk does not have the expected layout or content; the message names the files."""


@dataclass(frozen=True)
class Pair:
    """One image and its mask (``mask`` is None when no mask was found)."""

    id: str
    image: Path
    mask: Path | None


@dataclass
class FolderListing:
    """Result of scanning one split folder."""

    split_dir: Path
    pairs: list[Pair] = field(default_factory=list)
    orphan_masks: list[Path] = field(default_factory=list)
    duplicates: list[tuple[str, list[Path]]] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.pairs]

    def by_id(self) -> dict[str, Pair]:
        return {p.id: p for p in self.pairs}


def _find_subdir(split_dir: Path, names: tuple[str, ...], what: str) -> Path:
    for n in names:
        d = split_dir / n
        if d.is_dir():
            return d
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
    raise DatasetError(
        f"{split_dir}: no {what} folder; expected one of {'/'.join(names)} (found folders: {found or 'none'})"
    )


def volume_suffix(path: str | Path) -> str:
    """The volume file type of ``path`` (``.nii.gz`` counts as one suffix), else its plain suffix, lower case."""
    name = Path(path).name.lower()
    for s in VOLUME_SUFFIXES:
        if name.endswith(s):
            return s
    return Path(path).suffix.lower()


def is_volume_path(path: str | Path) -> bool:
    """True when ``path`` names a volume file type (NIfTI, h5, npz, npy)."""
    return volume_suffix(path) in VOLUME_SUFFIXES


def volume_id(path: str | Path) -> str:
    """The case id of a volume file: its name without the volume suffix (``.npy.h5`` of TransUNet included)."""
    name = Path(path).name
    for s in (".nii.gz", ".npy.h5", ".npz.h5", ".nii", ".h5", ".npz", ".npy"):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return Path(path).stem


def channel_file(path: str | Path) -> tuple[str, int] | None:
    """``(case, channel)`` of an nnU-Net raw input file ``<case>_<NNNN><ext>`` (four digits), else ``None``."""
    m = re.fullmatch(r"(.+)_(\d{4})", volume_id(path))
    return (m.group(1), int(m.group(2))) if m else None


def group_channel_files(files: Sequence[Path], channels: int) -> list[list[Path]]:
    """nnU-Net raw inputs grouped by case: the files ``<case>_0000<ext>`` ... ``<case>_<channels - 1><ext>`` of each
    case in channel order, cases sorted.

    Raises:
        DatasetError: a file not named ``<case>_<NNNN>``, a channel index of ``channels`` or above, two files of one
            channel of a case, or a case without the file of a channel (the message names the case and the index).
    """
    ends = f"<case>_0000 ... <case>_{channels - 1:04d}"
    cases: dict[str, dict[int, Path]] = {}
    for f in files:
        found = channel_file(f)
        if found is None:
            raise DatasetError(f"{f}: not an nnU-Net channel file; a model of {channels} input channels reads one file "
                               f"per channel of each case, named {ends} (+ the volume suffix)")
        case, c = found
        if c >= channels:
            raise DatasetError(f"{f}: channel {c} of case {case!r}, but the model takes {channels} channels ({ends})")
        if c in cases.setdefault(case, {}):
            raise DatasetError(f"{cases[case][c]} and {f} are both channel {c} of case {case!r}; keep one")
        cases[case][c] = f
    for case, got in sorted(cases.items()):
        missing = [c for c in range(channels) if c not in got]
        if missing:
            have = got[min(got)]
            raise DatasetError(f"case {case!r}: channel {missing[0]} is missing ("
                               f"{have.parent / f'{case}_{missing[0]:04d}{volume_suffix(have)}'} not found; missing "
                               f"channel(s) {missing}); the model takes {channels} channels, one file each ({ends})")
    return [[got[c] for c in range(channels)] for _, got in sorted(cases.items())]


def _image_files(d: Path) -> list[Path]:
    return sorted(
        p for p in d.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def list_split(split_dir: str | Path) -> FolderListing:
    """Scan ``split_dir/{images,masks}`` and match images to masks by stem.

    Args:
        split_dir: e.g. ``ROOT/train``.

    Returns:
        :class:`FolderListing` with the pairs sorted by id, masks that match no image, and ids that occur
        more than once among the images (e.g. ``a.png`` and ``a.jpg``).

    Raises:
        DatasetError: the folder or its ``images``/``masks`` sub-folder does not exist.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetError(f"split folder {split_dir} does not exist")
    img_dir = _find_subdir(split_dir, IMAGE_DIR_NAMES, "images")
    mask_dir = _find_subdir(split_dir, MASK_DIR_NAMES, "masks")
    listing = FolderListing(split_dir=split_dir)

    images: dict[str, list[Path]] = {}
    for p in _image_files(img_dir):
        images.setdefault(p.stem, []).append(p)
    masks: dict[str, list[Path]] = {}
    for p in _image_files(mask_dir):
        masks.setdefault(p.stem, []).append(p)

    used: set[str] = set()
    for stem in sorted(images):
        paths = images[stem]
        if len(paths) > 1:
            listing.duplicates.append((stem, paths))
        mask = None
        for suffix in MASK_SUFFIXES:
            cand = masks.get(stem + suffix)
            if cand:
                mask = cand[0]
                used.add(stem + suffix)
                if len(cand) > 1:
                    listing.duplicates.append((stem + suffix, cand))
                break
        listing.pairs.append(Pair(id=stem, image=paths[0], mask=mask))
    for stem in sorted(set(masks) - used):
        listing.orphan_masks.extend(masks[stem])
    return listing


def _open(path: Path, what: str) -> Image.Image:
    """Decode an image file fully, in its DISPLAY orientation (the EXIF ``Orientation`` tag applied), so an image
    and its mask line up whichever of them a camera or editor stored rotated."""
    return _decode(path, what)[0]


def _deep_colour(img: Image.Image) -> bool:
    """Whether an opened (not yet loaded) colour or grey+alpha file stores more than 8 bits per sample, which
    Pillow's ``RGB``/``RGBA``/``LA`` modes reduce to 8 (PNG raw modes ``RGB;16B``, TIFF ``BitsPerSample`` 16)."""
    if img.mode not in ("RGB", "RGBA", "LA"):
        return False
    for tile in img.tile:
        raw = tile.args[0] if isinstance(tile.args, tuple) and tile.args else tile.args
        if isinstance(raw, str) and ";16" in raw:
            return True
    bits = getattr(img, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    return bits is not None and max(bits if isinstance(bits, tuple) else (bits,)) > 8


def _decode(path: Path, what: str) -> tuple[Image.Image, bool, int]:
    """:func:`_open`, also telling whether the file is deep colour (:func:`_deep_colour`) and its EXIF orientation."""
    try:
        img = Image.open(path)
        deep = _deep_colour(img)  # before load(), which clears the tile list
        img.load()  # decode fully: truncated/corrupt files raise here
        orientation = int(img.getexif().get(0x0112, 1) or 1) if deep else 1  # a PNG's eXIf may follow its pixels
        img = ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} file not found") from None
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{path}: {what} refused as a possible decompression bomb ({exc}); expected an image "
                           f"of at most {Image.MAX_IMAGE_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt {what} ({exc}); expected a valid image file") from None
    return img, deep, orientation


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``arr`` (H, W[, C]) in display orientation: the EXIF ``Orientation`` transform of ``ImageOps.exif_transpose``."""
    ops = {
        2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
        3: lambda a: np.rot90(a, 2),  # ROTATE_180
        4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
        5: lambda a: np.swapaxes(a, 0, 1),  # TRANSPOSE
        6: lambda a: np.rot90(a, 3),  # ROTATE_270
        7: lambda a: np.rot90(np.swapaxes(a, 0, 1), 2),  # TRANSVERSE
        8: lambda a: np.rot90(a, 1),  # ROTATE_90
    }
    return ops[orientation](arr) if orientation in ops else arr


#: how to turn a 16-bit colour file this library cannot decode into one it reads with every level
_DEEP_COLOUR_HINT = ("convert it to 16-bit grey (e.g. cv2.imwrite('x.png', cv2.cvtColor(cv2.imread(f, "
                     "cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2GRAY))) or to an 8-bit RGB PNG")


def _read_deep_colour(path: Path, in_chans: int, orientation: int, size: tuple[int, int]) -> np.ndarray:
    """A 16-bit colour (or grey+alpha) PNG/TIFF as float32 ``value / 65535`` (H, W, in_chans), alpha dropped."""
    import cv2

    try:
        raw = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except (cv2.error, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: 16-bit colour image that OpenCV cannot decode ({exc}); {_DEEP_COLOUR_HINT}") \
            from None
    if raw is None or raw.dtype != np.uint16 or raw.ndim not in (2, 3):
        got = "nothing" if raw is None else f"{raw.dtype} {raw.shape}"
        raise DatasetError(f"{path}: 16-bit colour image that OpenCV does not decode to 16-bit samples (got {got}); "
                           f"16-bit colour is supported for PNG and TIFF files OpenCV reads; {_DEEP_COLOUR_HINT}")
    if raw.ndim == 3:
        raw = raw[..., :1] if raw.shape[2] < 3 else raw[..., 2::-1]  # grey+alpha -> grey; BGR(A) -> RGB, no alpha
    raw = _orient(raw, orientation)
    if raw.shape[:2] != (size[1], size[0]):
        raise DatasetError(f"{path}: OpenCV decodes this 16-bit colour image as {raw.shape[1]}x{raw.shape[0]} (WxH) "
                           f"but Pillow as {size[0]}x{size[1]}; {_DEEP_COLOUR_HINT}")
    arr = raw.astype(np.float64) / 65535.0
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1 and in_chans == 3:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[2] == 3 and in_chans == 1:
        arr = (arr @ np.array([0.299, 0.587, 0.114]))[..., None]  # ITU-R 601 luma, as Pillow's convert("L")
    return np.ascontiguousarray(arr.astype(np.float32))


def require_finite(array: np.ndarray, path: str | Path, what: str = "image") -> np.ndarray:
    """Return ``array`` if every value is finite; else raise :class:`DatasetError` naming the file and the count.

    A few NaN voxels would otherwise turn a whole min-max-scaled volume into NaN (predicted as background without
    a sign) or stop training with a misleading "diverged" message; such files are refused, never repaired.
    """
    arr = np.asarray(array)
    if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
        return array
    bad = ~np.isfinite(arr)
    n = int(np.count_nonzero(bad))
    if n:
        n_nan = int(np.count_nonzero(np.isnan(arr)))
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(
            f"{path}: {what} holds {n} non-finite value(s) of {arr.size} ({n_nan} NaN, {n - n_nan} inf; first at "
            f"index {first}); expected finite values everywhere: fix or re-export the file, or leave it out"
        )
    return array


def read_image(path: str | Path, in_chans: int = 3) -> np.ndarray:
    """Read an image as (H, W, in_chans): uint8 for 8-bit files, float32 in [0, 1] for 16-bit ones.

    Grey images are replicated to 3 channels when ``in_chans == 3``; colour images are converted to grey
    (ITU-R 601 luma) when ``in_chans == 1``. 16-bit images keep every level: they are returned as ``value / 65535``
    in float32 (a 12-bit ramp keeps its 4096 levels): grey PNG/TIFF (``I;16*``, or 32-bit integer ``I`` holding
    values up to 65535), and colour or grey+alpha PNG/TIFF of 16 bits per sample (48/64-bit RGB/RGBA), which Pillow
    would reduce to 8 bits and OpenCV decodes instead. The training pipeline, the cache writer and the predictor
    take float32 [0, 1] images like uint8 ones. An alpha channel (RGBA, grey+alpha, palette transparency) is
    dropped: the colour values are read as stored, not composited.

    Raises:
        DatasetError: an unreadable file, a floating-point image, integer values outside 0..65535, or a 16-bit
            colour file OpenCV cannot decode (the message says how to convert it).
    """
    path = Path(path)
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3 for image files, got {in_chans}")
    img, deep, orientation = _decode(path, "image")
    if deep:
        return _read_deep_colour(path, in_chans, orientation, img.size)
    return image_from_pil(img, in_chans, path)


def image_from_pil(img: Image.Image, in_chans: int = 3, path: str | Path = "<image>") -> np.ndarray:
    """A decoded Pillow image as :func:`read_image` returns a file (its pixel rules; no EXIF step, no OpenCV).

    uint8 (H, W, in_chans) for 8-bit modes (alpha dropped, grey replicated, colour to luma), float32
    ``value / 65535`` for 16-bit grey (``I;16*``, ``I`` up to 65535). A 16-bit COLOUR file opened with Pillow already
    holds 8 bits per sample; :func:`read_image` of its path keeps all 16.

    Raises:
        DatasetError: a floating-point (``F``) image, or integer values outside 0..65535 (the message names ``path``).
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3 for images, got {in_chans}")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        raw = np.asarray(img)
        if raw.ndim == 3:
            raw = raw[..., 0]
        if raw.size and (int(raw.min()) < 0 or int(raw.max()) > 65535):
            raise DatasetError(f"{path}: integer image with values in [{int(raw.min())}, {int(raw.max())}]; expected "
                               "8-bit or 16-bit (0..65535) pixels")
        arr = (raw.astype(np.float64) / 65535.0).astype(np.float32)[..., None]
        if in_chans == 3:
            arr = np.repeat(arr, 3, axis=-1)
        return np.ascontiguousarray(arr)
    if img.mode == "F":
        raise DatasetError(f"{path}: floating-point image; expected 8- or 16-bit integer pixels")
    img = img.convert("RGB" if in_chans == 3 else "L")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return np.ascontiguousarray(arr)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An image as uint8: uint8 unchanged, float32 [0, 1] (16-bit files) rounded to 0..255 (caches, overlays)."""
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask's raw values as an (H, W) integer array.

    Grey (``L``), 1-bit and palette (``P``: the palette indices) masks are returned as stored; 16-bit masks
    as int32; RGB masks are converted to grey luma first. A mask with an alpha channel (RGBA, grey+alpha) is read
    only when the alpha is fully opaque everywhere (then it is dropped, as for images); otherwise the mask may be
    drawn in its alpha channel, which is not read, so it is refused.

    Raises:
        DatasetError: an unreadable file, a floating-point mask or a mask whose alpha channel is not fully opaque.
    """
    path = Path(path)
    img = _open(path, "mask")
    if "A" in img.getbands():
        alpha = np.asarray(img.getchannel("A"))
        if alpha.size and int(alpha.min()) < 255:
            raise DatasetError(
                f"{path}: mask with an alpha channel that is not fully opaque (alpha {int(alpha.min())}..."
                f"{int(alpha.max())}, {int(np.count_nonzero(alpha < 255))} pixel(s) below 255); the alpha channel is "
                "not read, so a mask drawn in it would be lost: save masks as grey (L), palette (P) or label images "
                "without an alpha channel")
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("L", "P"):
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return np.asarray(img).astype(np.int32)
    if img.mode == "F":
        raise DatasetError(f"{path}: floating-point mask; expected integer labels or a 0/255 binary mask")
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _values(raw: np.ndarray) -> np.ndarray:
    if raw.dtype == np.uint8:
        counts = np.bincount(raw.ravel(), minlength=256)
        return np.flatnonzero(counts)
    return np.unique(raw)


def _fmt_values(vals: np.ndarray, limit: int = 8) -> str:
    v = [int(x) for x in vals[:limit]]
    more = f", ... ({len(vals)} distinct)" if len(vals) > limit else ""
    return "{" + ", ".join(map(str, v)) + more + "}"


#: how a run reads masks of several classes (the default hint of :func:`mask_to_labels`' binary-mask error)
MULTICLASS_HINT = ("masks of several classes: data.binary=false with data.label_values, e.g. --set data.binary=false "
                   "--set data.label_values=[0,1,2]; in Python binary=False")


def mask_to_labels(
    raw: np.ndarray,
    *,
    binary: bool,
    label_values: list[int] | tuple[int, ...] | None = None,
    lossy: bool = False,
    path: str | Path = "<mask>",
    multiclass_hint: str = MULTICLASS_HINT,
) -> np.ndarray:
    """Convert raw mask values to class indices (uint8 (H, W), or int64 if there are > 256 classes).

    Binary (``binary=True``): values in {0, 1} are used as they are; values in {0, 255} become ``> 127``.
    Other values are accepted only for lossy files (``lossy=True``, JPEG masks carry compression noise),
    which are thresholded at ``> 127`` (a lossy mask whose largest value is 2..127, e.g. a 0/1 mask saved as JPEG,
    is a :class:`DatasetError`: the threshold would empty it); otherwise a :class:`DatasetError` names the file and
    the values, and says how the caller reads masks of several classes (``multiclass_hint``: a run's config keys by
    default).

    Multi-class (``binary=False``): with ``label_values`` the raw value ``label_values[k]`` becomes class
    ``k`` and any other value is an error; without it the raw values are the class indices.
    """
    vals = _values(raw)
    if binary:
        if label_values is not None:
            raise ValueError("label_values is only used for multi-class masks (binary=False)")
        if vals.size == 0 or vals.max() <= 1:
            return (raw > 0).astype(np.uint8)
        if lossy and vals.max() <= 127:
            raise DatasetError(
                f"{path}: lossy (JPEG) mask whose largest value is {int(vals.max())}; lossy masks are thresholded at "
                "> 127, which would make it empty. A 0/1 mask saved as JPEG? save masks as PNG, or scale to 0/255")
        if set(vals.tolist()) <= {0, 255} or lossy:
            return (raw > 127).astype(np.uint8)
        raise DatasetError(
            f"{path}: unexpected mask values {_fmt_values(vals)}; a binary mask must hold {{0, 255}} or {{0, 1}} "
            f"({multiclass_hint})"
        )
    if label_values is None:
        if vals.size and vals.min() < 0:
            raise DatasetError(f"{path}: negative mask values {_fmt_values(vals)}; expected class indices >= 0")
        return raw.astype(np.uint8 if raw.dtype == np.uint8 else np.int64)
    lv = [int(v) for v in label_values]
    if len(set(lv)) != len(lv):
        raise ValueError(f"label_values must be distinct, got {label_values}")
    unexpected = sorted(set(vals.tolist()) - set(lv))
    if unexpected:
        raise DatasetError(
            f"{path}: unexpected mask values {_fmt_values(np.asarray(unexpected))}; expected only the "
            f"label_values {lv}"
        )
    out = np.zeros(raw.shape, dtype=np.uint8 if len(lv) <= 256 else np.int64)
    for k, v in enumerate(lv):
        out[raw == v] = k
    return out


def _mask_key(stem: str) -> str:
    for suffix in MASK_SUFFIXES[1:]:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def match_mask_files(pred_dir: str | Path, gt_dir: str | Path, *, volumes: bool = False,
                     unpredicted: list[Path] | None = None) -> list[tuple[str, Path, Path]]:
    """Pair predicted and ground-truth mask files by stem (a ``_segmentation``/``_mask`` suffix is ignored on both
    sides; a folder holding a ``masks/`` sub-folder is read from it). With ``volumes`` the files are label volumes
    (:data:`VOLUME_SUFFIXES`) paired by :func:`volume_id`, a trailing ``_pred`` (the name ``mambaseg predict``
    gives) ignored as well.

    Args:
        unpredicted: when a list is given, ground-truth files without a prediction are appended to it (sorted by
            id) and left out of the pairs instead of being an error (nnU-Net's ``--chill``); a prediction without
            ground truth is an error either way.

    Returns:
        ``[(id, pred_path, gt_path)]`` sorted by id.

    Raises:
        DatasetError: a folder is missing or empty, a stem occurs twice, or a file has no partner (every unmatched
            file is named, on both sides).
    """
    kinds = ", ".join(VOLUME_SUFFIXES if volumes else IMAGE_EXTENSIONS)

    def key(f: Path) -> str:
        if not volumes:
            return _mask_key(f.stem)
        k = volume_id(f)
        return _mask_key(k[: -len("_pred")] if k.endswith("_pred") else k)

    def listing(d: Path, what: str) -> dict[str, Path]:
        if not d.is_dir():
            raise DatasetError(f"{what} folder {d} does not exist")
        for name in MASK_DIR_NAMES:
            if (d / name).is_dir():
                d = d / name
                break
        files = (sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith(".") and is_volume_path(f))
                 if volumes else _image_files(d))
        if not files:
            raise DatasetError(f"{what} folder {d} holds no {'volume' if volumes else 'mask'} files ({kinds})")
        out: dict[str, Path] = {}
        for f in files:
            k = key(f)
            if k in out:
                raise DatasetError(f"{what} folder {d}: {out[k].name} and {f.name} are both case {k!r}")
            out[k] = f
        return out

    preds, gts = listing(Path(pred_dir), "prediction"), listing(Path(gt_dir), "ground-truth")
    only_pred, only_gt = sorted(set(preds) - set(gts)), sorted(set(gts) - set(preds))
    if unpredicted is not None:
        unpredicted.extend(gts[k] for k in only_gt)
        only_gt = []
    if only_pred or only_gt:
        lines = [f"  - prediction without ground truth: {preds[k]}" for k in only_pred[:20]]
        lines += [f"  - ground truth without prediction: {gts[k]}" for k in only_gt[:20]]
        more = len(only_pred) + len(only_gt) - len(lines)
        raise DatasetError(f"{len(only_pred) + len(only_gt)} file(s) of {pred_dir} and {gt_dir} have no partner "
                           "(files are matched by stem):\n" + "\n".join(lines)
                           + (f"\n  ... and {more} more" if more > 0 else ""))
    return [(k, preds[k], gts[k]) for k in sorted(preds)]


def holds_volumes(folder: str | Path) -> bool:
    """Whether ``folder`` (or its mask sub-folder, as :func:`match_mask_files` reads it) holds label volumes."""
    d = Path(folder)
    subs = [d / n for n in MASK_DIR_NAMES if (d / n).is_dir()][:1]
    return any(f.is_file() and is_volume_path(f) for c in (subs or [d]) if c.is_dir() for f in c.iterdir())
