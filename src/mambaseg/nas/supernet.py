"""SliceMamba supernet: four candidate S3 blocks per searchable position, single-path one-shot.

The supernet is the SliceMamba U-Net in which every one of the 22 blocks is an
:class:`~mambaseg.layers.s3_block.S3ChoiceBlock` holding one S3 block per slice choice (separate weights;
every other layer is shared). A forward pass runs exactly one path:

* with :meth:`SliceMambaSupernet.set_arch` (or the ``arch`` context of :meth:`use_arch`) a fixed path
  runs - this is how the evolutionary search scores candidates with the frozen supernet;
* otherwise every forward call draws a new path from the sampler (uniform per position) - SPOS training
  (one random path per iteration; only that path's blocks get gradients) and, in eval mode, validation on
  a random path, as in the original code.

:meth:`extract` builds a stand-alone :class:`~mambaseg.models.slicemamba.SliceMamba` of one path with the
supernet's weights (same state-dict keys as a SliceMamba built from scratch).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

from mambaseg.layers.s3_block import S3ChoiceBlock
from mambaseg.models.slicemamba import (
    DEFAULT_DEPTHS,
    DEFAULT_DEPTHS_DECODER,
    SliceMamba,
    num_positions,
    parse_arch,
)
from mambaseg.models.vmunet import VMUNet
from mambaseg.nas.sampler import UniformPathSampler
from mambaseg.ops.slice_scan import SLICE_CHOICES

__all__ = ["SliceMambaSupernet"]


class SliceMambaSupernet(VMUNet):
    """SPOS supernet over the SliceMamba search space.

    Args:
        num_classes: output channels (logits).
        in_chans: input channels.
        depths: blocks per encoder stage.
        depths_decoder: blocks per decoder stage.
        dims: encoder widths (int C -> C, 2C, 4C, 8C).
        d_state: SSM state size.
        drop_path_rate: stochastic depth.
        seed: seed of the path sampler.
        **ssm_kwargs: further SS2D options.

    Attributes:
        num_positions: number of searchable positions (22).
        last_arch: the path used by the latest forward call.

    Example:
        >>> net = SliceMambaSupernet(dims=16, depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1))
        >>> y = net(torch.randn(1, 3, 64, 64))          # a random path
        >>> net.set_arch([3] * 8); y = net(torch.randn(1, 3, 64, 64))   # a fixed path
    """

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        depths: Sequence[int] = DEFAULT_DEPTHS,
        depths_decoder: Sequence[int] = DEFAULT_DEPTHS_DECODER,
        dims: int | Sequence[int] = 96,
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        seed: int = 0,
        **ssm_kwargs: Any,
    ) -> None:
        if "block" in ssm_kwargs:
            raise TypeError("SliceMambaSupernet builds its own blocks; 'block' cannot be passed")

        def make_block(dim: int, drop_path: float = 0.0, d_state: int = 16, **kw: Any) -> nn.Module:
            return S3ChoiceBlock(dim, drop_path=drop_path, d_state=d_state, choices=SLICE_CHOICES, **kw)

        super().__init__(num_classes=num_classes, in_chans=in_chans, depths=depths, depths_decoder=depths_decoder,
                         dims=dims, d_state=d_state, drop_path_rate=drop_path_rate, block=make_block, **ssm_kwargs)
        self.num_positions = num_positions(depths, depths_decoder)
        self.num_choices = len(SLICE_CHOICES)
        self.sampler = UniformPathSampler(self.num_positions, self.num_choices, seed=seed)
        self.fixed_arch: tuple[int, ...] | None = None
        self.last_arch: tuple[int, ...] | None = None
        self.subnet_kwargs = dict(depths=tuple(depths), depths_decoder=tuple(depths_decoder), dims=dims,
                                  d_state=d_state, drop_path_rate=drop_path_rate, **ssm_kwargs)
        if len(self.choice_blocks()) != self.num_positions:  # pragma: no cover - guards the VM-UNet block layout
            raise RuntimeError("SliceMambaSupernet: the VM-UNet block layout changed; positions do not match genes")

    def choice_blocks(self) -> list[S3ChoiceBlock]:
        """The searchable positions in gene order (encoder stages, then decoder stages)."""
        out = [b for layer in self.layers for b in layer.blocks]
        return out + [b for layer in self.layers_up for b in layer.blocks]

    def set_arch(self, arch: Any) -> None:
        """Run ``arch`` (anything :func:`~mambaseg.models.slicemamba.parse_arch` accepts) from now on;
        ``None`` returns to drawing a random path per forward call."""
        self.fixed_arch = None if arch is None else parse_arch(arch, self.num_positions)

    @contextmanager
    def use_arch(self, arch: Any) -> Iterator[None]:
        """Context manager: run ``arch`` inside the block, then restore the previous setting."""
        prev = self.fixed_arch
        self.set_arch(arch)
        try:
            yield
        finally:
            self.fixed_arch = prev

    def _activate(self, arch: tuple[int, ...]) -> None:
        for blk, g in zip(self.choice_blocks(), arch):
            blk.choice = g
        self.last_arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arch = self.fixed_arch if self.fixed_arch is not None else self.sampler.sample()
        self._activate(arch)
        return super().forward(x)

    def extract(self, arch: Any) -> SliceMamba:
        """A stand-alone SliceMamba of one path carrying the supernet's weights for that path."""
        genes = parse_arch(arch, self.num_positions)
        net = SliceMamba(num_classes=self.num_classes, in_chans=self.in_chans, arch=genes, **self.subnet_kwargs)
        net.load_state_dict(self.subnet_state_dict(genes))
        return net.to(next(self.parameters()).device)

    def subnet_state_dict(self, arch: Any) -> dict[str, torch.Tensor]:
        """State dict of one path, keyed like a :class:`SliceMamba` (``...blocks.j.<param>``)."""
        genes = parse_arch(arch, self.num_positions)
        blocks = self.choice_blocks()
        # map each choice block's prefix to the chosen candidate's prefix
        names = {id(b): n for n, b in self.named_modules()}
        chosen: dict[str, str] = {}
        for blk, g in zip(blocks, genes):
            prefix = names[id(blk)]
            chosen[f"{prefix}.candidates.{g}."] = f"{prefix}."
        out: dict[str, torch.Tensor] = {}
        for key, t in self.state_dict().items():
            if ".candidates." not in key:
                out[key] = t
                continue
            for src, dst in chosen.items():
                if key.startswith(src):
                    out[dst + key[len(src):]] = t
                    break
        return out
