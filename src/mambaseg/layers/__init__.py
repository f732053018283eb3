"""Tier 2: reusable nn.Modules, one concept per file (imports flow ops -> layers -> models)."""

from __future__ import annotations

from mambaseg.layers.biformer_block import BiFormerBlock
from mambaseg.layers.boundary_attention import BoundaryAttentionGate, BoundaryCrossAttention
from mambaseg.layers.boundary_skip_fusion import BoundarySkipFusion
from mambaseg.layers.cbam import CBAM
from mambaseg.layers.cross_scale_mamba import AxialDepthwise, CrossScaleMambaBlock
from mambaseg.layers.drop import DropPath, drop_path
from mambaseg.layers.linear2d import Linear2d
from mambaseg.layers.lkpe import FLKPE, LKPE, pixel_shuffle_pc
from mambaseg.layers.ms_ffn import MSFFN, MultiScaleDWConv
from mambaseg.layers.norm import LayerNorm2d
from mambaseg.layers.patch import FinalPatchExpand2D, PatchEmbed2D, PatchExpand2D, PatchMerging2D
from mambaseg.layers.pcam import PCAM
from mambaseg.layers.routing_attention import BiLevelRoutingAttention
from mambaseg.layers.s3_block import S3Block, S3ChoiceBlock
from mambaseg.layers.scsa import SCSA
from mambaseg.layers.ss2d import SS2D, SSMScanBase, ScanPattern
from mambaseg.layers.ss2d_v2 import SS2Dv2
from mambaseg.layers.ssd_mixer import SSD2D
from mambaseg.layers.sweep_mamba import SweepMamba
from mambaseg.layers.vss_block import VSSBlock, VSSLayer, VSSLayerUp
from mambaseg.layers.vss_block_v2 import Mlp2d, VSSBlockV2
from mambaseg.layers.vssd_block import VSSDBlock

__all__ = [
    "AxialDepthwise",
    "BiFormerBlock",
    "BiLevelRoutingAttention",
    "BoundaryAttentionGate",
    "BoundaryCrossAttention",
    "BoundarySkipFusion",
    "CBAM",
    "CrossScaleMambaBlock",
    "DropPath",
    "FLKPE",
    "FinalPatchExpand2D",
    "LKPE",
    "LayerNorm2d",
    "Linear2d",
    "MSFFN",
    "Mlp2d",
    "MultiScaleDWConv",
    "PCAM",
    "PatchEmbed2D",
    "PatchExpand2D",
    "PatchMerging2D",
    "S3Block",
    "S3ChoiceBlock",
    "SCSA",
    "SS2D",
    "SS2Dv2",
    "SSD2D",
    "SSMScanBase",
    "ScanPattern",
    "SweepMamba",
    "VSSBlock",
    "VSSBlockV2",
    "VSSDBlock",
    "VSSLayer",
    "VSSLayerUp",
    "drop_path",
    "pixel_shuffle_pc",
]
