"""VM-UNet (Ruan & Xiang, 2024): a pure-Mamba U-Net of VSS blocks with additive skips.

Layout: PatchEmbed (4x4) -> 4 encoder stages of VSS blocks with PatchMerging2D ->
4 decoder stages (stage 0 at H/32 without upsampling; stages 1..3: x + skip, PatchExpand2D, blocks) -> x4 final
expand -> 1x1 conv. Skips are the inputs of encoder stages 1..3 (the patch-embedding output is not used as a skip).
Returns logits (the original wrapper applied a sigmoid for one class; we never do).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from mambaseg.layers import FinalPatchExpand2D, PatchEmbed2D, PatchExpand2D, PatchMerging2D, VSSLayer, VSSLayerUp
from mambaseg.models._registry import register_model
from mambaseg.models.base import SegmentationModel, pyramid_dims, stage_drop_rates

__all__ = ["VMUNet", "init_vmamba_weights"]


def init_vmamba_weights(module: nn.Module) -> None:
    """VMamba's model-wide init: Linear trunc-normal(0.02) with zero bias, LayerNorm (1, 0); convs keep defaults."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def encoder_decoder_drop_rates(depths: Sequence[int], depths_decoder: Sequence[int],
                               rate: float) -> tuple[list[list[float]], list[list[float]]]:
    """Per-stage drop-path rates: encoder linspace(0, rate) in order; decoder the same schedule reversed."""
    return stage_drop_rates(rate, depths), stage_drop_rates(rate, depths_decoder, reverse=True)


class VMUNet(SegmentationModel):
    """VM-UNet.

    Args:
        num_classes: output channels (logits).
        in_chans: input channels (the conv stem takes them directly; the original repeated 1 channel to 3).
        depths: VSS blocks per encoder stage.
        depths_decoder: VSS blocks per decoder stage (bottleneck side first).
        dims: encoder widths; an int C means (C, 2C, 4C, 8C).
        d_state: SSM state size.
        drop_path_rate: stochastic depth (see :func:`encoder_decoder_drop_rates`).
        patch_size: stem stride.
        ssm_kwargs: extra SS2D options (e.g. ``ssm_ratio``).

    Example:
        >>> m = VMUNet(num_classes=1); m(torch.randn(1, 3, 256, 256)).shape
        torch.Size([1, 1, 256, 256])
    """

    first_conv = "patch_embed.proj"
    classifier = "final_conv"

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        depths: Sequence[int] = (2, 2, 2, 2),
        depths_decoder: Sequence[int] = (2, 2, 2, 1),
        dims: int | Sequence[int] = 96,
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        **ssm_kwargs: Any,
    ) -> None:
        super().__init__()
        dims = pyramid_dims(dims, len(depths))
        if len(dims) != len(depths) or len(depths_decoder) != len(depths):
            raise ValueError(f"depths {list(depths)}, depths_decoder {list(depths_decoder)} and dims {dims} must have equal length")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.stride = patch_size * 2 ** (len(depths) - 1)
        self.dims = dims
        dims_dec = dims[::-1]
        enc_dp, dec_dp = encoder_decoder_drop_rates(depths, depths_decoder, drop_path_rate)

        self.patch_embed = PatchEmbed2D(patch_size, in_chans, dims[0])
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            self.layers.append(
                VSSLayer(
                    dims[i],
                    depth,
                    drop_path=enc_dp[i],
                    downsample=PatchMerging2D(dims[i]) if i < len(depths) - 1 else None,
                    d_state=d_state,
                    **ssm_kwargs,
                )
            )
        self.layers_up = nn.ModuleList()
        for i, depth in enumerate(depths_decoder):
            self.layers_up.append(
                VSSLayerUp(
                    dims_dec[i],
                    depth,
                    drop_path=dec_dp[i],
                    upsample=PatchExpand2D(dims_dec[i]) if i > 0 else None,
                    d_state=d_state,
                    **ssm_kwargs,
                )
            )
        self.final_up = FinalPatchExpand2D(dims_dec[-1], scale=patch_size)
        self.final_conv = nn.Conv2d(dims_dec[-1] // patch_size, num_classes, 1)
        self.apply(init_vmamba_weights)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder: returns the bottleneck (B, h, w, C_last) and the inputs of every encoder stage."""
        x = self.patch_embed(x)
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        return x, skips

    def forward_features_up(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for i, layer in enumerate(self.layers_up):
            x = layer(x if i == 0 else x + skips[-i])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x, skips = self.forward_features(x)
        x = self.forward_features_up(x, skips)
        x = self.final_up(x).permute(0, 3, 1, 2)
        return self.final_conv(x)


@register_model(paper="VM-UNet (Ruan & Xiang, arXiv 2402.02491)", params=27_427_561)
def vmunet(num_classes: int = 1, in_chans: int = 3, **kwargs: Any) -> VMUNet:
    """VM-UNet, ISIC configuration: depths [2,2,2,2], decoder [2,2,2,1], C=96, drop path 0.2 (27.43 M params)."""
    return VMUNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper="VM-UNet (Ruan & Xiang, arXiv 2402.02491)", params=44_273_833)
def vmunet_code_default(num_classes: int = 1, in_chans: int = 3, **kwargs: Any) -> VMUNet:
    """VM-UNet with the constructor defaults of the released code: depths [2,2,9,2], decoder [2,9,2,2] (44.27 M)."""
    kwargs.setdefault("depths", (2, 2, 9, 2))
    kwargs.setdefault("depths_decoder", (2, 9, 2, 2))
    return VMUNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper="VM-UNet (small variant for tests and the demo)", params=1_795_257)
def vmunet_tiny(num_classes: int = 1, in_chans: int = 3, **kwargs: Any) -> VMUNet:
    """Small VM-UNet for tests and the CPU demo: C=32, one block per stage, d_state 8 (< 2 M params)."""
    kwargs.setdefault("depths", (1, 1, 1, 1))
    kwargs.setdefault("depths_decoder", (1, 1, 1, 1))
    kwargs.setdefault("dims", 32)
    kwargs.setdefault("d_state", 8)
    kwargs.setdefault("drop_path_rate", 0.0)
    return VMUNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
