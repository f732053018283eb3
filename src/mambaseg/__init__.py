"""mambaseg: Mamba (state-space) medical image segmentation models under one roof.

Example:
    >>> import mambaseg
    >>> model = mambaseg.create_model("vmunet_tiny", num_classes=1)
    >>> predictor = mambaseg.load("runs/demo/checkpoints/best.pt")  # doctest: +SKIP
    >>> mask = predictor.predict("image.png")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mambaseg.models import create_model, list_models, model_info
from mambaseg.version import __version__

if TYPE_CHECKING:
    from mambaseg.inference.predictor import Predictor

__all__ = ["__version__", "create_model", "list_models", "load", "model_info"]


def load(checkpoint: Any, *, device: Any = "auto", threshold: float = 0.5) -> Predictor:
    """Load a checkpoint written by ``mambaseg train`` (``.pt`` or ``.safetensors``) as a 2-D predictor.

    Args:
        checkpoint: path of ``best.pt``, ``last.pt`` or ``best.safetensors``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        threshold: probability threshold of binary models.

    Returns:
        :class:`mambaseg.inference.Predictor`; ``predictor.predict(image_or_path)`` returns a mask at the input's
        original size.
    """
    from mambaseg.inference.predictor import load as _load

    return _load(checkpoint, device=device, threshold=threshold)
