"""mambaseg.metrics."""

from mambaseg.metrics.hd95 import EMPTY_POLICIES, dice_hd95, dice_score, hd95, surface_distances
from mambaseg.metrics.volume import VolumeEvaluator, evaluate_volumes, json_safe, volume_class_stats
