"""2-D prediction from a trained checkpoint: one image, a batch, or a whole folder.

The predictor repeats the evaluation preprocessing of training exactly (read -> resize to the checkpoint's
``image_size`` -> scale to [0, 1] -> the stored normalisation), runs the model, upsamples the logits back to each
image's ORIGINAL size (bilinear) and turns them into labels with the library's one rule
(:func:`mambaseg.metrics.labels_from_logits`: sigmoid >= threshold for binary, argmax for multi-class).

Example:
    >>> import mambaseg
    >>> predictor = mambaseg.load("runs/ph2/checkpoints/best.pt")  # doctest: +SKIP
    >>> mask = predictor.predict("lesion.jpg")          # (H, W) int64 class indices at the image's size
    >>> predictor.predict_folder("images/", "predictions/")  # masks/*.png + overlays/*.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.data.files import IMAGE_EXTENSIONS
from mambaseg.inference.postprocess import parse_postprocess, postprocess_labels
from mambaseg.metrics import labels_from_logits
from mambaseg.runtime import autocast_for, resolve_device
from mambaseg.utils.modules import weight_dtype

__all__ = ["Predictor", "load", "list_images", "IMAGE_EXTENSIONS", "overlay_mask", "PALETTE", "default_label_map",
           "model_label_map"]


#: overlay colours of classes 1, 2, ... (RGB)
PALETTE = (
    (255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 200, 0), (255, 0, 255), (0, 220, 220),
    (255, 128, 0), (128, 0, 255), (128, 128, 0),
)

ImageInput = Any  # path (str/Path), (H, W[, C]) numpy array, PIL image, or (C, H, W) torch tensor
#: what :meth:`Predictor.read` takes as one image (named in its error messages)
ACCEPTED_INPUTS = ("a path (str or Path), an (H, W) or (H, W, C) numpy array (uint8, or float in [0, 1]), a PIL image "
                   "or a (C, H, W) torch tensor")


def overlay_mask(image: np.ndarray, mask: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """Blend class colours over an image.

    Args:
        image: (H, W, C) original image, uint8 or float32 in [0, 1] (C = 1 or 3).
        mask: (H, W) class indices (0 = background, left unchanged).
        alpha: opacity of the colours.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8:  # float32 [0, 1] of a 16-bit file
        image = np.clip(np.rint(image.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    out = rgb.astype(np.float32).copy()
    for c in np.unique(mask):
        if c == 0:
            continue
        color = np.asarray(PALETTE[(int(c) - 1) % len(PALETTE)], dtype=np.float32)
        sel = mask == c
        out[sel] = (1 - alpha) * out[sel] + alpha * color
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def default_label_map(num_classes: int) -> dict[str, int]:
    """The label map of a model that comes without one: ``{background: 0, foreground: 255}`` for a binary model
    (one output channel), else the class indices ``{background: 0, class_1: 1, ..., class_<C-1>: C - 1}`` (the
    names :func:`mambaseg.data.folder2d.folder_label_map` gives the classes of a multi-class folder run)."""
    from mambaseg.data.folder2d import folder_label_map

    return folder_label_map(num_classes <= 1, list(range(num_classes)))[0]


def declared_classes(model: nn.Module) -> int | None:
    """The number of classes a model says it predicts (``mambaseg_spec["num_classes"]``, else a ``num_classes``
    attribute), or ``None`` when it says nothing (a plain ``nn.Module``)."""
    spec = getattr(model, "mambaseg_spec", None) or {}
    if "num_classes" in spec:
        return int(spec["num_classes"])
    return int(model.num_classes) if hasattr(model, "num_classes") else None


def model_label_map(model: nn.Module, label_map: dict[str, int] | None, num_classes: int | None = None
                    ) -> dict[str, int]:
    """``label_map`` checked against the classes of ``model``, or :func:`default_label_map` when it is empty.

    The number of classes is ``num_classes`` when given (the :class:`Predictor` learns it from one forward pass of
    a model that does not say), else the model's ``mambaseg_spec["num_classes"]`` or ``num_classes`` attribute; a
    model with neither is taken as binary and its label map is not checked.

    Raises:
        ValueError: a label map whose number of entries differs from the model's classes (two for one output
            channel); the message names both numbers.
    """
    if num_classes is None:
        num_classes = declared_classes(model)
    known = num_classes is not None
    num_classes = 1 if num_classes is None else num_classes
    if not label_map:
        return default_label_map(num_classes)
    label_map = dict(label_map)
    expected = 2 if num_classes == 1 else num_classes
    if known and len(label_map) != expected:
        what = "1 output channel (binary: background and foreground)" if num_classes == 1 else f"{num_classes} classes"
        raise ValueError(f"the label map {label_map} has {len(label_map)} entries but the model predicts {what}; "
                         f"give one pixel value per class ({expected} entries, background first), or no label map "
                         f"for the default {default_label_map(num_classes)}")
    return label_map


class Predictor:
    """Applies a trained 2-D segmentation model to images of any size.

    Build it with :func:`mambaseg.load` (or :meth:`from_checkpoint`); the constructor is for models you built
    yourself.

    Args:
        model: network returning logits (B, num_classes, H, W).
        image_size: (H, W) the network runs at.
        normalization: ``mambaseg.data.Normalization`` used in training (or ``None`` for [0, 1] inputs).
        label_map: class name -> pixel value written in mask files (class-index order), one entry per class the
            model predicts (two for a binary model of one output channel); default: ``{background: 0,
            foreground: 255}`` for a binary model, the class indices ``{background: 0, class_1: 1, ...}`` (the
            names a multi-class folder run records) for a model of C > 1 classes. A label map of another size is
            refused (:func:`model_label_map`).
        device: ``auto``/``cpu``/``cuda``/``cuda:N`` or a ``torch.device``.
        threshold: probability threshold of binary models.
        postprocess: post-processing of the predicted labels (:mod:`mambaseg.inference.postprocess`:
            ``"largest_component"``, ``"fill_holes"`` or both, comma-separated or a list; default none), applied to
            each 2-D mask and to each whole volume.
        amp_dtype: optional autocast dtype on CUDA (e.g. ``torch.bfloat16``).
        info: free-form facts about the checkpoint (shown by ``repr``).

    A model that does not say how many classes it predicts (no ``mambaseg_spec`` and no ``num_classes`` attribute,
    e.g. a plain ``nn.Module``) is run once on a zero image of ``image_size`` here, and its output channels are its
    classes: a label map of the wrong size is refused now, not at the first mask written. Every batch's logits are
    checked against that number.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        image_size: Sequence[int],
        normalization: Any = None,
        label_map: dict[str, int] | None = None,
        device: str | torch.device = "auto",
        threshold: float = 0.5,
        amp_dtype: torch.dtype | None = None,
        info: dict[str, Any] | None = None,
        postprocess: str | Sequence[str] | None = None,
    ) -> None:
        from mambaseg.data.transforms import as_size, build_transforms

        self.device = device if isinstance(device, torch.device) else resolve_device(str(device))
        self.model = model.to(self.device).eval()
        self.image_size = as_size(tuple(image_size))
        self.normalization = normalization
        spec = getattr(model, "mambaseg_spec", None) or {}
        self.in_chans = int(spec.get("in_chans", getattr(model, "in_chans", 3)))
        self.amp_dtype = amp_dtype
        # inputs go in at the weights' dtype: a model converted with .half()/.bfloat16() takes that dtype
        self._input_dtype = weight_dtype(model)
        declared = declared_classes(model)
        self.num_classes = declared if declared is not None else self._probe_classes()
        self.label_map = model_label_map(model, label_map, self.num_classes)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self.postprocess = parse_postprocess(postprocess)
        self.info = dict(info or {})
        self._transform = build_transforms(self.image_size, augment=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, *, device: str | torch.device = "auto",
                        threshold: float = 0.5, postprocess: str | Sequence[str] | None = None) -> Predictor:
        """Load a ``.pt`` or ``.safetensors`` checkpoint written by ``mambaseg train``."""
        from mambaseg.data import Normalization
        from mambaseg.checkpoint import CheckpointError, build_model, load_checkpoint

        ckpt = load_checkpoint(checkpoint, map_location="cpu")
        if not ckpt.get("image_size"):
            raise CheckpointError(f"{checkpoint}: no 'image_size' entry; cannot preprocess inputs")
        try:
            model = build_model(ckpt)
        except CheckpointError as e:
            raise CheckpointError(f"{checkpoint}: {e}") from e
        try:
            model_label_map(model, ckpt.get("label_map"))
        except ValueError as e:
            raise CheckpointError(f"{checkpoint}: {e}") from e
        norm = Normalization.from_dict(ckpt["normalization"]) if ckpt.get("normalization") else None
        info = {"checkpoint": str(checkpoint), "model": (ckpt.get("model") or {}).get("name"),
                "epoch": ckpt.get("epoch"), "library_version": ckpt.get("library_version"),
                # the training data's description (layout, config), e.g. for the intensity mapping of volumes
                "training": {"task": ckpt.get("task"), "config": ckpt.get("config")}}
        return cls(model, image_size=ckpt["image_size"], normalization=norm, label_map=ckpt.get("label_map"),
                   device=device, threshold=threshold, info=info, postprocess=postprocess)

    def __repr__(self) -> str:
        ensemble = (f", ensemble={self.info['ensemble']} checkpoints, tta={self.info.get('tta', 'none')!r}"
                    if self.info.get("ensemble") else "")  # load_ensemble records both
        return (f"Predictor(model={self.info.get('model', type(self.model).__name__)!r}, "
                f"image_size={self.image_size}, classes={list(self.label_map)}, device={self.device}{ensemble})")

    # ------------------------------------------------------------------ input handling
    def read(self, image: ImageInput) -> np.ndarray:
        """Any supported input as an (H, W, in_chans) array: uint8 for 8-bit data, float32 in [0, 1] otherwise.

        Paths are read by :func:`mambaseg.data.read_image` (16-bit files: ``value / 65535`` in float32). PIL images
        follow the same pixel rules (:func:`mambaseg.data.files.image_from_pil`, their EXIF orientation applied as on
        read): 16-bit grey (``I;16``) keeps every level as float32, ``F`` images are float arrays. uint8 arrays stay
        uint8; float arrays (and tensors) must hold values in [0, 1] and stay float32 (not rounded to 8 bits).
        Arrays are channels last, (H, W) or (H, W, C); tensors channels first, (C, H, W).

        Raises:
            TypeError: a list or tuple (one image is read here; :meth:`predict_batch` takes several).
            ValueError: a wrong shape or dtype, or a channel count the model does not take (the message names the
                shape got and the layout expected).
        """
        from PIL import ImageOps

        from mambaseg.data import read_image
        from mambaseg.data.files import image_from_pil

        if isinstance(image, (str, Path)):
            p = Path(image)
            if not p.is_file():
                raise FileNotFoundError(f"input image {str(p)!r} does not exist")
            return read_image(p, self.in_chans)
        if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL image: the pixel rules of read_image
            name = getattr(image, "filename", None) or "<PIL image>"
            image = ImageOps.exif_transpose(image)
            if image.mode == "F":
                image = np.asarray(image, dtype=np.float32)
            else:
                return image_from_pil(image, self.in_chans, name)
        if isinstance(image, (list, tuple)):
            raise TypeError(f"one image is {ACCEPTED_INPUTS}; got a {type(image).__name__} of {len(image)} item(s) "
                            "(predict_batch / predict_logits take a list of images)")
        tensor_shape = None
        if isinstance(image, torch.Tensor):
            t = image.detach().cpu()
            tensor_shape = tuple(t.shape)
            if t.dim() != 3:
                raise ValueError(f"a tensor input must be (C, H, W), got shape {tensor_shape}")
            image = t.permute(1, 2, 0).numpy()
        arr = np.asarray(image)
        image_shape = arr.shape
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise ValueError(f"an image array must be (H, W) or (H, W, C), got shape {arr.shape}")
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating):
                n_bad = int(np.count_nonzero(~np.isfinite(arr)))
                if n_bad:
                    raise ValueError(f"the image array holds {n_bad} NaN/inf value(s) of {arr.size}; expected "
                                     "finite values in [0, 1]")
                if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
                    raise ValueError("float image arrays must hold values in [0, 1]; pass uint8 for 0..255 data")
                arr = arr.astype(np.float32)  # kept at full precision, as 16-bit files are read
            else:
                raise ValueError(f"image arrays must be uint8 or float in [0, 1], got dtype {arr.dtype}")
        c = arr.shape[-1]
        if c == 4:
            arr, c = arr[..., :3], 3
        if c != self.in_chans:
            if c == 1 and self.in_chans == 3:
                arr = np.repeat(arr, 3, axis=-1)
            elif c == 3 and self.in_chans == 1:
                luma = arr.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
                arr = (np.clip(np.rint(luma), 0, 255).astype(np.uint8) if arr.dtype == np.uint8 else luma)[..., None]
            elif tensor_shape is not None:
                raise ValueError(f"the model expects {self.in_chans} channel(s), but the tensor of shape "
                                 f"{tensor_shape} has {c} along its first axis: tensors must be (C, H, W) (channels "
                                 "first; an (H, W, C) tensor goes in as tensor.permute(2, 0, 1), or as a numpy array)")
            else:
                raise ValueError(f"the model expects {self.in_chans} channel(s), but the array of shape {image_shape} "
                                 f"has {c} along its last axis: numpy arrays must be (H, W) or (H, W, C) (channels "
                                 "last; a (C, H, W) array goes in as array.transpose(1, 2, 0), or as a torch tensor)")
        return np.ascontiguousarray(arr)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """uint8 or float32 [0, 1] (H, W, C) -> normalised float32 (C, h, w) at the network size (as in evaluation)."""
        dummy = np.zeros(image.shape[:2], dtype=np.uint8)
        img, _ = self._transform(image, dummy, np.random.default_rng(0))
        x = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)  # 16-bit: [0, 1]
        if self.normalization is not None:
            x = self.normalization.apply(x)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def _probe_classes(self) -> int:
        """Output channels of a model that does not name its classes: one forward pass of a zero image."""
        shape = (1, self.in_chans, *self.image_size)
        try:
            with torch.inference_mode(), autocast_for(self.device, self.amp_dtype):
                out = self.model(torch.zeros(shape, device=self.device, dtype=self._input_dtype))
        except Exception as e:
            raise ValueError(f"the model has no num_classes attribute, and running it on a zero image of shape {shape} "
                             f"(B, C, H, W) to count its output channels failed: {type(e).__name__}: {e}; give the "
                             "model num_classes and in_chans attributes (the in_chans default is 3)") from e
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != 1:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the model must return logits (B, num_classes, H, W); on a {shape} input it returned {got}")
        return int(out.shape[1])

    # ------------------------------------------------------------------ prediction
    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast_for(self.device, self.amp_dtype):
            logits = self.model(batch.to(self.device, self._input_dtype)).float()
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)} but the predictor expects "
                             f"(B, {self.num_classes}, H, W): {self.num_classes} class channel(s), from the model's "
                             f"num_classes / mambaseg_spec (label map {self.label_map}); set num_classes to what the "
                             "model returns")
        return logits

    def _labels(self, logits: torch.Tensor) -> torch.Tensor:
        return labels_from_logits(logits, self.threshold)

    def predict_logits(self, images: Sequence[ImageInput]) -> list[torch.Tensor]:
        """Logits (num_classes, H, W) of each image at its original size (bilinear upsampling)."""
        arrays = [self.read(im) for im in images]
        if not arrays:
            return []
        batch = torch.stack([self.preprocess(a) for a in arrays])
        logits = self._logits(batch)
        out = []
        for a, lg in zip(arrays, logits):
            h, w = a.shape[:2]
            out.append(F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)[0].cpu())
        return out

    def predict_batch(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """Masks (H, W) int64 of class indices, one per image, each at its image's original size (post-processed
        when the predictor has steps)."""
        return [self._mask(lg) for lg in self.predict_logits(images)]

    def _mask(self, logits: torch.Tensor) -> np.ndarray:
        """(C, H, W) logits -> the post-processed mask by the one labels rule."""
        return postprocess_labels(self._labels(logits[None])[0].numpy(), self.postprocess)

    def write_mask(self, logits: torch.Tensor, mask_path: str | Path,
                   probabilities_path: str | Path | None = None) -> np.ndarray:
        """Write the mask of one image's (C, H, W) logits as a PNG of label-map values and, with
        ``probabilities_path``, its probabilities as a float16 ``.npz`` (``probabilities``: (1, H, W) foreground
        probability or (C, H, W) softmax); both atomically. Returns the mask (class indices)."""
        from PIL import Image

        from mambaseg.inference.volume import stored_probabilities
        from mambaseg.utils.files import atomic_path, atomic_write_npz

        mask = self._mask(logits)
        with atomic_path(mask_path) as tmp:
            Image.fromarray(self.to_pixel_values(mask)).save(tmp, format="PNG")
        if probabilities_path is not None:
            atomic_write_npz(probabilities_path, probabilities=stored_probabilities(logits))
        return mask

    def predict(self, image: ImageInput) -> np.ndarray:
        """Mask (H, W) int64 of class indices (0/1 for binary) at the input's original size.

        Args:
            image: an image path, an (H, W[, C]) uint8 array, a float array in [0, 1] (used at full precision, as
                float32), a PIL image (16-bit grey ``I;16`` keeps every level, as when its file is read) or a
                (C, H, W) tensor (float in [0, 1] or uint8). See :meth:`read`.
        """
        return self.predict_batch([image])[0]

    def predict_proba(self, image: ImageInput) -> np.ndarray:
        """Probabilities at the original size: (H, W) foreground probability (binary) or (C, H, W) softmax."""
        from mambaseg.inference.volume import probabilities_of

        p = probabilities_of(self.predict_logits([image])[0])
        return p[0] if p.shape[0] == 1 else p

    def to_pixel_values(self, mask: np.ndarray) -> np.ndarray:
        """Class indices -> the label map's pixel values (binary: 0/255), as uint8 (or uint16 if needed)."""
        values = np.asarray(list(self.label_map.values()), dtype=np.int64)
        if mask.size and int(mask.max()) >= len(values):
            raise ValueError(f"mask holds class {int(mask.max())} but the label map has {len(values)} classes")
        out = values[mask]
        return out.astype(np.uint8 if values.max(initial=0) <= 255 else np.uint16)

    def predict_folder(
        self,
        input_path: str | Path,
        out_dir: str | Path,
        *,
        batch_size: int = 4,
        overlays: bool = True,
        progress: Callable[[int, int], None] | None = None,
        overwrite: bool = False,
        save_probabilities: bool = False,
    ) -> list[Path]:
        """Predict every image of a folder (or one image file) and write PNGs.

        Writes ``OUT/masks/<stem>.png`` (pixel values from the label map, e.g. 0/255 for binary, at the image's
        original size) and, with ``overlays``, ``OUT/overlays/<stem>.png`` (colours blended over the image).
        With ``save_probabilities``, ``OUT/probabilities/<stem>.npz`` too: ``probabilities``, float16 (C', H, W) at
        the image's size, the foreground probability (C' = 1) of a binary model, else the softmax (the form of a
        cross-validation's out-of-fold files); the mask is these probabilities by the one labels rule.
        A folder holding an ``images/`` sub-folder (a dataset split) is read from that sub-folder.

        Nothing is lost: images sharing a stem (``a.jpg`` and ``a.png``) get ``<stem>_<ext>.png``; existing
        output files are refused (all of them named) unless ``overwrite``; ``OUT/masks`` may never be the input
        data's own masks folder (its ground truth) nor the input folder. All of this is checked before the first
        file is written.

        Returns:
            Paths of the written mask files.
        """
        from PIL import Image

        from mambaseg.utils.files import atomic_path

        _check_batch_size(batch_size)
        files = list_images(input_path)
        out = Path(out_dir)
        _refuse_input_folders(Path(input_path), files, out / "masks")
        names = output_names(files)
        targets = [out / "masks" / n for n in names] + ([out / "overlays" / n for n in names] if overlays else [])
        prob_files = [out / "probabilities" / Path(n).with_suffix(".npz").name for n in names]
        targets += prob_files if save_probabilities else []
        if not overwrite:
            _refuse_existing(targets)
        _refuse_unreadable(files)
        for sub, wanted in (("masks", True), ("overlays", overlays), ("probabilities", save_probabilities)):
            if wanted:
                (out / sub).mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for i in range(0, len(files), batch_size):
            chunk = files[i : i + batch_size]
            arrays = [self.read(f) for f in chunk]
            logits = self.predict_logits(arrays)
            for name, pf, a, lg in zip(names[i : i + batch_size], prob_files[i : i + batch_size], arrays, logits):
                mp = out / "masks" / name
                m = self.write_mask(lg, mp, pf if save_probabilities else None)
                written.append(mp)
                if overlays:
                    with atomic_path(out / "overlays" / name) as tmp:
                        Image.fromarray(overlay_mask(a, m)).save(tmp, format="PNG")
            if progress is not None:
                progress(len(written), len(files))
        return written

    def predict_path(
        self,
        input_path: str | Path,
        out_dir: str | Path,
        *,
        batch_size: int = 4,
        overlays: bool = True,
        intensity: str = "auto",
        progress: Callable[[int, int], None] | None = None,
        overwrite: bool = False,
        save_probabilities: bool = False,
    ) -> list[Path]:
        """Predict whatever ``input_path`` holds: one image, a folder of images, one volume or a folder of volumes.

        2-D images go through :meth:`predict_folder` (PNG masks and overlays at the original size); 3-D volumes
        (``.nii``/``.nii.gz``/``.h5``/``.npz``/``.npy``) are predicted slice by slice
        (:func:`mambaseg.inference.volume.predict_volume_file`) and written as label volumes with the source
        geometry, to ``OUT/<id>_pred.<ext>`` (or to ``OUT`` itself when it is a volume file name).

        A checkpoint trained on an nnU-Net dataset of several channels reads nnU-Net's raw inputs, one file per
        channel: the files ``<case>_0000``, ``<case>_0001``, ... of a folder are grouped by case
        (:func:`mambaseg.data.files.group_channel_files`; a missing channel file is an error naming the case and the
        channel), stacked in channel order (their geometry must agree) and each case written to
        ``OUT/<case>_pred.<ext>``; one channel file given as the input stands for its case (the other channel files
        are taken from its folder). Inputs that are all nnU-Net channel files (``<case>_<NNNN>``) are refused, before
        anything is written, when some have a channel index the checkpoint does not take (e.g. ``<case>_0001`` for
        a checkpoint of one channel: it is another channel of ``<case>``, not a case of its own).

        Args:
            intensity: 3-D inputs: intensity mapping to [0, 1] (``auto`` = as the training data, channel by channel
                for several channels; ``minmax``, ``ct``, ``none``).
            overwrite: replace existing output files (otherwise they are refused before anything is written).
            save_probabilities: also write the probabilities: ``OUT/probabilities/<stem>.npz`` of each image
                (:meth:`predict_folder`), ``probabilities/<id>.npz`` beside each label volume
                (:func:`mambaseg.inference.volume.predict_volume_file`).

        Returns:
            The written files (masks and label volumes).
        """
        from mambaseg.data.files import group_channel_files
        from mambaseg.inference.volume import (
            is_volume_path,
            predict_volume_file,
            probabilities_path,
            volume_channels,
            volume_output_path,
            volume_scales,
        )

        _check_batch_size(batch_size)
        vols = _volume_inputs(Path(input_path))
        if not vols:
            _refuse_no_inputs(Path(input_path))
            return self.predict_folder(input_path, out_dir, batch_size=batch_size, overlays=overlays,
                                       progress=progress, overwrite=overwrite, save_probabilities=save_probabilities)
        training = self.info.get("training") or {}
        channels = volume_channels(training, self.in_chans)
        _refuse_extra_channels(vols, channels)
        if intensity == "auto":
            intensity = volume_scales(training, channels)
        cases = [[v] for v in vols] if channels == 1 else group_channel_files(_case_files(Path(input_path), vols),
                                                                                channels)
        firsts = [c[0] for c in cases]
        out = Path(out_dir)
        if len(cases) > 1 and is_volume_path(out):
            raise ValueError(f"--out {out} names one volume file, but {len(cases)} volumes are predicted (e.g. "
                             f"{firsts[0].name}, {firsts[1].name}); give a folder for their predictions")
        targets = [volume_output_path(v, out) for v in firsts]
        clashes = _duplicates(zip(targets, firsts))
        if clashes:
            raise ValueError("two inputs would be written to the same output file; rename one of them:\n"
                             + "\n".join(f"  - {t}: from {', '.join(map(str, srcs))}" for t, srcs in clashes))
        if any(t.resolve() == v.resolve() for t, c in zip(targets, cases) for v in c):
            raise ValueError(f"--out {out} would overwrite an input volume; choose another output path")
        if not overwrite:
            _refuse_existing(targets + ([probabilities_path(t) for t in targets] if save_probabilities else []))
        written = []
        for c, target in zip(cases, targets):
            written.append(predict_volume_file(
                self.model, c[0] if channels == 1 else c, target, image_size=self.image_size,
                normalization=self.normalization, batch_size=batch_size, device=self.device,
                label_values=list(self.label_map.values()), scale=intensity, postprocess=self.postprocess,
                save_probabilities=save_probabilities,
            ))
            if progress is not None:
                progress(len(written), len(cases))
        return written


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size (--batch-size) must be a positive integer, got {batch_size!r}")


def output_names(files: Sequence[Path]) -> list[str]:
    """Output file name (``<stem>.png``) of each input image; inputs sharing a stem get ``<stem>_<ext>.png``.

    Raises:
        ValueError: two inputs would still get one name (the message names both files).
    """
    stems: dict[str, int] = {}
    for f in files:
        stems[f.stem] = stems.get(f.stem, 0) + 1
    names = [f"{f.stem}_{f.suffix.lstrip('.').lower()}.png" if stems[f.stem] > 1 else f"{f.stem}.png" for f in files]
    clashes = _duplicates(zip(names, files))
    if clashes:
        raise ValueError("several inputs would be written to the same output file; rename them:\n"
                         + "\n".join(f"  - {n}: from {', '.join(map(str, srcs))}" for n, srcs in clashes))
    return names


def _duplicates(pairs: Any) -> list[tuple[Any, list[Path]]]:
    seen: dict[str, tuple[Any, list[Path]]] = {}
    for target, src in pairs:
        seen.setdefault(str(target).lower(), (target, []))[1].append(src)
    return [(t, srcs) for t, srcs in seen.values() if len(srcs) > 1]


def _refuse_existing(targets: Sequence[Path], limit: int = 10) -> None:
    existing = [t for t in targets if t.exists()]
    if existing:
        listed = "\n".join(f"  - {t}" for t in existing[:limit])
        more = f"\n  ... and {len(existing) - limit} more" if len(existing) > limit else ""
        raise FileExistsError(f"{len(existing)} output file(s) already exist and would be overwritten:\n{listed}{more}\n"
                              "pass --overwrite (overwrite=True) to replace them, or choose another --out")


def _refuse_input_folders(input_path: Path, files: Sequence[Path], mask_out: Path) -> None:
    """Refuse an output ``masks`` folder that is the input folder or the input data's ground-truth folder."""
    from mambaseg.data.files import IMAGE_DIR_NAMES, MASK_DIR_NAMES

    target = mask_out.resolve()
    image_dirs = {f.parent.resolve() for f in files}
    if target in image_dirs:
        raise ValueError(f"--out {mask_out.parent} would write masks into the input folder {target}; choose "
                         "another --out")
    splits = set()
    for d in image_dirs:
        if d.name.lower() in IMAGE_DIR_NAMES:
            splits.add(d.parent)
    if input_path.is_dir():
        splits.add(input_path.resolve())
    for split in splits:
        for name in MASK_DIR_NAMES:
            gt = split / name
            if gt.resolve() == target:
                raise ValueError(f"--out {mask_out.parent} would write predicted masks into {gt}, the ground-truth "
                                 "masks of the input data; choose another --out")


def _refuse_unreadable(files: list[Path]) -> None:
    """Refuse (naming every one) image files whose header no reader recognises, before anything is written: one
    broken file must not stop a folder's prediction half-way. Only headers are read here, so a file whose pixel data
    is cut short is found when it is decoded."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for f in files:
        try:
            with Image.open(f):
                pass
        except (UnidentifiedImageError, OSError, ValueError) as e:
            bad.append(f"  - {f}: {str(e).splitlines()[0] if str(e).strip() else type(e).__name__}")
    if bad:
        raise ValueError(f"{len(bad)} of {len(files)} input file(s) cannot be read as images (nothing was written); "
                         "remove or replace them:\n" + "\n".join(bad[:20])
                         + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""))


def _volume_inputs(path: Path) -> list[Path]:
    """Volume files named by ``path`` (a volume file, or a folder's volume files); ``[]`` for an image or a folder of
    images. Files of other kinds in a folder are left alone, as :func:`list_images` leaves them.

    Raises:
        ValueError: a folder that holds both volumes and images (one kind per call: which one was meant is unknown).
    """
    from mambaseg.inference.volume import is_volume_path

    if path.is_file():
        return [path] if is_volume_path(path) else []
    if path.is_dir():
        entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        vols = [p for p in entries if is_volume_path(p)]
        images = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
        if vols and images:
            raise ValueError(f"input folder {str(path)!r} holds {len(vols)} volume file(s) (e.g. {vols[0].name}) and "
                             f"{len(images)} image file(s) (e.g. {images[0].name}); predict one kind per call: put "
                             "them in separate folders")
        return vols
    return []


def _refuse_extra_channels(vols: Sequence[Path], channels: int, limit: int = 10) -> None:
    """Refuse volume inputs named as nnU-Net channel files (``<case>_<NNNN>``, every one of them) of which some have a
    channel index of ``channels`` or above: those are channels the checkpoint was not trained on (a checkpoint of one
    channel would otherwise predict ``<case>_0001`` as a case of its own). nnU-Net refuses such inputs too.

    Raises:
        DatasetError: naming the files, their cases and the checkpoint's channel count.
    """
    from mambaseg.data.files import DatasetError, channel_file

    found = [channel_file(v) for v in vols]
    if not vols or any(f is None for f in found):
        return
    extra = [(v, f) for v, f in zip(vols, found) if f is not None and f[1] >= channels]
    if not extra:
        return
    cases = sorted({f[0] for _, f in extra})
    listed = "\n".join(f"  - {v} (channel {f[1]} of case {f[0]!r})" for v, f in extra[:limit])
    more = f"\n  ... and {len(extra) - limit} more" if len(extra) > limit else ""
    files = "<case>_0000" if channels == 1 else f"<case>_0000 ... <case>_{channels - 1:04d}"
    takes = f"{channels} channel{'s' if channels > 1 else ''} ({files} files only)"
    raise DatasetError(
        f"{len(extra)} input file(s) of {len(cases)} case(s) ({', '.join(map(repr, cases[:limit]))}"
        f"{', ...' if len(cases) > limit else ''}) are nnU-Net channel files of a channel the checkpoint does not "
        f"take: it was trained on {takes}; nothing was written:\n{listed}{more}\n"
        f"predict with a checkpoint trained on these channels, or give only the {files} files (if the files are "
        "separate cases, rename them: a name ending in _NNNN is read as channel NNNN of a case)")


def _refuse_no_inputs(path: Path) -> None:
    """Refuse, naming every file type ``predict_path`` reads, an input that is neither an image nor a volume file, or
    a folder (or its ``images/`` sub-folder) with neither images nor volumes."""
    from mambaseg.data.files import VOLUME_SUFFIXES

    kinds = f"image files ({', '.join(IMAGE_EXTENSIONS)}) or volume files ({', '.join(VOLUME_SUFFIXES)})"
    if path.is_file() and path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"input {str(path)!r} is neither an image nor a volume file; expected one of the {kinds}")
    if path.is_dir():
        folder = path / "images" if (path / "images").is_dir() else path
        if not any(f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS for f in folder.iterdir()):
            raise ValueError(f"no {kinds} in folder {str(folder)!r}")


def _case_files(path: Path, vols: list[Path]) -> list[Path]:
    """The channel files to group (:func:`mambaseg.data.files.group_channel_files`): ``vols`` of a folder; for one
    file ``<case>_<NNNN>``, every channel file of that case in its folder."""
    from mambaseg.data.files import channel_file, is_volume_path

    case = channel_file(path) if path.is_file() else None
    if case is None:
        return vols
    return [f for f in sorted(path.parent.iterdir())
            if f.is_file() and is_volume_path(f) and (found := channel_file(f)) and found[0] == case[0]]


def list_images(path: str | Path) -> list[Path]:
    """Image files of a folder (sorted; its ``images/`` sub-folder if present) or ``[path]`` for one file.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a file with an unsupported extension, or a folder without images.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {str(p)!r} does not exist")
    if p.is_file():
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"input {str(p)!r} is not an image file; expected one of {', '.join(IMAGE_EXTENSIONS)}")
        return [p]
    if (p / "images").is_dir():
        p = p / "images"
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {str(p)!r}")
    return files


def load(checkpoint: str | Path, *, device: str | torch.device = "auto", threshold: float = 0.5,
         postprocess: str | Sequence[str] | None = None) -> Predictor:
    """Load a checkpoint (``.pt`` or ``.safetensors``) as a :class:`Predictor`.

    Example:
        >>> predictor = load("runs/ph2/checkpoints/best.pt")  # doctest: +SKIP
        >>> mask = predictor.predict("image.jpg")  # doctest: +SKIP
    """
    return Predictor.from_checkpoint(checkpoint, device=device, threshold=threshold, postprocess=postprocess)
