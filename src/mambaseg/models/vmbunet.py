"""VMB-UNet: a boundary-guided cross-level feature fusion Mamba-UNet for dermoscopic image segmentation.

Code base: github.com/jyBieber/vmbu_net (a fork of VM-UNet). Layout for a 256 x 256
input (C = 96):

* PatchEmbed 4x4 -> ``S0`` (64 x 64 x 96);
* encoder stage i = 0..3 of SSC blocks (VSS block followed by CBAM, no residual around CBAM); stages 0 and 1 end with a
  Boundary Cross-Attention (BCA) that returns the boundary maps ``w0`` (64 x 64) and ``w1`` (32 x 32); stages 0..2
  end with PatchMerging2D, whose outputs are the skips ``S1`` (32 x 32 x 192), ``S2`` (16 x 16 x 384), ``S3``;
* decoder: up0 (blocks at 8 x 8 x 768); up1 = expand(x + S3) -> blocks; up2 = expand -> BCA -> BSF(x, S2, w1)
  -> blocks; up3 = expand -> BCA -> BSF(x, S1, w0) -> blocks; then ``x + S0`` -> x4 final expand -> 1x1 conv -> logits.
  BSF fuses the encoder skip of the next deeper level ("cross-level") under the boundary map of the matching encoder
  stage.

``variant="paper"`` (default) is the wiring the paper and the code comments describe: BSF at up2 and up3, every module
used (every parameter receives a gradient), and the single-key BCA attention written without its dead query/key
projections (see :mod:`mambaseg.layers.boundary_attention`).

``variant="official"`` reproduces the released wiring so released checkpoints can be loaded (same module names):
a BSF(384) is built at up1 but never called (dead parameters), up3 has no BSF (no encoder skip fused there, ``w0`` only
modulates the encoder), and the BCAs use ``nn.MultiheadAttention`` (query/key weights get no gradient).

Both variants use decoder depths [2, 2, 2, 2] as shipped (VM-UNet used [2, 2, 2, 1]); the released model returned
``sigmoid(logits)`` for one class, this one returns logits.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from mambaseg.layers import FinalPatchExpand2D, PatchEmbed2D, PatchExpand2D, PatchMerging2D, VSSBlock
from mambaseg.layers.boundary_attention import BoundaryCrossAttention
from mambaseg.layers.boundary_skip_fusion import BoundarySkipFusion
from mambaseg.layers.cbam import CBAM
from mambaseg.models._registry import register_model
from mambaseg.models.base import SegmentationModel, pyramid_dims
from mambaseg.models.vmunet import encoder_decoder_drop_rates, init_vmamba_weights

__all__ = ["SSCBlock", "SSCLayer", "SSCLayerUp", "VMBUNet"]

_VARIANTS = ("paper", "official")


class SSCBlock(VSSBlock):
    """State Space Context block: ``CBAM(x + DropPath(SS2D(LN(x))))`` on channels-last maps.

    Args:
        hidden_dim: channels C.
        drop_path: stochastic-depth rate of the SS2D branch.
        d_state: SSM state size.
        cbam_reduction: channel reduction of the CBAM MLP.
        **ss2d_kwargs: extra SS2D options.

    Shapes:
        (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(
        self, hidden_dim: int, drop_path: float = 0.0, d_state: int = 16, cbam_reduction: int = 16, **ss2d_kwargs: Any
    ) -> None:
        super().__init__(hidden_dim, drop_path=drop_path, d_state=d_state, **ss2d_kwargs)
        self.cbam = CBAM(hidden_dim, reduction=cbam_reduction, mlp_bias=False, spatial_norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return self.cbam(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SSCLayer(nn.Module):
    """Encoder stage: SSC blocks, optional BCA, optional downsampling.

    Shapes:
        (B, H, W, C) -> ((B, H', W', C'), boundary map (B, 1, H, W) or None).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: Sequence[float],
        downsample: bool,
        bca: str | None,
        d_state: int = 16,
        **ss2d_kwargs: Any,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SSCBlock(dim, drop_path=drop_path[i], d_state=d_state, **ss2d_kwargs) for i in range(depth)
        )
        self.boundary_attention = BoundaryCrossAttention(dim, attention=bca) if bca else None
        self.downsample = PatchMerging2D(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        for blk in self.blocks:
            x = blk(x)
        w = None
        if self.boundary_attention is not None:
            y, w = self.boundary_attention(x.permute(0, 3, 1, 2))
            x = y.permute(0, 2, 3, 1)
        if self.downsample is not None:
            x = self.downsample(x)
        return x, w


class SSCLayerUp(nn.Module):
    """Decoder stage: optional PatchExpand2D, optional BCA, optional BSF, then SSC blocks.

    Shapes:
        ``forward(x (B, h, w, 2C) or (B, h, w, C), enc (B, h', w', C_e) | None, boundary (B, 1, ., .) | None)``
        -> (B, H, W, C).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: Sequence[float],
        upsample: bool,
        bca: str | None,
        bsf_enc_dim: int | None,
        d_state: int = 16,
        **ss2d_kwargs: Any,
    ) -> None:
        super().__init__()
        self.upsample = PatchExpand2D(dim) if upsample else None
        self.boundary_attention = BoundaryCrossAttention(dim, attention=bca) if bca else None
        self.bsf = BoundarySkipFusion(dim, enc_dim=bsf_enc_dim) if bsf_enc_dim is not None else None
        self.blocks = nn.ModuleList(
            SSCBlock(dim, drop_path=drop_path[i], d_state=d_state, **ss2d_kwargs) for i in range(depth)
        )

    def forward(
        self, x: torch.Tensor, enc: torch.Tensor | None = None, boundary: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        if self.boundary_attention is not None:
            y, _ = self.boundary_attention(x.permute(0, 3, 1, 2))
            x = y.permute(0, 2, 3, 1)
        if enc is not None:
            if self.bsf is None or boundary is None:
                raise ValueError("SSCLayerUp: an encoder feature was given but this stage has no BSF / boundary map")
            x = self.bsf(x.permute(0, 3, 1, 2), enc.permute(0, 3, 1, 2), boundary).permute(0, 2, 3, 1)
        for blk in self.blocks:
            x = blk(x)
        return x


class VMBUNet(SegmentationModel):
    """VMB-UNet (logits out).

    Args:
        num_classes: output channels.
        in_chans: input channels.
        depths: SSC blocks per encoder stage (4 stages).
        depths_decoder: SSC blocks per decoder stage (bottleneck side first).
        dims: encoder widths; an int C means (C, 2C, 4C, 8C).
        d_state: SSM state size.
        drop_path_rate: stochastic depth (encoder increasing, decoder reversed, as VM-UNet).
        patch_size: stem stride.
        variant: ``"paper"`` (default) or ``"official"`` (released wiring, see the module docstring).
        **ssm_kwargs: extra SS2D options (e.g. ``ssm_ratio``).

    Example:
        >>> m = VMBUNet(num_classes=1); m(torch.randn(1, 3, 256, 256)).shape
        torch.Size([1, 1, 256, 256])
    """

    first_conv = "patch_embed.proj"
    classifier = "final_conv"

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        depths: Sequence[int] = (2, 2, 2, 2),
        depths_decoder: Sequence[int] = (2, 2, 2, 2),
        dims: int | Sequence[int] = 96,
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        variant: str = "paper",
        **ssm_kwargs: Any,
    ) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"VMBUNet: variant must be one of {_VARIANTS}, got {variant!r}")
        if len(depths) != 4 or len(depths_decoder) != 4:
            raise ValueError(
                f"VMBUNet: the boundary wiring needs 4 encoder and 4 decoder stages, got depths={list(depths)}, "
                f"depths_decoder={list(depths_decoder)}"
            )
        dims = pyramid_dims(dims, 4)
        if len(dims) != 4:
            raise ValueError(f"VMBUNet: dims must have 4 entries, got {dims}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.variant = variant
        self.stride = patch_size * 8
        self.dims = dims
        dims_dec = dims[::-1]
        bca = "mha" if variant == "official" else "context"
        enc_dp, dec_dp = encoder_decoder_drop_rates(depths, depths_decoder, drop_path_rate)

        self.patch_embed = PatchEmbed2D(patch_size, in_chans, dims[0])
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            self.layers.append(
                SSCLayer(
                    dims[i],
                    depth,
                    enc_dp[i],
                    downsample=i < 3,
                    bca=bca if i < 2 else None,
                    d_state=d_state,
                    **ssm_kwargs,
                )
            )
        # BSF encoder widths per decoder stage: up2 fuses S2 (dims[2]), up3 fuses S1 (dims[1])
        if variant == "official":
            bsf = [None, dims_dec[1], dims[2], None]  # up1's BSF(768/2) is built but never called, as released
        else:
            bsf = [None, None, dims[2], dims[1]]
        self.layers_up = nn.ModuleList()
        for i, depth in enumerate(depths_decoder):
            self.layers_up.append(
                SSCLayerUp(
                    dims_dec[i],
                    depth,
                    dec_dp[i],
                    upsample=i > 0,
                    bca=bca if i >= 2 else None,
                    bsf_enc_dim=bsf[i],
                    d_state=d_state,
                    **ssm_kwargs,
                )
            )
        self.final_up = FinalPatchExpand2D(dims_dec[-1], scale=patch_size)
        self.final_conv = nn.Conv2d(dims_dec[-1] // patch_size, num_classes, 1)
        self.apply(init_vmamba_weights)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
        """Encoder: bottleneck (B, h, w, C3), skips [S0, S1, S2, S3] (channels-last), boundary maps [w0, w1, None, None]."""
        x = self.patch_embed(x)
        skips = [x]
        maps: list[torch.Tensor | None] = []
        for i, layer in enumerate(self.layers):
            x, w = layer(x)
            maps.append(w)
            if i < 3:
                skips.append(x)
        return x, skips, maps

    def forward_features_up(
        self, x: torch.Tensor, skips: list[torch.Tensor], maps: list[torch.Tensor | None]
    ) -> torch.Tensor:
        """Decoder: returns the up3 output plus S0, (B, H/4, W/4, C0)."""
        x = self.layers_up[0](x)
        x = self.layers_up[1](x + skips[3])
        x = self.layers_up[2](x, skips[2], maps[1])
        if self.variant == "paper":
            x = self.layers_up[3](x, skips[1], maps[0])
        else:
            x = self.layers_up[3](x)
        return x + skips[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, in_chans, H, W), H and W multiples of 32. Returns: logits (B, num_classes, H, W)."""
        self.check_input(x)
        x, skips, maps = self.forward_features(x)
        x = self.forward_features_up(x, skips, maps)
        x = self.final_up(x).permute(0, 3, 1, 2)
        return self.final_conv(x)


@register_model(paper="VMB-UNet (jyBieber/vmbu_net; boundary-guided cross-level fusion Mamba-UNet, dermoscopy)",
                params=34_246_409)
def vmbunet(num_classes: int = 1, in_chans: int = 3, **kwargs: Any) -> VMBUNet:
    """VMB-UNet, paper wiring (BSF at up2 and up3, no dead modules); ``variant="official"`` for the released wiring."""
    return VMBUNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
