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

When ``H`` is not a multiple of ``m`` or ``W`` not a multiple of ``n`` the map is zero-padded at the
bottom/right to ``Hp = ceil(H / m) * m`` and ``Wp = ceil(W / n) * n`` (one common padded grid so the
four sequences have the same length ``Lp = Hp * Wp``); ``merge`` drops the padded positions again
(crop). On divisible maps ``Lp == H * W`` and no padding happens. Unlike the original code, non-square
maps are supported.

All orders are precomputed gather index maps (LongTensors) cached per ``(H, W, m, n)`` (and per
device), so ``scan`` and ``merge`` are each a single ``index_select`` and are exactly invertible.

Example:
    >>> x = torch.randn(2, 8, 14, 10)
    >>> sc = SliceScan(4, 2)
    >>> xs = sc.scan(x)                    # (2, 4, 8, 16 * 10): H padded 14 -> 16
    >>> y = sc.merge(xs, 14, 10)           # (2, 8, 140) == 4 * x.flatten(2)
"""

from __future__ import annotations

from functools import lru_cache

import torch

__all__ = [
    "SLICE_CHOICES",
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


@lru_cache(maxsize=256)
def _indices_cpu(h: int, w: int, m: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
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
        gathers += [seq, seq.flip(0)]
    gather = torch.stack(gathers)  # (4, Lp)
    # inverse: for every real pixel p and sequence k, the position in the concatenated (4 * Lp) output
    inv = torch.empty(4, h * w, dtype=torch.long)
    pos = torch.arange(lp)
    for k in range(4):
        keep = gather[k] < h * w
        inv[k, gather[k][keep]] = pos[keep] + k * lp
    return gather.contiguous(), inv.reshape(-1).contiguous()


_DEVICE_CACHE: dict[tuple[int, int, int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def slice_scan_indices(
    h: int, w: int, m: int, n: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached gather/scatter index maps of the four BSS sequences.

    Args:
        h: map height. w: map width. m: horizontal strip height. n: vertical strip width.
        device: where the index tensors should live (cached per device).

    Returns:
        ``(gather, inverse)``: ``gather`` LongTensor (4, Lp) with ``Lp = Hp * Wp``; entry ``[k, t]`` is
        the flat index (``i * w + j``) of the pixel read at position ``t`` of sequence ``k``, or ``h * w``
        for a padded position (reads a zero). ``inverse`` LongTensor (4 * h * w,); entry ``k * h*w + p``
        is the position of pixel ``p`` in the four sequences concatenated (``k * Lp + t``).
    """
    for name, v in (("h", h), ("w", w), ("m", m), ("n", n)):
        _check_size(name, v)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (h, w, m, n, str(dev))
    hit = _DEVICE_CACHE.get(key)
    if hit is None:
        g, inv = _indices_cpu(h, w, m, n)
        hit = (g.to(dev), inv.to(dev))
        if len(_DEVICE_CACHE) > 512:
            _DEVICE_CACHE.clear()
        _DEVICE_CACHE[key] = hit
    return hit


def slice_scan(x: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Gather the four BSS sequences of a feature map.

    Args:
        x: (B, D, H, W) feature map.
        m: horizontal strip height. n: vertical strip width.

    Returns:
        (B, 4, D, Lp) sequences, ``Lp = ceil(H/m)*m * ceil(W/n)*n`` (``H*W`` when divisible); padded
        positions hold zeros.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"slice_scan expects x of shape (B, D, H, W), got {getattr(x, 'shape', type(x))}")
    b, d, h, w = x.shape
    gather, _ = slice_scan_indices(h, w, m, n, x.device)
    flat = x.reshape(b, d, h * w)
    if gather.shape[1] != h * w:  # padded grid: padded positions read the appended zero
        flat = torch.cat([flat, flat.new_zeros(b, d, 1)], dim=-1)
    lp = gather.shape[1]
    out = flat.index_select(-1, gather.reshape(-1)).view(b, d, 4, lp)
    return out.transpose(1, 2).contiguous()


def slice_merge(y: torch.Tensor, h: int, w: int, m: int, n: int) -> torch.Tensor:
    """Map the four BSS sequences back to their pixels and sum them (adjoint of :func:`slice_scan`).

    Args:
        y: (B, 4, D, Lp) sequences as produced by :func:`slice_scan` (or a selective scan of them).
        h: original map height. w: original map width. m, n: the slice setting used by the scan.

    Returns:
        (B, D, h * w), row-major flattened map; padded positions are dropped.
    """
    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[1] != 4:
        raise ValueError(f"slice_merge expects y of shape (B, 4, D, Lp), got {getattr(y, 'shape', type(y))}")
    gather, inv = slice_scan_indices(h, w, m, n, y.device)
    b, _, d, lp = y.shape
    if lp != gather.shape[1]:
        raise ValueError(
            f"slice_merge: y has sequence length {lp} but a ({h}, {w}) map with slices ({m}, {n}) "
            f"gives {gather.shape[1]}"
        )
    flat = y.transpose(1, 2).reshape(b, d, 4 * lp)
    return flat.index_select(-1, inv).view(b, d, 4, h * w).sum(dim=2)


class SliceScan:
    """BSS scan plug-in for :class:`mambaseg.layers.SS2D` (``scan=`` argument).

    Args:
        m: horizontal strip height (rows per horizontal slice).
        n: vertical strip width (columns per vertical slice).

    Attributes:
        k: number of sequences (4).
    """

    k: int = 4

    def __init__(self, m: int, n: int) -> None:
        self.m = _check_size("m", m)
        self.n = _check_size("n", n)

    @classmethod
    def from_choice(cls, choice: int) -> SliceScan:
        """Build from a search-space gene (index into :data:`SLICE_CHOICES`)."""
        if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < len(SLICE_CHOICES):
            raise ValueError(f"slice choice must be an int in 0..{len(SLICE_CHOICES) - 1}, got {choice!r}")
        return cls(*SLICE_CHOICES[choice])

    def seq_len(self, h: int, w: int) -> int:
        """Length ``Lp`` of the sequences for an ``h`` x ``w`` map (padding included)."""
        hp, wp = _padded(h, w, self.m, self.n)
        return hp * wp

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> (B, 4, D, Lp); see :func:`slice_scan`."""
        return slice_scan(x, self.m, self.n)

    def merge(self, y: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, 4, D, Lp) -> (B, D, H*W); see :func:`slice_merge`."""
        return slice_merge(y, h, w, self.m, self.n)

    def __repr__(self) -> str:
        return f"SliceScan(m={self.m}, n={self.n})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SliceScan) and (self.m, self.n) == (other.m, other.n)

    def __hash__(self) -> int:
        return hash((SliceScan, self.m, self.n))
