"""Tier 2: reusable nn.Modules, one concept per file."""

from __future__ import annotations

from mambaseg.layers.drop import DropPath, drop_path
from mambaseg.layers.norm import LayerNorm2d
from mambaseg.layers.patch import FinalPatchExpand2D, PatchEmbed2D, PatchExpand2D, PatchMerging2D
from mambaseg.layers.ss2d import SS2D, ScanPattern
from mambaseg.layers.vss_block import VSSBlock, VSSLayer, VSSLayerUp

__all__ = [
    "SS2D",
    "DropPath",
    "FinalPatchExpand2D",
    "LayerNorm2d",
    "PatchEmbed2D",
    "PatchExpand2D",
    "PatchMerging2D",
    "ScanPattern",
    "VSSBlock",
    "VSSLayer",
    "VSSLayerUp",
    "drop_path",
]
