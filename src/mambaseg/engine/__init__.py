"""Training engine: the training loop, evaluators and checkpoint evaluation.

Example:
    >>> from mambaseg.configs import load_recipe, apply_overrides
    >>> from mambaseg.engine import train
    >>> cfg = apply_overrides(load_recipe("vmunet_ph2"), ["data.path=data/ph2", "train.out=runs/ph2"])
    >>> result = train(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

from mambaseg.checkpoint import (
    CheckpointError,
    build_model,
    export_safetensors,
    load_checkpoint,
    save_checkpoint,
    unwrap_model,
)
from mambaseg.data.layouts import DataLayout, DataTask, DataTaskError, detect_layout, list_layouts, register_layout
from mambaseg.engine.evaluate import evaluate_checkpoint, open_data
from mambaseg.engine.evaluator import (
    EvalContext,
    Evaluator,
    SegmentationEvaluator2D,
    SlicewiseVolumeEvaluator,
    evaluator_for,
    flatten_metrics,
    lookup_metric,
)
from mambaseg.engine.optim import build_optimizer, build_scheduler
from mambaseg.engine.run_logger import RunLogger, plot_progress
from mambaseg.engine.trainer import (
    TrainHooks,
    TrainingDiverged,
    TrainingInterrupted,
    TrainResult,
    build_model_from_config,
    train,
)
from mambaseg.runtime import resolve_amp, resolve_device

__all__ = [
    "CheckpointError",
    "DataLayout",
    "DataTask",
    "DataTaskError",
    "EvalContext",
    "Evaluator",
    "RunLogger",
    "SegmentationEvaluator2D",
    "SlicewiseVolumeEvaluator",
    "TrainHooks",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_model",
    "build_model_from_config",
    "build_optimizer",
    "build_scheduler",
    "detect_layout",
    "evaluate_checkpoint",
    "evaluator_for",
    "export_safetensors",
    "flatten_metrics",
    "list_layouts",
    "load_checkpoint",
    "lookup_metric",
    "open_data",
    "plot_progress",
    "register_layout",
    "resolve_amp",
    "resolve_device",
    "save_checkpoint",
    "train",
    "unwrap_model",
]
