"""Inference: 2-D prediction from checkpoints (:class:`Predictor`, :func:`load`) and slice-wise volume prediction.

Example:
    >>> import mambaseg
    >>> predictor = mambaseg.load("runs/ph2/checkpoints/best.pt")  # doctest: +SKIP
    >>> mask = predictor.predict("image.jpg")  # doctest: +SKIP
"""

from __future__ import annotations

from mambaseg.inference.ensemble import TTA_MODES, ProbabilityEnsemble, Renormalize, expand_checkpoints, load_ensemble
from mambaseg.inference.predictor import IMAGE_EXTENSIONS, Predictor, list_images, load, overlay_mask
from mambaseg.inference.volume import predict_volume, predict_volume_file, read_volume, write_prediction

__all__ = [
    "IMAGE_EXTENSIONS",
    "TTA_MODES",
    "ProbabilityEnsemble",
    "Renormalize",
    "expand_checkpoints",
    "load_ensemble",
    "Predictor",
    "list_images",
    "load",
    "overlay_mask",
    "predict_volume",
    "predict_volume_file",
    "read_volume",
    "write_prediction",
]
