"""Converter for DermoMamba trained with the official code (github.com/hnkhai25/DermoMamba @ 6587eae).

The official network names its parts ``pw_in``, ``e1``..``e5`` (encoder blocks), ``s1``..``s5`` (CBAM on the
skips), ``b1`` (Sweep Mamba), ``b2`` (PCAM), ``d5``..``d1`` (decoder blocks, deepest first) and ``conv_out``. Inside
a CSMB the three axial units are ``dw1``..``dw3`` and the shared VSS block ``vss``; CBAM keeps its MLP as
``ChannelGate.mlp.{1,3}`` (``nn.Linear``, index 0 is a flatten) and the spatial conv + BatchNorm as
``SpatialGate.spatial.{conv,bn}``. Training runs through a PyTorch Lightning module (``config/segmentor.py``) whose
network attribute is ``model``, so a Lightning checkpoint holds ``{"state_dict": {"model.pw_in.weight": ...}}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from mambaseg.models._convert import Converted, register_converter
from mambaseg.models._convert.msvmunet import _strip_prefix, unwrap_state_dict

__all__ = ["convert_dermomamba_official"]

_SOURCE = "github.com/hnkhai25/DermoMamba @ 6587eae (trained with its config/train.py)"


def _key(k: str) -> str | None:
    """Official key -> our key (None: not a network tensor)."""
    m = re.match(r"^e([1-5])\.(.*)$", k)
    if m:
        i, rest = int(m.group(1)) - 1, m.group(2)
        rest = re.sub(r"^resmamba\.block\.dw([1-3])\.", lambda g: f"resmamba.block.dw.{int(g.group(1)) - 1}.", rest)
        rest = re.sub(r"^resmamba\.block\.vss\.", "resmamba.block.vss.0.", rest)
        return f"encoder.{i}.{rest}"
    m = re.match(r"^s([1-5])\.(.*)$", k)
    if m:
        i, rest = int(m.group(1)) - 1, m.group(2)
        mm = re.match(r"^ChannelGate\.mlp\.([13])\.(weight|bias)$", rest)
        if mm:
            idx = {"1": 0, "3": 2}[mm.group(1)]
            return f"skips.{i}.mlp.{idx}.{mm.group(2)}"
        if rest.startswith("SpatialGate.spatial.conv."):
            return f"skips.{i}.conv." + rest[len("SpatialGate.spatial.conv."):]
        if rest.startswith("SpatialGate.spatial.bn."):
            return f"skips.{i}.spatial_norm." + rest[len("SpatialGate.spatial.bn."):]
        return None
    m = re.match(r"^d([1-5])\.(.*)$", k)
    if m:
        return f"decoder.{5 - int(m.group(1))}.{m.group(2)}"
    if k.startswith("b1."):
        return "sweep." + k[3:]
    if k.startswith("b2."):
        return "pcam." + k[3:]
    if k.startswith(("pw_in.", "conv_out.")):
        return k
    return None


@register_converter(
    "dermomamba_official",
    description="DermoMamba trained with the official code (Lightning .ckpt or its state_dict) -> dermomamba",
    source=_SOURCE,
)
def convert_dermomamba_official(state_dict: Mapping[str, torch.Tensor], **options: Any) -> Converted:
    """Official DermoMamba weights -> ``dermomamba`` (192 x 256 input, as the released Sweep Mamba is built for).

    The CBAM MLP ``nn.Linear`` weights (C', C) keep their shape: our MLP is two 1x1 convs (C', C, 1, 1), and the
    loader reshapes them (same elements) and lists them as reshaped in its report. The one
    shared CSMB VSS block maps to ``vss.0`` (``share_vss=True``). ``num_classes`` and ``in_chans`` are read from
    ``conv_out`` / ``pw_in``.
    """
    if options:
        raise TypeError(f"dermomamba_official: unknown options {sorted(options)}; it takes none (the size is fixed "
                        "by the released bottleneck: 192 x 256)")
    sd, pre = _strip_prefix(unwrap_state_dict(state_dict, what="DermoMamba checkpoint"), ("model.", "module."))
    for need in ("pw_in.weight", "conv_out.weight", "b1.mamba2.in_proj.weight", "b1.mamba3.in_proj.weight"):
        if need not in sd:
            raise ValueError(f"DermoMamba checkpoint: no {need!r}; expected the state_dict of the official DermoMamba "
                             "(keys pw_in, e1..e5, s1..s5, b1, b2, d1..d5, conv_out; optionally prefixed 'model.')")
    if "e1.resmamba.block.vss.ln_1.weight" not in sd:
        raise ValueError("DermoMamba checkpoint: no 'e1.resmamba.block.vss.ln_1.weight'; the released CSMB shares one "
                         "VSS block ('vss') across its three branches")
    # the bottleneck SS2D widths are the bottleneck height and width (H/32, W/32)
    h = int(sd["b1.mamba2.in_proj.weight"].shape[1]) * 32
    w = int(sd["b1.mamba3.in_proj.weight"].shape[1]) * 32
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in sd.items():
        nk = _key(k)
        if nk is None:
            dropped.append(pre + k)
        else:
            out[nk] = v
    kwargs = {"num_classes": int(sd["conv_out.weight"].shape[0]), "in_chans": int(sd["pw_in.weight"].shape[1]),
              "img_size": (h, w)}
    notes = [f"input size {h} x {w} (from the Sweep Mamba widths)", "d5..d1 -> decoder.0..4; s1..s5 -> skips.0..4; "
             "b1 -> sweep, b2 -> pcam; CSMB dw1..dw3 -> dw.0..2, vss -> vss.0"]
    notes.append("CBAM MLP weights are nn.Linear (C', C) in the source and 1x1 convs (C', C, 1, 1) here")
    return Converted("dermomamba", kwargs, out, notes=notes, dropped=dropped)
