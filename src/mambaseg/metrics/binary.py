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


def labels_from_logits(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Class indices from logits.

    Args:
        logits: (B, C, *spatial).
        threshold: probability threshold for C == 1 (compared in logit space, so it is exact for very
            large or small logits).

    Returns:
        LongTensor (B, *spatial): {0, 1} for C == 1, else ``argmax`` over C.
    """
    if logits.dim() < 3:
        raise ValueError(f"logits must be (B, C, *spatial), got shape {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        t = _check_threshold(threshold)
        return (logits[:, 0] >= math.log(t / (1.0 - t))).long()
    return logits.argmax(dim=1)


def probabilities_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities from logits (B, C, *spatial): the sigmoid for C == 1, else the softmax over C (float32), the
    outputs :func:`labels_from_probabilities` turns into the labels :func:`labels_from_logits` gives."""
    if logits.dim() < 3:
        raise ValueError(f"logits must be (B, C, *spatial), got shape {tuple(logits.shape)}")
    z = logits.float()
    return torch.sigmoid(z) if z.shape[1] == 1 else torch.softmax(z, dim=1)


def labels_from_probabilities(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Like :func:`labels_from_logits` for probabilities (sigmoid or softmax outputs)."""
    if probs.dim() < 3:
        raise ValueError(f"probs must be (B, C, *spatial), got shape {tuple(probs.shape)}")
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
