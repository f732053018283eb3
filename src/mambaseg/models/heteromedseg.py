"""HeteroMedSeg ("Bidirectional Mamba and routing-attention synergistic network", Bin et al.): VSSD encoder,
bi-level-routing-attention decoder, SCSA on the skip concatenations.

Layout (following the released code):

* Encoder: conv stem (3x3/2 3->48, BN, GELU, 3x3/2 48->96, BN), 3 stages of 2 VSSD blocks (96@H/4, 192@H/8, 384@H/16;
  heads 3/6/12, MLP ratio 3, SSD d_state 64, head width 64) with conv3x3/2 + BN downsampling, then conv3x3/2 + BN to
  768@H/32. The released model builds a 4th VSSD stage (768) but never runs it: by default it is not built
  (23.43 M parameters at 9 classes); ``bottleneck=True`` runs it on the H/32 map as the paper figure shows.
* Decoder: patch expand 768 -> 384@H/16; for each of 3 steps: concat(decoder, skip) -> SCSA(2C) -> linear 2C -> C ->
  BiFormer blocks (depths 8/2/2, topk 8/4/2, heads C/32, MLP ratio 3) -> patch expand (not after the last step);
  LayerNorm -> x4 patch expand (linear C -> 16C, pixel shuffle, LayerNorm) -> 1x1 conv (no bias).
* Routing regions: ``n_win`` per side at every decoder step; default ``None`` = input size / 32 (7 at 224, 8 at 256),
  derived per call, so region sizes are 2, 4, 8 pixels at H/16, H/8, H/4.
* The SSD mixer is switchable: ``mixer="noncausal"`` (VSSD's NC-SSD, default, what the paper claims),
  ``"bidirectional"`` (forward + backward scans) or ``"causal"`` (single-direction Mamba-2 scan, what the released code
  runs).
* 1-channel inputs are repeated to 3. Returns logits (B, num_classes, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from mambaseg.layers.biformer_block import BiFormerBlock
from mambaseg.layers.patch import PatchExpand2D
from mambaseg.layers.scsa import SCSA
from mambaseg.layers.vssd_block import VSSDBlock
from mambaseg.models._registry import register_model
from mambaseg.models.base import SegmentationModel, stage_drop_rates
from mambaseg.models.vmunet import init_vmamba_weights

__all__ = ["HeteroMedSeg"]


class _FinalExpandX4(nn.Module):
    """Linear C -> 16C (no bias), 4x4 pixel shuffle (channel order p1, p2, c) keeping C channels, LayerNorm(C)."""

    def __init__(self, dim: int, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        s = self.scale
        x = self.expand(x)
        c = x.shape[-1] // (s * s)
        x = x.view(b, h, w, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, c)
        return self.norm(x)


class _DecoderStage(nn.Module):
    """SCSA on the concatenation -> linear 2C -> C -> BiFormer blocks -> optional patch expand (C -> C/2, x2)."""

    def __init__(self, dim: int, depth: int, num_heads: int, topk: int, scsa_heads: int, mlp_ratio: float,
                 drop_path_rate: float, upsample: bool, faithful_block: bool) -> None:
        super().__init__()
        self.scsa = SCSA(2 * dim, scsa_heads)
        self.concat_back_dim = nn.Linear(2 * dim, dim)
        dpr = stage_drop_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.ModuleList(
            BiFormerBlock(dim, num_heads=num_heads, topk=topk, mlp_ratio=mlp_ratio, drop_path=dpr[i],
                          faithful=faithful_block)
            for i in range(depth)
        )
        self.upsample = PatchExpand2D(dim // 2) if upsample else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor, n_win: tuple[int, int]) -> torch.Tensor:
        """x, skip: (B, H, W, C) -> (B, 2H, 2W, C/2) (or (B, H, W, C) without upsampling)."""
        t = torch.cat([x, skip], dim=-1).permute(0, 3, 1, 2)
        t = self.scsa(t).permute(0, 2, 3, 1)
        t = self.concat_back_dim(t)
        for blk in self.blocks:
            t = blk(t, n_win=n_win)
        return self.upsample(t) if self.upsample is not None else t


class HeteroMedSeg(SegmentationModel):
    """HeteroMedSeg.

    Args:
        num_classes: output channels (logits).
        in_chans: input channels; 1 is repeated to 3 (as the released code), otherwise the stem takes them directly.
        embed_dim: widths of the 4 levels.
        depths: VSSD blocks of encoder stages 0-2 (and of the optional bottleneck stage, ``depths[3]``).
        decoder_depths: BiFormer blocks of the 3 decoder steps (deep to shallow).
        topks: routed regions of the decoder steps (deep to shallow).
        head_dim: channels per attention head (heads = width / head_dim).
        scsa_heads: SCSA heads of the decoder steps (deep to shallow).
        mlp_ratio: MLP width ratio of VSSD and BiFormer blocks.
        drop_path_rate: encoder stochastic depth linspace(0, rate) over all (4-stage) encoder blocks; decoder stages
            linspace(0, rate) over their own blocks.
        n_win: routing regions per side (int); None = input size / 32 per call (7 at 224, 8 at 256).
        mixer: SSD mode of the VSSD blocks: "noncausal" | "bidirectional" | "causal".
        bottleneck: build and run the 4th VSSD stage on the H/32 map (not in the released graph).
        d_state: SSD state size.
        chunk_size: chunk length of causal/bidirectional SSD scans.
        faithful_block: BiFormer blocks without the outer residual, as released (see :class:`BiFormerBlock`).
    """

    def __init__(self, num_classes: int = 9, in_chans: int = 3, embed_dim: Sequence[int] = (96, 192, 384, 768),
                 depths: Sequence[int] = (2, 2, 2, 2), decoder_depths: Sequence[int] = (8, 2, 2),
                 topks: Sequence[int] = (8, 4, 2), head_dim: int = 32, scsa_heads: Sequence[int] = (16, 12, 8),
                 mlp_ratio: float = 3.0, drop_path_rate: float = 0.2, n_win: int | None = None,
                 mixer: str = "noncausal", bottleneck: bool = False, d_state: int = 64, chunk_size: int = 64,
                 faithful_block: bool = True) -> None:
        super().__init__()
        if len(embed_dim) != 4 or len(depths) != 4:
            raise ValueError(f"embed_dim and depths need 4 entries, got {tuple(embed_dim)} and {tuple(depths)}")
        if not (len(decoder_depths) == len(topks) == len(scsa_heads) == 3):
            raise ValueError("decoder_depths, topks and scsa_heads need 3 entries (deep to shallow)")
        if n_win is not None and n_win < 1:
            raise ValueError(f"n_win must be a positive int or None, got {n_win}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.n_win = n_win
        self.mixer = mixer
        self.bottleneck = bottleneck
        # H/32 must be whole (encoder) and H/16 divisible by n_win (the deepest routing step): lcm(32, 16 n_win);
        # 16 * n_win alone let 112 through for n_win 7, which then failed deep in the decoder
        self.stride = 32 if n_win is None else math.lcm(32, 16 * n_win)
        dims = list(embed_dim)
        c_in = 3 if in_chans == 1 else in_chans

        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(c_in, dims[0] // 2, 3, stride=2, padding=1), nn.BatchNorm2d(dims[0] // 2), nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1), nn.BatchNorm2d(dims[0]),
        )])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                nn.Conv2d(dims[i], dims[i + 1], 3, stride=2, padding=1), nn.BatchNorm2d(dims[i + 1])
            ))
        dpr = stage_drop_rates(drop_path_rate, depths)  # over all 4 stages, also when the bottleneck is not built
        n_stages = 4 if bottleneck else 3
        self.stages = nn.ModuleList()
        for i in range(n_stages):
            self.stages.append(nn.Sequential(*[
                VSSDBlock(dims[i], num_heads=dims[i] // head_dim, mlp_ratio=mlp_ratio, drop_path=dpr[i][j],
                          mode=mixer, d_state=d_state, chunk_size=chunk_size)
                for j in range(depths[i])
            ]))

        self.expand_bottleneck = PatchExpand2D(dims[2])  # 768@H/32 -> 384@H/16
        self.decoder = nn.ModuleList(
            _DecoderStage(dims[2 - k], decoder_depths[k], dims[2 - k] // head_dim, topks[k], scsa_heads[k], mlp_ratio,
                          drop_path_rate, upsample=k < 2, faithful_block=faithful_block)
            for k in range(3)
        )
        self.norm_up = nn.LayerNorm(dims[0])
        self.up4 = _FinalExpandX4(dims[0])
        self.output = nn.Conv2d(dims[0], num_classes, 1, bias=False)
        self.apply(init_vmamba_weights)

    def region_grid(self, h: int, w: int) -> tuple[int, int]:
        """Routing regions per side for an input of h x w pixels."""
        if self.n_win is not None:
            return self.n_win, self.n_win
        return h // 32, w // 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.in_chans == 1:
            x = x.repeat(1, 3, 1, 1)
        n_win = self.region_grid(x.shape[-2], x.shape[-1])
        skips = []
        for i in range(3):
            x = self.downsample_layers[i](x)
            x = self.stages[i](x.permute(0, 2, 3, 1))  # (B, H, W, C)
            skips.append(x)
            x = x.permute(0, 3, 1, 2)
        x = self.downsample_layers[3](x).permute(0, 2, 3, 1)  # 768 @ H/32
        if self.bottleneck:
            x = self.stages[3](x)
        x = self.expand_bottleneck(x)
        for k, stage in enumerate(self.decoder):
            x = stage(x, skips[2 - k], n_win)
        x = self.up4(self.norm_up(x))
        return self.output(x.permute(0, 3, 1, 2))


@register_model(paper="HeteroMedSeg / Synergistic-Network (Bin et al., PeerJ CS 2025)", params=23_437_566)
def heteromedseg(num_classes: int = 1, in_chans: int = 3, img_size: int | None = None, **kwargs: Any) -> HeteroMedSeg:
    """HeteroMedSeg (VSSD + BRA decoder + SCSA); 23.43 M parameters at 9 classes. ``img_size`` fixes ``n_win``."""
    if img_size is not None and kwargs.get("n_win") is None:
        size = img_size if isinstance(img_size, int) else int(img_size[0])
        if size % 32:
            raise ValueError(f"img_size must be a multiple of 32 for heteromedseg, got {img_size}")
        kwargs["n_win"] = size // 32
    return HeteroMedSeg(num_classes=num_classes, in_chans=in_chans, **kwargs)
