"""mambaseg: Mamba (state-space) medical image segmentation models under one roof.

Example:
    >>> import mambaseg
    >>> model = mambaseg.create_model("vmunet_tiny", num_classes=1)
    >>> predictor = mambaseg.load("runs/demo/checkpoints/best.pt")  # doctest: +SKIP
    >>> mask = predictor.predict("image.png")  # doctest: +SKIP

``import mambaseg`` is light: the models (and PyTorch) are imported on first use of ``create_model``,
``list_models``, ``model_info`` or ``load``.

CPU threads: the library never changes PyTorch's thread settings or the environment. On a busy CPU machine call
``torch.set_num_threads(mambaseg.runtime.cpu_threads())`` (the cores idle right now, what the command
line's ``--threads auto`` applies) or simply ``torch.set_num_threads(1)`` before training or evaluating: the
selective scan runs thousands of tiny operations per step, and with several threads each one waits at a barrier for
a core another program holds (see README, "CPU: threads and memory").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mambaseg.version import __version__

if TYPE_CHECKING:
    from mambaseg.inference.predictor import Predictor
    from mambaseg.models import create_model, list_models, model_info

__all__ = ["__version__", "create_model", "list_models", "load", "model_info"]

_FROM_MODELS = ("create_model", "list_models", "model_info")


def __getattr__(name: str) -> Any:
    if name in _FROM_MODELS:
        from mambaseg import models

        return getattr(models, name)
    raise AttributeError(f"module 'mambaseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_FROM_MODELS))


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
