"""mambaseg: Mamba (state-space) medical image segmentation models under one roof.

Example:
    >>> import mambaseg
    >>> model = mambaseg.create_model("vmunet_tiny", num_classes=1)
    >>> predictor = mambaseg.load("runs/demo/checkpoints/best.pt")  # doctest: +SKIP
    >>> mask = predictor.predict("image.png")  # doctest: +SKIP

``import mambaseg`` is light: the models (and PyTorch) are imported on first use of ``create_model``,
``list_models``, ``model_info``, ``load`` or the pretrained-weights functions.

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
    from mambaseg.models import (
        LoadReport,
        create_model,
        from_pretrained,
        init_from,
        list_models,
        load_pretrained,
        model_info,
        save_pretrained,
    )

__all__ = [
    "LoadReport",
    "__version__",
    "convert_checkpoint",
    "create_model",
    "from_pretrained",
    "init_from",
    "list_models",
    "load",
    "load_pretrained",
    "model_info",
    "save_pretrained",
]


def convert_checkpoint(src: Any, fmt: str, out: Any, partial: bool = False, **opts: Any) -> LoadReport:
    """Convert an official checkpoint (``fmt``: ``mambaseg convert --list``) into a mambaseg checkpoint at ``out``.

    ``partial=True`` accepts the gaps the format documents (e.g. the decoder of an ImageNet encoder). Options:
    ``num_classes``, ``in_chans``, ``stem``, ``key`` and the converter's own (``target``, ``variant``, ``arch``, ...).
    Returns the :class:`LoadReport`. See :func:`mambaseg.convert.convert_checkpoint`.
    """
    from mambaseg.convert import convert_checkpoint as _convert

    return _convert(src, fmt, out, partial, **opts)


_FROM_MODELS = ("LoadReport", "create_model", "from_pretrained", "init_from", "list_models", "load_pretrained",
                "model_info", "save_pretrained")


def __getattr__(name: str) -> Any:
    if name in _FROM_MODELS:
        from mambaseg import models

        return getattr(models, name)
    raise AttributeError(f"module 'mambaseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_FROM_MODELS))


def load(checkpoint: Any, *, device: Any = "auto", threshold: float = 0.5, postprocess: Any = None) -> Predictor:
    """Load a checkpoint written by ``mambaseg train`` (``.pt`` or ``.safetensors``) as a 2-D predictor.

    Args:
        checkpoint: path of ``best.pt``, ``last.pt`` or ``best.safetensors``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        threshold: probability threshold of binary models.
        postprocess: ``"largest_component"``, ``"fill_holes"`` or both (:mod:`mambaseg.inference.postprocess`).

    Returns:
        :class:`mambaseg.inference.Predictor`; ``predictor.predict(image_or_path)`` returns a mask at the input's
        original size.
    """
    from mambaseg.inference.predictor import load as _load

    return _load(checkpoint, device=device, threshold=threshold, postprocess=postprocess)
