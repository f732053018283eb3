"""mambaseg.metrics: confusion statistics separated from their (named) reductions.

Example:
    >>> import torch
    >>> from mambaseg.metrics import MetricAccumulator, labels_from_logits
    >>> acc = MetricAccumulator(num_classes=1)
    >>> logits, target = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
    >>> _ = acc.update(labels_from_logits(logits), target)
    >>> sorted(acc.summary())
    ['per_case', 'pooled']
"""

from __future__ import annotations

from mambaseg.metrics.binary import (
    binary_scores,
    labels_from_logits,
    labels_from_probabilities,
    probabilities_from_logits,
)
from mambaseg.metrics.confusion import (
    METRIC_NAMES,
    MetricAccumulator,
    confusion_stats,
    reduce_stats,
    scores_from_stats,
)
from mambaseg.metrics.hd95 import EMPTY_POLICIES, dice_hd95, dice_score, hd95, surface_distances
from mambaseg.metrics.volume import VolumeEvaluator, evaluate_volumes, json_safe, volume_class_stats

__all__ = [
    "EMPTY_POLICIES",
    "METRIC_NAMES",
    "MetricAccumulator",
    "VolumeEvaluator",
    "binary_scores",
    "confusion_stats",
    "dice_hd95",
    "dice_score",
    "evaluate_volumes",
    "hd95",
    "json_safe",
    "labels_from_logits",
    "labels_from_probabilities",
    "probabilities_from_logits",
    "reduce_stats",
    "scores_from_stats",
    "surface_distances",
    "volume_class_stats",
]
