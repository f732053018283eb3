"""Bidirectional Slicing and Scanning (BSS) orders of SliceMamba (Fan et al., JBHI 2025).

A feature map ``x`` of shape (B, D, H, W) is turned into ``K = 4`` sequences by slicing it into strips
and flattening each strip so that spatial neighbours stay close in the 1-D sequence:

* **horizontal slicing** with strip height ``m``: the map is cut along H into strips of ``m`` rows by the
  full width; a strip is read column by column from left to right, each column from top to bottom; the
  strips follow each other from top to bottom. Position ``(i, j)`` with ``s = i // m`` and
  ``r = i % m`` lands at ``t = s * (m * W) + j * m + r``.
* **vertical slicing** with strip width ``n``: the map is cut along W into strips of ``n`` columns by the
  full height; a strip is read row by row from top to bottom, each row from left to right; the strips
  follow each other from left to right. Position ``(i, j)`` with ``s = j // n`` and ``c = j % n`` lands
  at ``t = s * (H * n) + i * n + c``.

The four sequences are ``[horizontal, reversed horizontal, vertical, reversed vertical]``. ``merge``
maps every sequence back to its spatial positions and sums the four (the adjoint of ``scan``).

When ``H`` is not a multiple of ``m`` or ``W`` not a multiple of ``n`` the map is padded at the
bottom/right to ``Hp = ceil(H / m) * m`` and ``Wp = ceil(W / n) * n`` (one common padded grid), the strips
and orders are formed on the padded grid, and ``merge`` crops the padded positions away again. Two
padding modes:

* ``pad_mode="drop"`` (default): the padded positions are removed from the sequences, so every sequence
  has length ``L = H * W`` and no artificial token enters the state-space recurrence (the last strip is
  simply shorter). This keeps the ``(B, K, D, H*W)`` contract of :class:`mambaseg.layers.SS2D`.
* ``pad_mode="zeros"``: the padded positions stay in the sequences as zeros (length ``Hp * Wp``), the
  literal pad-scan-crop; it needs a mixer that accepts sequences longer than ``H * W``.

On divisible maps both modes are identical to the original definition. Unlike the original code,
non-square maps are supported.

All orders are precomputed gather index maps (LongTensors) cached per ``(H, W, m, n)`` (and per
device), so ``scan`` and ``merge`` are each a single ``index_select`` and are exactly invertible.

Example:
    >>> x = torch.randn(2, 8, 14, 10)
    >>> sc = SliceScan(4, 2)
    >>> xs = sc.scan(x)                    # (2, 4, 8, 140): strips formed on the 16 x 10 padded grid
    >>> y = sc.merge(xs, 14, 10)           # (2, 8, 140) == 4 * x.flatten(2)
    >>> SliceScan(4, 2, pad_mode="zeros").scan(x).shape[-1]   # 160 = 16 * 10, zeros at padded places
"""

from __future__ import annotations

from functools import lru_cache

import torch

from mambaseg.utils.compile import assume_constant_result

__all__ = [
    "SLICE_CHOICES",
    "PAD_MODES",
    "SliceScan",
    "slice_scan",
    "slice_merge",
    "slice_scan_indices",
    "slice_order",
]

#: The SliceMamba search space: choice index -> (m, n) = (horizontal-strip height, vertical-strip width).
SLICE_CHOICES: tuple[tuple[int, int], ...] = ((2, 2), (2, 4), (4, 2), (4, 4))


def _check_size(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _padded(h: int, w: int, m: int, n: int) -> tuple[int, int]:
    return -(-h // m) * m, -(-w // n) * n


def slice_order(h: int, w: int, size: int, direction: str) -> torch.Tensor:
    """Sequence position of every pixel of an ``h`` x ``w`` grid for one slicing direction.

    ``h`` must be a multiple of ``size`` for ``direction="horizontal"`` and ``w`` for ``"vertical"``.

    Args:
        h: grid height.
        w: grid width.
        size: strip height ``m`` (horizontal) or strip width ``n`` (vertical).
        direction: ``"horizontal"`` or ``"vertical"``.

    Returns:
        LongTensor (h, w): ``t[i, j]`` = position of pixel (i, j) in the forward sequence.
    """
    i = torch.arange(h).view(h, 1).expand(h, w)
    j = torch.arange(w).view(1, w).expand(h, w)
    if direction == "horizontal":
        if h % size:
            raise ValueError(f"horizontal slicing needs h divisible by the strip height {size}, got h={h}")
        return (i // size) * (size * w) + j * size + (i % size)
    if direction == "vertical":
        if w % size:
            raise ValueError(f"vertical slicing needs w divisible by the strip width {size}, got w={w}")
        return (j // size) * (h * size) + i * size + (j % size)
    raise ValueError(f"direction must be 'horizontal' or 'vertical', got {direction!r}")


PAD_MODES = ("drop", "zeros")


def _check_pad_mode(pad_mode: str) -> str:
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    return pad_mode


@lru_cache(maxsize=256)
def _indices_cpu(h: int, w: int, m: int, n: int, pad_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    hp, wp = _padded(h, w, m, n)
    lp = hp * wp
    # flat index of each padded-grid pixel in the zero-extended input (h*w = the appended zero element)
    ii = torch.arange(hp).view(hp, 1).expand(hp, wp)
    jj = torch.arange(wp).view(1, wp).expand(hp, wp)
    real = (ii < h) & (jj < w)
    src = torch.where(real, ii * w + jj, torch.full_like(ii, h * w)).reshape(-1)
    gathers = []
    for direction, size in (("horizontal", m), ("vertical", n)):
        t = slice_order(hp, wp, size, direction).reshape(-1)
        seq = torch.empty(lp, dtype=torch.long)
        seq[t] = src  # seq[t] = source pixel read at sequence position t
        if pad_mode == "drop":
            seq = seq[seq < h * w]
        gathers += [seq, seq.flip(0)]
    gather = torch.stack(gathers)  # (4, L)
    length = gather.shape[1]
    # inverse: for every real pixel p and sequence k, the position in the concatenated (4 * L) sequences
    inv = torch.empty(4, h * w, dtype=torch.long)
    pos = torch.arange(length)
    for k in range(4):
        keep = gather[k] < h * w
        inv[k, gather[k][keep]] = pos[keep] + k * length
    return gather.contiguous(), inv.reshape(-1).contiguous()


_DEVICE_CACHE: dict[tuple[int, int, int, int, str, str], tuple[torch.Tensor, torch.Tensor]] = {}


@assume_constant_result  # cached index maps of static sizes: constants for torch.compile
def slice_scan_indices(
    h: int, w: int, m: int, n: int, device: torch.device | str | None = None, pad_mode: str = "drop"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached gather/scatter index maps of the four BSS sequences.

    Args:
        h: map height. w: map width. m: horizontal strip height. n: vertical strip width.
        device: where the index tensors should live (cached per device).
        pad_mode: ``"drop"`` (sequences of length ``h * w``) or ``"zeros"`` (length ``Hp * Wp``).

    Returns:
        ``(gather, inverse)``: ``gather`` LongTensor (4, L); entry ``[k, t]`` is the flat index
        (``i * w + j``) of the pixel read at position ``t`` of sequence ``k``, or ``h * w`` for a padded
        position (reads a zero; only with ``pad_mode="zeros"``). ``inverse`` LongTensor (4 * h * w,);
        entry ``k * h*w + p`` is the position of pixel ``p`` in the four sequences concatenated
        (``k * L + t``).
    """
    for name, v in (("h", h), ("w", w), ("m", m), ("n", n)):
        _check_size(name, v)
    _check_pad_mode(pad_mode)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (h, w, m, n, pad_mode, str(dev))
    hit = _DEVICE_CACHE.get(key)
    if hit is None:
        # cached tensors must be normal tensors even when first built under torch.inference_mode(), or a later
        # training step could not save them for backward
        with torch.inference_mode(False):
            g, inv = _indices_cpu(h, w, m, n, pad_mode)
            hit = (g.to(dev), inv.to(dev))
        if len(_DEVICE_CACHE) > 512:
            _DEVICE_CACHE.clear()
        _DEVICE_CACHE[key] = hit
    return hit


def slice_scan(x: torch.Tensor, m: int, n: int, pad_mode: str = "drop") -> torch.Tensor:
    """Gather the four BSS sequences of a feature map.

    Args:
        x: (B, D, H, W) feature map.
        m: horizontal strip height. n: vertical strip width.
        pad_mode: ``"drop"`` or ``"zeros"`` (see the module docstring).

    Returns:
        (B, 4, D, L) sequences: ``L = H * W`` with ``pad_mode="drop"``, ``L = ceil(H/m)*m * ceil(W/n)*n``
        with ``"zeros"`` (padded positions hold zeros).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"slice_scan expects x of shape (B, D, H, W), got {getattr(x, 'shape', type(x))}")
    b, d, h, w = x.shape
    # int(): a traced export (TorchScript ONNX) sees sizes as 0-d tensors; the index maps are constants of the graph
    gather, _ = slice_scan_indices(int(h), int(w), m, n, x.device, pad_mode)
    flat = x.reshape(b, d, h * w)
    if gather.shape[1] != h * w:  # zero-padded sequences: padded positions read the appended zero
        flat = torch.cat([flat, flat.new_zeros(b, d, 1)], dim=-1)
    length = gather.shape[1]
    out = flat.index_select(-1, gather.reshape(-1)).view(b, d, 4, length)
    return out.transpose(1, 2).contiguous()


def slice_merge(y: torch.Tensor, h: int, w: int, m: int, n: int, pad_mode: str = "drop") -> torch.Tensor:
    """Map the four BSS sequences back to their pixels and sum them (adjoint of :func:`slice_scan`).

    Args:
        y: (B, 4, D, L) sequences as produced by :func:`slice_scan` (or a selective scan of them).
        h: original map height. w: original map width. m, n: the slice setting used by the scan.
        pad_mode: the padding mode used by the scan.

    Returns:
        (B, D, h * w), row-major flattened map; padded positions are dropped.
    """
    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[1] != 4:
        raise ValueError(f"slice_merge expects y of shape (B, 4, D, L), got {getattr(y, 'shape', type(y))}")
    gather, inv = slice_scan_indices(int(h), int(w), m, n, y.device, pad_mode)
    b, _, d, length = y.shape
    if length != gather.shape[1]:
        raise ValueError(
            f"slice_merge: y has sequence length {length} but a ({h}, {w}) map with slices ({m}, {n}) and "
            f"pad_mode={pad_mode!r} gives {gather.shape[1]}"
        )
    flat = y.transpose(1, 2).reshape(b, d, 4 * length)
    return flat.index_select(-1, inv).view(b, d, 4, h * w).sum(dim=2)


class SliceScan:
    """BSS scan plug-in for :class:`mambaseg.layers.SS2D` (``scan=`` argument).

    Args:
        m: horizontal strip height (rows per horizontal slice).
        n: vertical strip width (columns per vertical slice).
        pad_mode: ``"drop"`` (default; sequences of length H*W) or ``"zeros"`` (see the module docstring).

    Attributes:
        k: number of sequences (4).
    """

    k: int = 4

    def __init__(self, m: int, n: int, pad_mode: str = "drop") -> None:
        self.m = _check_size("m", m)
        self.n = _check_size("n", n)
        self.pad_mode = _check_pad_mode(pad_mode)

    @classmethod
    def from_choice(cls, choice: int, pad_mode: str = "drop") -> SliceScan:
        """Build from a search-space gene (index into :data:`SLICE_CHOICES`)."""
        if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < len(SLICE_CHOICES):
            raise ValueError(f"slice choice must be an int in 0..{len(SLICE_CHOICES) - 1}, got {choice!r}")
        return cls(*SLICE_CHOICES[choice], pad_mode=pad_mode)

    def seq_len(self, h: int, w: int) -> int:
        """Length ``L`` of the sequences for an ``h`` x ``w`` map."""
        if self.pad_mode == "drop":
            return h * w
        hp, wp = _padded(h, w, self.m, self.n)
        return hp * wp

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> (B, 4, D, L); see :func:`slice_scan`."""
        return slice_scan(x, self.m, self.n, self.pad_mode)

    def merge(self, y: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, 4, D, L) -> (B, D, H*W); see :func:`slice_merge`."""
        return slice_merge(y, h, w, self.m, self.n, self.pad_mode)

    def __repr__(self) -> str:
        extra = "" if self.pad_mode == "drop" else f", pad_mode={self.pad_mode!r}"
        return f"SliceScan(m={self.m}, n={self.n}{extra})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SliceScan) and (self.m, self.n, self.pad_mode) == (other.m, other.n, other.pad_mode)

    def __hash__(self) -> int:
        return hash((SliceScan, self.m, self.n, self.pad_mode))
