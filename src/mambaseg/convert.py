"""Official checkpoints (ImageNet encoders, the papers' trained networks) -> a self-describing mambaseg checkpoint.

The converters live with the models (:mod:`mambaseg.models._convert`); this module writes their result in the
checkpoint format (:mod:`mambaseg.checkpoint`). ``mambaseg convert`` is its command line.
"""

from __future__ import annotations

import os
from typing import Any

from mambaseg.checkpoint import save_checkpoint

__all__ = ["convert_checkpoint"]


def convert_checkpoint(
    src: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str],
    partial: bool = False,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    stem: str = "auto",
    key: str | None = None,
    **opts: Any,
) -> Any:
    """Convert an official weights file into a self-describing mambaseg checkpoint.

    Args:
        src: the official file (``.pth`` / ``.pt`` / ``.ckpt`` / ``.safetensors``).
        fmt: converter name, e.g. ``"vmamba_v0_small"``, ``"vmunet"`` (``mambaseg convert --list``).
        out: the checkpoint to write (``.pt``; loadable by ``create_model(..., pretrained=out)``,
            ``mambaseg.init_from`` / ``mambaseg train --init-from``).
        partial: accept the gaps the converter documents (e.g. the decoder of an ImageNet encoder); without it any
            missing key is an error.
        num_classes, in_chans: build for another task (classifier re-initialised / stem adapted, both reported).
        stem: stem adaptation when ``in_chans`` differs: ``auto`` (sum for 1 channel), ``sum``, ``mean``, ``repeat``.
        key: the file's container entry holding the weights (e.g. ``"model_ema"``).
        **opts: converter options (``target=``, ``variant=``, ``arch=``, ...).

    Returns:
        The :class:`mambaseg.models.LoadReport` (``print(report)`` shows loaded / missing / unexpected / reshaped keys).

    Example:
        >>> report = mambaseg.convert_checkpoint("vmamba_small_e238_ema.pth", "vmamba_v0_small",
        ...                                      "vmunet_vmamba_s.pt", partial=True)  # doctest: +SKIP
    """
    from mambaseg.models._pretrained import convert_weights

    model, report = convert_weights(src, fmt, partial=partial, num_classes=num_classes, in_chans=in_chans, stem=stem,
                                    key=key, **opts)
    payload = {
        "model": model.mambaseg_spec,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "normalization": None,
        "label_map": None,
        "image_size": None,
        "pretrained": {
            "source": str(src),
            "format": fmt,
            "expected_missing": report.expected_missing,
            "reinitialized": report.reinitialized,
            "notes": report.notes,
        },
    }
    save_checkpoint(out, payload)
    return report
