"""Turning model outputs into label maps, and a one-call binary evaluation.

Models return logits. For one output channel the foreground is ``sigmoid(z) >= threshold`` (the papers
threshold probabilities at 0.5, i.e. ``z >= 0``); for several channels it is the argmax over channels.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mambaseg.metrics.confusion import confusion_stats, reduce_stats

__all__ = ["labels_from_logits", "labels_from_probabilities", "probabilities_from_logits", "binary_scores"]


def _check_threshold(threshold: float) -> float:
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return float(threshold)


def _check_channels_first(x: torch.Tensor, what: str, fn: str) -> None:
    """``ValueError`` unless ``x`` is (B, C, H, W) (or a volume's (B, C, D, H, W)): a tensor without its class axis
    ((B, H, W) logits of a binary model) would otherwise be read as (B, C, H), one label per row."""
    if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        hint = ""
        if isinstance(x, torch.Tensor) and x.dim() == 3:
            hint = f"; a (B, H, W) map of one binary output needs its channel axis back: {fn}({what}.unsqueeze(1))"
        raise ValueError(f"{fn}: {what} must be (B, C, H, W) (or (B, C, D, H, W) for volumes), got shape {shape}"
                         + hint)


def labels_from_logits(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Class indices from logits.

    Args:
        logits: (B, C, H, W) (or (B, C, D, H, W)): the class axis is always dim 1, also for one binary channel.
        threshold: probability threshold for C == 1 (compared in logit space, so it is exact for very
            large or small logits).

    Returns:
        LongTensor (B, H, W) (or (B, D, H, W)): {0, 1} for C == 1, else ``argmax`` over C.

    Raises:
        ValueError: any other shape (a (B, H, W) tensor has no class axis), naming the shape expected and got.
    """
    _check_channels_first(logits, "logits", "labels_from_logits")
    if logits.shape[1] == 1:
        t = _check_threshold(threshold)
        return (logits[:, 0] >= math.log(t / (1.0 - t))).long()
    return logits.argmax(dim=1)


def probabilities_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities from logits (B, C, H, W) (or (B, C, D, H, W)): the sigmoid for C == 1, else the softmax over C
    (float32), the outputs :func:`labels_from_probabilities` turns into the labels :func:`labels_from_logits`
    gives."""
    _check_channels_first(logits, "logits", "probabilities_from_logits")
    z = logits.float()
    return torch.sigmoid(z) if z.shape[1] == 1 else torch.softmax(z, dim=1)


def labels_from_probabilities(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Like :func:`labels_from_logits` for probabilities (sigmoid or softmax outputs), (B, C, H, W) or
    (B, C, D, H, W)."""
    _check_channels_first(probs, "probs", "labels_from_probabilities")
    if probs.shape[1] == 1:
        return (probs[:, 0] >= _check_threshold(threshold)).long()
    return probs.argmax(dim=1)


def binary_scores(pred: torch.Tensor, target: torch.Tensor, *, empty: str = "one") -> dict[str, dict[str, Any]]:
    """Both reductions of the binary metrics of {0, 1} masks (N, *spatial).

    Returns:
        ``{"pooled": {...}, "per_case": {...}}`` as in :func:`~mambaseg.metrics.reduce_stats`.
    """
    stats = confusion_stats(pred, target, 1)
    return {r: reduce_stats(stats, r, empty=empty) for r in ("pooled", "per_case")}
