"""Official checkpoints (ImageNet encoders, the papers' trained networks) -> a self-describing mambaseg checkpoint.

The converters live with the models (:mod:`mambaseg.models._convert`); this module builds the model a converted file
fills (:func:`convert_weights`) and writes the result in the checkpoint format (:func:`convert_checkpoint`,
:mod:`mambaseg.checkpoint`). ``mambaseg convert`` is its command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from mambaseg.checkpoint import save_checkpoint
from mambaseg.models._pretrained import LoadReport, WeightsFile, load_weights, read_weights, run_converter
from mambaseg.models._registry import create_model
from mambaseg.utils.files import check_output_file

__all__ = ["convert_weights", "convert_checkpoint"]


def convert_weights(
    src: str | os.PathLike[str] | WeightsFile,
    fmt: str,
    *,
    partial: bool = False,
    num_classes: int | None = None,
    in_chans: int | None = None,
    stem: str = "auto",
    key: str | None = None,
    **options: Any,
) -> tuple[nn.Module, LoadReport]:
    """Convert an official weights file with the converter ``fmt`` and load it into a freshly built model.

    Args:
        src: the weights file (or an already read :class:`WeightsFile`).
        fmt: a converter name (``mambaseg.models._convert.list_converters()``).
        partial: accept the converter's documented gaps (e.g. the decoder of an ImageNet encoder).
        num_classes, in_chans: build the model for another task; the classifier is re-initialised / the stem adapted.
        stem: stem adaptation mode when ``in_chans`` differs.
        key: container entry of the file holding the tensors (e.g. ``"model_ema"``).
        **options: converter options (``target=``, ``arch=``, ``variant=``, ...).

    Returns:
        (model in eval mode, report). Raises :class:`~mambaseg.models.PretrainedError` when the weights do not fit.
    """
    wf = src if isinstance(src, WeightsFile) else read_weights(src, key=key)
    conv = run_converter(wf, fmt, **options)
    kwargs = dict(conv.model_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    if in_chans is not None:
        kwargs["in_chans"] = int(in_chans)
    model = create_model(conv.model_name, **kwargs)
    notes = list(conv.notes)
    if wf.container:
        notes.insert(0, f"tensors read from the file's {wf.container!r} entry")
    if wf.placeholders:
        notes.insert(0, f"non-tensor objects in the file were not executed: {', '.join(wf.placeholders)}")
    report = load_weights(model, conv.state_dict, strict=True, partial=partial, expected_missing=conv.expected_missing,
                          stem=stem, source=str(wf.path), fmt=fmt, notes=notes, dropped=conv.dropped)
    return model.eval(), report


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
    overwrite: bool = False,
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
        overwrite: replace an existing ``out`` (refused otherwise, ``FileExistsError``). ``out`` may never be
            ``src`` itself (``ValueError``). The checkpoint is written atomically.
        **opts: converter options (``target=``, ``variant=``, ``arch=``, ...).

    Returns:
        The :class:`mambaseg.models.LoadReport` (``print(report)`` shows loaded / missing / unexpected / reshaped keys).

    Example:
        >>> report = mambaseg.convert_checkpoint("vmamba_small_e238_ema.pth", "vmamba_v0_small",
        ...                                      "vmunet_vmamba_s.pt", partial=True)  # doctest: +SKIP
    """
    check_output_file(Path(out), overwrite=overwrite, kind="a checkpoint file", example="converted.pt",
                      source=Path(src))
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
