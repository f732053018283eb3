"""Boundary-guided Skip Fusion (BSF) of VMB-UNet.

Inputs: decoder feature ``D`` (B, dim, h, w), an encoder feature ``E`` (B, enc_dim, h', w') and a boundary map ``w``
(B, 1, h'', w'') produced by a Boundary Cross-Attention of the encoder.

1. ``E`` is aligned to ``D``: a 1x1 conv enc_dim -> dim (with bias) when the widths differ, then a bilinear resize to
   (h, w) (align_corners False); ``w`` is resized likewise.
2. boundary gate ``G = sigmoid(Conv3x3(dim/2 -> dim)(ReLU(BN(Conv3x3(dim+1 -> dim/2)([D; w])))))``;
3. ``E_hat = E * w``; ``M_r = ReLU(BN(Conv3x3_dilation_r(E_hat)))`` for r in (1, 2, 4);
4. ``Fu = Conv3x3(ReLU(BN(Conv3x3(4 dim -> dim)([D; M_1; M_2; M_4]))))``;
5. output ``Fu * G + D``.

The released code creates the width-alignment conv under a name that encodes the widths
(``channel_adjust_384_to_192``); the same name is used here so released weights load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BoundarySkipFusion"]


class BoundarySkipFusion(nn.Module):
    """Fuse an encoder skip into a decoder feature under the guidance of a boundary map.

    Args:
        dim: channels of the decoder feature (and of the output).
        enc_dim: channels of the encoder feature; a 1x1 alignment conv is built when it differs from ``dim``.
            ``None`` means "same as dim".
        dilations: dilations of the multi-scale branches on the boundary-weighted encoder feature.

    Shapes:
        ``forward(dec (B, dim, h, w), enc (B, enc_dim, h', w'), boundary (B, 1, h'', w''))`` -> (B, dim, h, w).
    """

    def __init__(self, dim: int, enc_dim: int | None = None, dilations: tuple[int, ...] = (1, 2, 4)) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"BoundarySkipFusion: dim must be >= 2, got {dim}")
        self.dim = dim
        self.enc_dim = dim if enc_dim is None else enc_dim
        self._adjust_name = f"channel_adjust_{self.enc_dim}_to_{dim}" if self.enc_dim != dim else None
        if self._adjust_name is not None:
            self.add_module(self._adjust_name, nn.Conv2d(self.enc_dim, dim, 1))
        half = dim // 2
        self.boundary_refinement = nn.Sequential(
            nn.Conv2d(dim + 1, half, 3, padding=1),
            nn.BatchNorm2d(half),
            nn.ReLU(),
            nn.Conv2d(half, dim, 3, padding=1),
            nn.Sigmoid(),
        )
        self.multi_scale_fusion = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=d, dilation=d), nn.BatchNorm2d(dim), nn.ReLU())
            for d in dilations
        )
        self.fusion_conv = nn.Sequential(
            nn.Conv2d(dim * (len(dilations) + 1), dim, 3, padding=1),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
            nn.Conv2d(dim, dim, 3, padding=1),
        )

    def forward(self, dec: torch.Tensor, enc: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
        """Fuse ``enc`` into ``dec``.

        Args:
            dec: decoder feature (B, dim, h, w).
            enc: encoder feature (B, enc_dim, h', w'), resized to (h, w) here.
            boundary: boundary map (B, 1, h'', w'') in [0, 1], resized to (h, w) here.

        Returns:
            Fused feature (B, dim, h, w).
        """
        if dec.dim() != 4 or dec.shape[1] != self.dim:
            raise ValueError(f"BoundarySkipFusion: dec must be (B, {self.dim}, h, w), got {tuple(dec.shape)}")
        if enc.dim() != 4 or enc.shape[1] != self.enc_dim:
            raise ValueError(f"BoundarySkipFusion: enc must be (B, {self.enc_dim}, h, w), got {tuple(enc.shape)}")
        if boundary.dim() != 4 or boundary.shape[1] != 1:
            raise ValueError(f"BoundarySkipFusion: boundary must be (B, 1, h, w), got {tuple(boundary.shape)}")
        size = dec.shape[-2:]
        if self._adjust_name is not None:
            enc = getattr(self, self._adjust_name)(enc)
        if enc.shape[-2:] != size:
            enc = F.interpolate(enc, size=size, mode="bilinear", align_corners=False)
        if boundary.shape[-2:] != size:
            boundary = F.interpolate(boundary, size=size, mode="bilinear", align_corners=False)
        gate = self.boundary_refinement(torch.cat([dec, boundary], dim=1))
        enc = enc * boundary
        fused = self.fusion_conv(torch.cat([dec] + [m(enc) for m in self.multi_scale_fusion], dim=1))
        return fused * gate + dec
