"""MSVM-UNet (Chen et al., arXiv 2408.13735): VMamba-v2 encoder, multi-scale VSS decoder, LKPE upsampling.

Layout (following the released code):

* Encoder = VMamba-v2 tiny ``vssm1_tiny_0230s``: overlapping stem (conv3x3/2 3->C/2, LN2d, GELU, conv3x3/2 -> C, LN2d),
  4 stages of channels-first VSS blocks (depths 2, 2, 8, 2; SS2D with d_state 1, ssm_ratio 1, no gate, dw-conv without
  bias, LN2d; MLP ratio 4), conv3x3/2 + LN2d downsampling; stochastic depth linspace(0, 0.2) over the 14 blocks.
  The stage outputs (before each downsample) are the features f1..f4 at H/4 .. H/32.
* Decoder: 3 up-blocks, each LKPE (x2, halves the width) -> concat skip -> 1x1 linear 2C -> C -> 2 VSS blocks whose MLP
  is the multi-scale FFN (kernels 1, 3, 5); drop path linspace(0.2, 0, 6). Head: FLKPE (x4) + 1x1 classifier.
* A 1-channel input is repeated to 3 channels (as the released code), so the RGB stem of the ImageNet checkpoint
  applies.

Encoder parameter names are those of VMamba's release checkpoints prefixed with ``encoder.``
(``encoder.patch_embed.{0,2,5,7}``, ``encoder.layers.{i}.blocks.{j}.{norm,op,norm2,mlp}``,
``encoder.layers.{i}.downsample.{1,3}``); :func:`convert_vmamba_checkpoint` maps a checkpoint onto the model.
Returns logits (B, num_classes, H, W).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from mambaseg.layers.linear2d import Linear2d
from mambaseg.layers.lkpe import FLKPE, LKPE
from mambaseg.layers.norm import LayerNorm2d
from mambaseg.layers.vss_block_v2 import VSSBlockV2
from mambaseg.models._registry import register_model
from mambaseg.models.base import SegmentationModel, pyramid_dims, split_per_stage, stage_drop_rates
from mambaseg.models.vmunet import init_vmamba_weights

__all__ = ["MSVMUNet", "VMambaV2Encoder", "MSVMDecoder", "convert_vmamba_checkpoint"]


class VMambaV2Encoder(nn.Module):
    """VMamba-v2 backbone (channels-first) returning the 4 stage outputs.

    Args:
        in_chans: image channels of the stem.
        dims: stage widths; an int C means (C, 2C, 4C, 8C).
        depths: blocks per stage.
        drop_path_rate: stochastic depth, linspace(0, rate) over all blocks.
        d_state, ssm_ratio, dt_rank, d_conv, conv_bias: SS2Dv2 options (VMamba-v2 tiny: 1, 1.0, "auto", 3, False).
        mlp_ratio: MLP width ratio of the blocks.

    Shape:
        (B, in_chans, H, W) -> [(B, dims[i], H / 2^(i+2), W / 2^(i+2)) for i in 0..3].
    """

    def __init__(self, in_chans: int = 3, dims: int | Sequence[int] = 96, depths: Sequence[int] = (2, 2, 8, 2),
                 drop_path_rate: float = 0.2, d_state: int = 1, ssm_ratio: float = 1.0, dt_rank: int | str = "auto",
                 d_conv: int = 3, conv_bias: bool = False, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        n = len(depths)
        dims = pyramid_dims(dims, n)
        if len(dims) != n:
            raise ValueError(f"dims ({dims}) and depths ({tuple(depths)}) must have the same length")
        self.dims = dims
        c0 = dims[0]
        # index layout (0 conv, 1 -, 2 norm, 3 -, 4 act, 5 conv, 6 -, 7 norm) mirrors VMamba's patch_embed keys
        self.patch_embed = nn.Sequential(
            nn.Conv2d(in_chans, c0 // 2, 3, stride=2, padding=1), nn.Identity(), LayerNorm2d(c0 // 2), nn.Identity(),
            nn.GELU(), nn.Conv2d(c0 // 2, c0, 3, stride=2, padding=1), nn.Identity(), LayerNorm2d(c0),
        )
        dpr = stage_drop_rates(drop_path_rate, depths)
        self.layers = nn.ModuleList()
        for i in range(n):
            blocks = nn.Sequential(*[
                VSSBlockV2(dims[i], drop_path=dpr[i][j], mlp_ratio=mlp_ratio, ffn="mlp", d_state=d_state,
                           ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias)
                for j in range(depths[i])
            ])
            if i < n - 1:
                down: nn.Module = nn.Sequential(
                    nn.Identity(), nn.Conv2d(dims[i], dims[i + 1], 3, stride=2, padding=1), nn.Identity(),
                    LayerNorm2d(dims[i + 1]),
                )
            else:
                down = nn.Identity()
            self.layers.append(nn.Sequential(OrderedDict(blocks=blocks, downsample=down)))
        self.apply(init_vmamba_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        feats = []
        for layer in self.layers:
            x = layer.blocks(x)
            feats.append(x)
            x = layer.downsample(x)
        return feats


class MSVMUpBlock(nn.Module):
    """LKPE (x2) -> concat skip -> 1x1 linear (2*out -> out) -> VSS blocks with MS-FFN."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, drop_path: Sequence[float], d_state: int,
                 ssm_ratio: float, mlp_ratio: float, ms_kernel_sizes: Sequence[int]) -> None:
        super().__init__()
        self.up = LKPE(in_dim, out_dim=out_dim, scale=2)
        self.concat_layer = Linear2d(2 * out_dim, out_dim)
        self.vss_layer = nn.Sequential(OrderedDict(blocks=nn.Sequential(*[
            VSSBlockV2(out_dim, drop_path=drop_path[j], mlp_ratio=mlp_ratio, ffn="msffn",
                       ms_kernel_sizes=ms_kernel_sizes, d_state=d_state, ssm_ratio=ssm_ratio, conv_bias=False)
            for j in range(depth)
        ])))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.concat_layer(torch.cat([self.up(x), skip], dim=1))
        return self.vss_layer(x)


class MSVMDecoder(nn.Module):
    """MSVM-UNet decoder: up-blocks from the deepest feature to H/4, then FLKPE x4 + classifier.

    Args:
        dims: encoder widths, shallow to deep (e.g. 96, 192, 384, 768).
        num_classes: output channels.
        depths: MS-VSS blocks per up-block (len(dims) - 1 entries).
        drop_path_rate: linspace(rate, 0) over the decoder blocks.
    """

    def __init__(self, dims: Sequence[int], num_classes: int, depths: Sequence[int] = (2, 2, 2),
                 drop_path_rate: float = 0.2, d_state: int = 1, ssm_ratio: float = 1.0, mlp_ratio: float = 4.0,
                 ms_kernel_sizes: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        rdims = list(dims)[::-1]
        if len(depths) != len(rdims) - 1:
            raise ValueError(f"decoder depths needs {len(rdims) - 1} entries, got {tuple(depths)}")
        # linspace(rate, 0) over the decoder blocks (as released; not the same floats as a flipped linspace(0, rate))
        dpr = split_per_stage(torch.linspace(drop_path_rate, 0, sum(depths)).tolist(), depths)
        self.layers = nn.ModuleList()
        for i in range(1, len(rdims)):
            self.layers.append(MSVMUpBlock(rdims[i - 1], rdims[i], depths[i - 1], dpr[i - 1],
                                           d_state, ssm_ratio, mlp_ratio, ms_kernel_sizes))
        self.head = FLKPE(rdims[-1], num_classes, scale=4)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """feats: encoder outputs shallow to deep."""
        x = feats[-1]
        for layer, skip in zip(self.layers, list(feats[:-1])[::-1]):
            x = layer(x, skip)
        return self.head(x)


class MSVMUNet(SegmentationModel):
    """MSVM-UNet.

    Args:
        num_classes: output channels (logits).
        in_chans: input channels; 1 is repeated to 3 (as the released code), otherwise the stem takes them directly.
        dims: encoder widths (int C -> C, 2C, 4C, 8C).
        depths: encoder blocks per stage (tiny 2, 2, 8, 2; small 2, 2, 20, 2).
        decoder_depths: MS-VSS blocks per up-block.
        drop_path_rate: encoder stochastic depth (tiny 0.2, small 0.3).
        decoder_drop_path_rate: decoder stochastic depth (linspace(rate, 0)).
        d_state, ssm_ratio: SS2Dv2 options shared by encoder and decoder.
        mlp_ratio: FFN width ratio.
        ms_kernel_sizes: MS-FFN depthwise kernels.

    Example:
        >>> m = MSVMUNet(num_classes=9, in_chans=1); m(torch.randn(1, 1, 224, 224)).shape
        torch.Size([1, 9, 224, 224])
    """

    stride = 32

    def __init__(self, num_classes: int = 9, in_chans: int = 3, dims: int | Sequence[int] = 96,
                 depths: Sequence[int] = (2, 2, 8, 2), decoder_depths: Sequence[int] = (2, 2, 2),
                 drop_path_rate: float = 0.2, decoder_drop_path_rate: float = 0.2, d_state: int = 1,
                 ssm_ratio: float = 1.0, mlp_ratio: float = 4.0, ms_kernel_sizes: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.stride = 2 ** (len(depths) + 1)
        self.encoder = VMambaV2Encoder(3 if in_chans == 1 else in_chans, dims, depths, drop_path_rate, d_state,
                                       ssm_ratio, mlp_ratio=mlp_ratio)
        self.decoder = MSVMDecoder(self.encoder.dims, num_classes, decoder_depths, decoder_drop_path_rate, d_state,
                                   ssm_ratio, mlp_ratio, ms_kernel_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.in_chans == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.decoder(self.encoder(x))

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Stop (or restart) gradient updates of the encoder (the released recipe freezes it for the first epochs)."""
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)


def convert_vmamba_checkpoint(state_dict: Mapping[str, torch.Tensor],
                              prefix: str = "encoder.") -> dict[str, torch.Tensor]:
    """Map a VMamba-v2 release checkpoint (e.g. ``vssm1_tiny_0230s_ckpt_epoch_264.pth``) onto MSVM-UNet keys.

    Accepts the raw checkpoint dict or its ``"model"`` entry. Drops the classifier (``classifier.*``, ``head.*``,
    top-level ``norm.*``), renames older key spellings (``ln_1`` -> ``norm``, ``self_attention`` -> ``op``,
    ``downsamples.i`` -> ``layers.i.downsample``) and prefixes ``prefix``. Load the result with
    ``model.load_state_dict(sd, strict=False)`` and check that only decoder keys are missing.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(("classifier.", "head.", "norm.")):
            continue
        k = key.replace("ln_1", "norm").replace("self_attention", "op")
        k = re.sub(r"^downsamples\.(\d+)\.", r"layers.\1.downsample.", k)
        out[prefix + k] = value
    return out


@register_model(paper="MSVM-UNet (Chen et al., arXiv 2408.13735)", params=35_924_737)
def msvmunet(num_classes: int = 1, in_chans: int = 3, img_size: int | Sequence[int] | None = None,
             **kwargs: Any) -> MSVMUNet:
    """MSVM-UNet with the VMamba-v2 tiny encoder (35.93 M parameters at 9 classes).

    The network accepts any H, W divisible by 32; ``img_size`` (optional) is only validated against that.
    """
    model = MSVMUNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if img_size is not None:
        sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if any(int(s) % model.stride for s in sizes):
            raise ValueError(f"img_size must be divisible by {model.stride} for msvmunet, got {img_size}")
    return model
