"""DermoMamba: a cross-scale Mamba-based model with guide fusion loss for skin lesion segmentation.

Hoang et al., Pattern Analysis and Applications 28:128 (2025); code github.com/hnkhai25/DermoMamba.
Layout (widths for the default ``channels=(16, 32, 64, 128, 256, 512)``):

* stem: 1x1 conv in_chans -> 16;
* 5 encoder blocks (16->32, 32->64, ..., 256->512), each: ResMamba block at the input width
  (``y = CSMB(x)``; ``out = LeakyReLU(InstanceNorm(Conv3x3(y))) + s * y``), then Conv3x3 -> BN -> ReLU to the output
  width (= the skip, at the block's input resolution), then 2x2 max-pool;
* skips refined by CBAM (MLP with bias, BatchNorm after the spatial conv);
* bottleneck at H/32 x W/32: ``x <- SweepMamba(PCAM(x) + x)``;
* 5 decoder blocks: nearest 2x upsample, concat with the skip, 1x1 conv 2c -> c, 3x3 conv c -> c_out, GELU, BN;
* 1x1 conv 16 -> num_classes: logits.

Input size: the Sweep Mamba bottleneck uses the bottleneck height and width as SS2D widths, so the model is built for
one ``img_size=(H, W)`` (default (192, 256), as the released code, which hard-coded the widths 6 and 8). Any H and W
divisible by 32 can be chosen at construction; a different input size raises a ``ValueError`` naming the expected
size. 4,953,425 parameters at the defaults.

From the CLI the training size is the model's size: ``mambaseg train --model dermomamba --image-size 192,256 ...``
(``H,W``; a single number ``S`` means S x S, e.g. ``--image-size 64`` builds the model for 64 x 64). The trainer passes
``img_size=(H, W)`` to :func:`mambaseg.create_model`, and the checkpoint records it, so evaluation and prediction
resize inputs to the same size.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.layers.cbam import CBAM
from mambaseg.layers.cross_scale_mamba import CrossScaleMambaBlock
from mambaseg.layers.pcam import PCAM
from mambaseg.layers.sweep_mamba import SweepMamba
from mambaseg.models._registry import register_model
from mambaseg.models.base import SegmentationModel, nearest_valid_size

__all__ = ["DecoderBlock", "DermoMamba", "EncoderBlock", "ResMambaBlock"]


class ResMambaBlock(nn.Module):
    """``y = CSMB(x)``; ``LeakyReLU_0.01(InstanceNorm(Conv3x3(y))) + s * y`` with a learnable scalar ``s`` (init 1).

    Shapes:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, share_vss: bool = True, d_state: int = 16) -> None:
        super().__init__()
        self.block = CrossScaleMambaBlock(channels, share_vss=share_vss, d_state=d_state)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.ins_norm = nn.InstanceNorm2d(channels, affine=True)
        self.act = nn.LeakyReLU(0.01)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return self.act(self.ins_norm(self.conv(y))) + y * self.scale


class EncoderBlock(nn.Module):
    """ResMamba block, Conv3x3 -> BN -> ReLU (the skip), 2x2 max-pool.

    Shapes:
        (B, C_in, H, W) -> (pooled (B, C_out, H/2, W/2), skip (B, C_out, H, W)).
    """

    def __init__(self, in_ch: int, out_ch: int, share_vss: bool = True, d_state: int = 16) -> None:
        super().__init__()
        self.resmamba = ResMambaBlock(in_ch, share_vss=share_vss, d_state=d_state)
        self.pw = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.act(self.bn(self.pw(self.resmamba(x))))
        return F.max_pool2d(skip, 2), skip


class DecoderBlock(nn.Module):
    """Nearest 2x upsample, concat skip, 1x1 conv 2c -> c, 3x3 conv c -> c_out, GELU, BN (activation before BN).

    Shapes:
        ``forward(x (B, c, h, w), skip (B, c, 2h, 2w))`` -> (B, c_out, 2h, 2w).
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.pw = nn.Conv2d(2 * in_ch, in_ch, 1)
        self.pw2 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.pw(torch.cat([x, skip], dim=1))
        return self.bn(self.act(self.pw2(x)))


def _parse_size(img_size: int | Sequence[int] | None) -> tuple[int, int]:
    if img_size is None:
        return 192, 256
    if isinstance(img_size, int):
        return img_size, img_size
    size = tuple(int(s) for s in img_size)
    if len(size) != 2:
        raise ValueError(f"DermoMamba: img_size must be an int or (H, W), got {img_size!r}")
    return size  # type: ignore[return-value]


class DermoMamba(SegmentationModel):
    """DermoMamba (logits out), built for one input size.

    Args:
        num_classes: output channels (1 in the paper).
        in_chans: input channels.
        img_size: (H, W) the model is built for (an int means square); both divisible by 32. Default (192, 256).
        channels: stem width followed by the five encoder output widths (each divisible by 4 where a CSMB runs).
        share_vss: one VSS block shared by the three CSMB branches (released code) or one per branch.
        d_state: SSM state size.
        sweep_ratio: channel reduction in the Sweep Mamba bottleneck.

    Example:
        >>> m = DermoMamba(); m(torch.randn(1, 3, 192, 256)).shape
        torch.Size([1, 1, 192, 256])
    """

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        img_size: int | Sequence[int] | None = (192, 256),
        channels: Sequence[int] = (16, 32, 64, 128, 256, 512),
        share_vss: bool = True,
        d_state: int = 16,
        sweep_ratio: int = 8,
    ) -> None:
        super().__init__()
        h, w = _parse_size(img_size)
        channels = list(channels)
        if len(channels) != 6:
            raise ValueError(f"DermoMamba: channels must list the stem width and 5 stage widths, got {channels}")
        n_down = len(channels) - 1
        self.stride = 2**n_down
        if h <= 0 or w <= 0 or h % self.stride or w % self.stride:
            near = (nearest_valid_size(h, self.stride), nearest_valid_size(w, self.stride))
            raise ValueError(
                f"DermoMamba: img_size={(h, w)} must be positive multiples of {self.stride} (H, W); "
                f"the nearest valid size is {near} ((192, 256) in the paper)"
            )
        for c in channels[:-1]:
            if c % 4:
                raise ValueError(f"DermoMamba: the CSMB widths {channels[:-1]} must be divisible by 4")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = (h, w)
        self.fixed_size = (h, w)
        self.pw_in = nn.Conv2d(in_chans, channels[0], 1)
        self.encoder = nn.ModuleList(
            EncoderBlock(channels[i], channels[i + 1], share_vss=share_vss, d_state=d_state) for i in range(n_down)
        )
        self.skips = nn.ModuleList(CBAM(c, mlp_bias=True, spatial_norm=True) for c in channels[1:])
        self.pcam = PCAM(channels[-1])
        self.sweep = SweepMamba(channels[-1], h // self.stride, w // self.stride, ratio=sweep_ratio, d_state=d_state)
        self.decoder = nn.ModuleList(DecoderBlock(channels[i + 1], channels[i]) for i in reversed(range(n_down)))
        self.conv_out = nn.Conv2d(channels[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, in_chans, H, W) with (H, W) == img_size. Returns: logits (B, num_classes, H, W)."""
        self.check_input(x)
        x = self.pw_in(x)
        skips = []
        for enc, gate in zip(self.encoder, self.skips):
            x, s = enc(x)
            skips.append(gate(s))
        x = self.sweep(self.pcam(x) + x)
        for dec, s in zip(self.decoder, reversed(skips)):
            x = dec(x, s)
        return self.conv_out(x)


@register_model(paper="DermoMamba (Hoang et al., Pattern Anal. Appl. 28:128, 2025)", params=4_953_425)
def dermomamba(
    num_classes: int = 1, in_chans: int = 3, img_size: int | Sequence[int] | None = (192, 256), **kwargs: Any
) -> DermoMamba:
    """DermoMamba at img_size (H, W) (default 192x256; any multiple of 32), 4.95 M params, shared CSMB VSS block."""
    return DermoMamba(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
