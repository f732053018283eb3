"""Per-channel intensity normalisation and its statistics.

Images are first scaled to ``[0, 1]`` (8-bit values divided by 255), then normalised per channel as
``(x - mean[c]) / std[c]``. :func:`compute_normalization` measures ``mean``/``std`` on the training split
(resized, un-augmented images), streaming one image at a time so memory does not grow with the dataset.
The resulting :class:`Normalization` is small and JSON/YAML friendly (``to_dict``/``from_dict``) so a
checkpoint can carry it and inference reproduces the training input exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Normalization", "compute_normalization", "ChannelStats"]


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and standard deviation, in units of the ``[0, 1]``-scaled image.

    Args:
        mean: one value per channel.
        std: one strictly positive value per channel (same length as ``mean``).

    Example:
        >>> norm = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        >>> Normalization.from_dict(norm.to_dict()) == norm
        True
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if len(mean) == 0 or len(mean) != len(std):
            raise ValueError(
                f"Normalization: mean and std must be non-empty and of equal length, got {len(mean)} and {len(std)}"
            )
        if not all(math.isfinite(m) for m in mean):
            raise ValueError(f"Normalization: mean must be finite, got {mean}")
        if not all(math.isfinite(s) and s > 0 for s in std):
            raise ValueError(f"Normalization: std must be finite and > 0, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def num_channels(self) -> int:
        return len(self.mean)

    def to_dict(self) -> dict[str, list[float]]:
        """Plain ``{"mean": [...], "std": [...]}`` (JSON/YAML serialisable)."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalization:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming the missing key."""
        for key in ("mean", "std"):
            if key not in d:
                raise ValueError(f"Normalization.from_dict: missing key {key!r} in {dict(d)!r}")
        return cls(mean=tuple(d["mean"]), std=tuple(d["std"]))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Normalise a ``[0, 1]``-scaled channels-last image.

        Args:
            image: float array (H, W, C) with C == ``num_channels``.

        Returns:
            float32 array (H, W, C).
        """
        if image.ndim != 3 or image.shape[-1] != self.num_channels:
            raise ValueError(
                f"Normalization.apply: expected an (H, W, {self.num_channels}) image, got shape {image.shape}"
            )
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((image.astype(np.float32) - mean) / std).astype(np.float32)

    def invert(self, image: np.ndarray) -> np.ndarray:
        """Undo :meth:`apply` on a channels-last array (for visualisation)."""
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return image.astype(np.float32) * std + mean


class ChannelStats:
    """Streaming per-channel mean/variance (Chan et al.'s parallel update, float64).

    Each :meth:`update` adds one batch of pixels; batches are combined exactly, so the result does not
    depend on how the data is chunked (up to float64 rounding).
    """

    def __init__(self, num_channels: int) -> None:
        self.count = 0
        self.mean = np.zeros(num_channels, dtype=np.float64)
        self.m2 = np.zeros(num_channels, dtype=np.float64)

    def update(self, pixels: np.ndarray) -> None:
        """Add pixels given as an array (..., C); values in the unit they are to be measured in."""
        x = np.asarray(pixels, dtype=np.float64).reshape(-1, self.mean.shape[0])
        n = x.shape[0]
        if n == 0:
            return
        b_mean = x.mean(axis=0)
        b_m2 = ((x - b_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + b_m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel."""
        if self.count == 0:
            raise ValueError("ChannelStats: no pixels were added")
        return np.sqrt(self.m2 / self.count)


def _iter_unnormalized(dataset: Any) -> Iterable[np.ndarray]:
    if hasattr(dataset, "iter_unnormalized_images"):
        yield from dataset.iter_unnormalized_images()
        return
    # Generic fallback: any dataset whose items are dicts with a (C, H, W) "image" in [0, 1] units.
    for i in range(len(dataset)):
        img = dataset[i]["image"]
        arr = img.numpy() if hasattr(img, "numpy") else np.asarray(img)
        yield np.moveaxis(arr, 0, -1)


def compute_normalization(dataset: Any, *, min_std: float = 1e-6) -> Normalization:
    """Per-channel mean/std of a dataset's images, streamed one image at a time.

    For a :class:`~mambaseg.data.FolderDataset2D` the statistics are taken on the resized images without
    augmentation and before any normalisation (``dataset.iter_unnormalized_images()``), whatever the
    dataset's own ``augment``/``normalization`` settings are. Any other dataset must either provide
    ``iter_unnormalized_images()`` yielding (H, W, C) arrays in ``[0, 1]`` units, or return items whose
    ``"image"`` is an un-normalised (C, H, W) tensor in ``[0, 1]`` units.

    Args:
        dataset: the training split.
        min_std: floor applied to each channel's std (a constant channel would otherwise divide by 0).

    Returns:
        :class:`Normalization` with one mean/std per channel (population std).
    """
    stats: ChannelStats | None = None
    for img in _iter_unnormalized(dataset):
        if img.ndim != 3:
            raise ValueError(f"compute_normalization: expected (H, W, C) images, got shape {img.shape}")
        if stats is None:
            stats = ChannelStats(img.shape[-1])
        elif img.shape[-1] != stats.mean.shape[0]:
            raise ValueError(
                f"compute_normalization: channel count changed from {stats.mean.shape[0]} to {img.shape[-1]}"
            )
        stats.update(img)
    if stats is None or stats.count == 0:
        raise ValueError("compute_normalization: the dataset is empty")
    std = np.maximum(stats.std, min_std)
    return Normalization(mean=tuple(stats.mean.tolist()), std=tuple(std.tolist()))
