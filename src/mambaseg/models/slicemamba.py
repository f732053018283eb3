"""SliceMamba (Fan et al., JBHI 2025; arXiv 2407.08481): VM-UNet with per-block searched slicing scans.

Layout: the VM-UNet U-Net (4x4 patch embedding, encoder depths
(2, 2, 9, 2) with PatchMerging2D, decoder depths (2, 2, 2, 1) with PatchExpand2D, additive skips, x4 final
expand, 1x1 conv) where every block is an :class:`~mambaseg.layers.s3_block.S3Block`. The slice setting of
each of the ``sum(depths) + sum(depths_decoder)`` = 22 blocks is a gene in ``{0, 1, 2, 3}`` indexing
``SLICE_CHOICES = ((2, 2), (2, 4), (4, 2), (4, 4))``; genes 0-14 are the encoder blocks in order, 15-21 the
decoder blocks (bottleneck side first). The default architecture is all-(4, 4) (gene 3 everywhere), the
fixed slice size of the paper's first version. Parameter shapes do not depend on the genes, so the parameter
count equals VM-UNet's with the same depths/dims.

Maps whose size does not divide by a slice size (e.g. the 7 x 7 bottleneck of a 224 input) are handled by
the slicing scan's padding (strips formed on the padded grid, padded positions left out of the sequences;
:mod:`mambaseg.ops.slice_scan`) instead of failing as the original code does. The model returns
logits; the original wrapper applied a sigmoid for one class.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch.nn as nn

from mambaseg.layers.s3_block import S3Block
from mambaseg.models._registry import register_model
from mambaseg.models.vmunet import VMUNet
from mambaseg.ops.slice_scan import SLICE_CHOICES

__all__ = ["SliceMamba", "parse_arch", "arch_slices", "DEFAULT_DEPTHS", "DEFAULT_DEPTHS_DECODER", "num_positions"]

DEFAULT_DEPTHS: tuple[int, ...] = (2, 2, 9, 2)
DEFAULT_DEPTHS_DECODER: tuple[int, ...] = (2, 2, 2, 1)
DEFAULT_GENE = 3  # (4, 4)


def num_positions(
    depths: Sequence[int] = DEFAULT_DEPTHS, depths_decoder: Sequence[int] = DEFAULT_DEPTHS_DECODER
) -> int:
    """Number of searchable blocks (genes) of a network with these depths (22 for SliceMamba)."""
    return int(sum(depths) + sum(depths_decoder))


def parse_arch(arch: Any, positions: int = 22) -> tuple[int, ...]:
    """Normalise an architecture description to a tuple of ``positions`` genes in ``0..3``.

    Accepted forms: ``None`` (all-(4, 4)); a sequence of gene ints; a sequence of ``(m, n)`` pairs from
    ``SLICE_CHOICES``; a mapping with key ``"arch"`` (the content of a search's ``arch.json``); a path
    (str or PathLike) to such a JSON file; a comma-separated string of genes (``"3,3,1,..."``).

    Raises:
        ValueError: naming what was expected when the description is malformed.
    """
    if arch is None:
        return (DEFAULT_GENE,) * positions
    if isinstance(arch, (str, os.PathLike)):
        text = str(arch).strip()
        if text and all(part.strip().isdigit() for part in text.split(",")) and "," in text:
            return parse_arch([int(p) for p in text.split(",")], positions)
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"arch: {text!r} is neither a comma-separated gene list nor an existing arch.json file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"arch: {path} is not valid JSON ({e})") from e
        return parse_arch(data, positions)
    if isinstance(arch, Mapping):
        if "arch" not in arch:
            raise ValueError(
                f"arch: a mapping must hold the genes under key 'arch' (as arch.json does), got keys {sorted(arch)}"
            )
        return parse_arch(arch["arch"], positions)
    if not isinstance(arch, Sequence):
        raise ValueError(
            f"arch: expected a list of {positions} genes, a dict with 'arch' or a JSON path, got {type(arch).__name__}"
        )
    genes = []
    for i, g in enumerate(arch):
        if isinstance(g, Sequence) and not isinstance(g, str) and len(g) == 2:
            pair = (int(g[0]), int(g[1]))
            if pair not in SLICE_CHOICES:
                raise ValueError(f"arch[{i}]: slice {list(pair)} is not one of {[list(c) for c in SLICE_CHOICES]}")
            genes.append(SLICE_CHOICES.index(pair))
            continue
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < len(SLICE_CHOICES):
            raise ValueError(f"arch[{i}]: expected a gene in 0..{len(SLICE_CHOICES) - 1} or an (m, n) pair, got {g!r}")
        genes.append(int(g))
    if len(genes) != positions:
        raise ValueError(f"arch: expected {positions} genes (one per S3 block), got {len(genes)}")
    return tuple(genes)


def arch_slices(arch: Sequence[int]) -> list[tuple[int, int]]:
    """The ``(m, n)`` slice setting of every gene."""
    return [SLICE_CHOICES[g] for g in arch]


class SliceMamba(VMUNet):
    """SliceMamba: VM-UNet with one S3 (slicing-scan) block per gene.

    Args:
        num_classes: output channels (logits).
        in_chans: input channels.
        arch: the architecture (see :func:`parse_arch`); ``None`` = all-(4, 4).
        depths: S3 blocks per encoder stage.
        depths_decoder: S3 blocks per decoder stage (bottleneck side first).
        dims: encoder widths; an int C means (C, 2C, 4C, 8C).
        d_state: SSM state size.
        drop_path_rate: stochastic depth (encoder linspace(0, rate), decoder reversed).
        **ssm_kwargs: further SS2D options (``ssm_ratio``, ...).

    Attributes:
        arch: the gene tuple.

    Example:
        >>> m = SliceMamba(num_classes=1, arch=[3] * 22)
        >>> m(torch.randn(1, 3, 256, 256)).shape
        torch.Size([1, 1, 256, 256])
    """

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        arch: Any = None,
        depths: Sequence[int] = DEFAULT_DEPTHS,
        depths_decoder: Sequence[int] = DEFAULT_DEPTHS_DECODER,
        dims: int | Sequence[int] = 96,
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        **ssm_kwargs: Any,
    ) -> None:
        if "block" in ssm_kwargs:
            raise TypeError("SliceMamba builds its own blocks; 'block' cannot be passed")
        genes = parse_arch(arch, num_positions(depths, depths_decoder))
        it: Iterator[int] = iter(genes)

        def make_block(dim: int, drop_path: float = 0.0, d_state: int = 16, **kw: Any) -> nn.Module:
            return S3Block(dim, drop_path=drop_path, d_state=d_state, slice_size=SLICE_CHOICES[next(it)], **kw)

        super().__init__(num_classes=num_classes, in_chans=in_chans, depths=depths, depths_decoder=depths_decoder,
                         dims=dims, d_state=d_state, drop_path_rate=drop_path_rate, block=make_block, **ssm_kwargs)
        if next(it, None) is not None:  # pragma: no cover - guarded by num_positions
            raise RuntimeError("SliceMamba: not every gene was used; the VM-UNet block layout changed")
        self.arch = genes

    def blocks(self) -> list[S3Block]:
        """The S3 blocks in gene order (encoder stages, then decoder stages)."""
        out = [b for layer in self.layers for b in layer.blocks]
        return out + [b for layer in self.layers_up for b in layer.blocks]


@register_model(paper="SliceMamba (Fan et al., JBHI 2025, arXiv 2407.08481)", params=35_797_993)
def slicemamba(num_classes: int = 1, in_chans: int = 3, arch: Any = None, **kwargs: Any) -> SliceMamba:
    """SliceMamba: VM-UNet (depths 2,2,9,2 / decoder 2,2,2,1, C=96) with searched slicing scans; default all-(4,4)."""
    return SliceMamba(num_classes=num_classes, in_chans=in_chans, arch=arch, **kwargs)


@register_model(paper="SliceMamba (small variant for tests and CPU smoke runs)", params=505_949)
def slicemamba_tiny(num_classes: int = 1, in_chans: int = 3, arch: Any = None, **kwargs: Any) -> SliceMamba:
    """Small SliceMamba for tests: C=16, one block per stage (8 genes), d_state 8, no drop path."""
    kwargs.setdefault("depths", (1, 1, 1, 1))
    kwargs.setdefault("depths_decoder", (1, 1, 1, 1))
    kwargs.setdefault("dims", 16)
    kwargs.setdefault("d_state", 8)
    kwargs.setdefault("drop_path_rate", 0.0)
    return SliceMamba(num_classes=num_classes, in_chans=in_chans, arch=arch, **kwargs)
