"""Typed run configuration: dataclasses for every section of a training recipe.

A run is described by one :class:`RunConfig` with the sections ``model``, ``data``, ``optim``, ``schedule``,
``train`` and ``loss``. Recipes are small YAML files holding a subset of these fields (the rest keep their
defaults); the command line overrides single fields with ``--set section.field=value``. Every field has a
type, and values coming from YAML or the command line are converted and checked against it, so a typo or a
wrong type fails with a message naming the field.

Example:
    >>> from mambaseg.configs import RunConfig, apply_overrides
    >>> cfg = apply_overrides(RunConfig(), ["optim.lr=5e-4", "train.epochs=3"])
    >>> cfg.optim.lr, cfg.train.epochs
    (0.0005, 3)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = [
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "LossConfig",
    "RunConfig",
    "ConfigError",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "merge_dict",
]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


@dataclass
class ModelConfig:
    """Which network to build.

    Attributes:
        name: a registered model name (see ``mambaseg.list_models()``).
        num_classes: output channels; ``None`` = derived from the data (1 for binary tasks).
        in_chans: input channels; ``None`` = derived from the data.
        kwargs: extra keyword arguments for the model entrypoint (e.g. ``depths``, ``drop_path_rate``).
        arch: optional architecture description (e.g. a SliceMamba gene list) passed as ``arch=``.
    """

    name: str = "vmunet"
    num_classes: int | None = None
    in_chans: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    arch: Any = None


@dataclass
class DataConfig:
    """Where the data lives and how it is read.

    Attributes:
        path: dataset root; its layout is detected by :func:`mambaseg.engine.open_data`.
        layout: force a registered layout name instead of auto-detection (``None`` = detect).
        image_size: training/evaluation size (H, W); images are resized to it.
        augment: apply the training augmentation (``augmentation``) to the training split.
        augmentation: training augmentation, a preset of the one table
            :data:`mambaseg.data.transforms.AUGMENTATIONS`, honoured by every layout: ``auto`` (the layout's
            paper default: ``vmunet_isic`` for 2-D images, ``msvmunet`` for slices of volumes), ``vmunet_isic``,
            ``vmbunet_isic``, ``dermomamba_isic``, ``msvmunet``, ``flips_rotate``, ``strong_2d``, ``strong_2d_hair``,
            ``flips``, ``none``.
        val_fraction: fraction of ``train`` carved out as ``val`` when the dataset has no ``val`` split.
        split_file: JSON split file to use (or write) when ``val`` is carved from ``train``.
        split_seed: seed of the carved split.
        skip_bad: skip (and list) broken samples instead of stopping at the validation pass.
        validate: run the dataset validation pass before training.
        num_workers: DataLoader worker processes (``None`` = auto: up to 8 on a GPU, none on a CPU).
        persistent_workers: draw every epoch of a run from one loader iterator (default on): the workers live
            through the run and prepare the next epoch's first batches while the current epoch ends, validates and
            saves, instead of starting cold every epoch (which dominates short epochs on a GPU). Off: a fresh
            iterator and workers per epoch. The sampler hands every worker the epoch with each index, so batches,
            augmentation draws and a ``--resume``-d run are the same either way.
        binary: treat masks as foreground/background (True) or as label indices (False).
        label_values: for multi-class folder masks, the pixel value of each class index.
        train_splits: the splits whose cases train the model (default ``[train]``). Volumetric layouts (volcache,
            acdc, synapse, nnunet) accept evaluation splits here too: ``[train, val]`` adds every axial slice of
            the ``val`` volumes to the training slices (nnU-Net's "train on all" after a recipe is fixed). The
            ``val`` validation is then in-sample, so report the final weights (``last.pt``), not ``best.pt``.
    """

    path: str | None = None
    layout: str | None = None
    image_size: list[int] = field(default_factory=lambda: [256, 256])
    augment: bool = True
    augmentation: str = "auto"
    val_fraction: float = 0.2
    split_file: str | None = None
    split_seed: int = 42
    skip_bad: bool = False
    validate: bool = True
    num_workers: int | None = None
    persistent_workers: bool = True
    binary: bool = True
    label_values: list[int] | None = None
    train_splits: list[str] = field(default_factory=lambda: ["train"])


@dataclass
class OptimConfig:
    """Optimizer (``name`` one of ``adamw``, ``adam``, ``sgd``).

    Attributes:
        name: optimizer name.
        lr: peak learning rate.
        weight_decay: decoupled (AdamW) or L2 (Adam/SGD) weight decay.
        betas: Adam betas.
        eps: Adam epsilon.
        momentum: SGD momentum.
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9


@dataclass
class ScheduleConfig:
    """Learning-rate schedule.

    ``name``: ``cosine`` (PyTorch ``CosineAnnealingLR``; periodic beyond ``t_max``, as in VM-UNet),
    ``cosine_restarts`` (``CosineAnnealingWarmRestarts`` with ``t_max`` as T_0 and ``t_mult``),
    ``poly`` (``(1 - t/total)**power``), ``one_cycle`` (PyTorch ``OneCycleLR`` shape: cosine rise from lr/25 over
    ``warmup``, or 30% of the run when ``warmup`` is 0, then cosine decay to ``eta_min``), ``plateau``
    (``ReduceLROnPlateau`` on the selection metric) or ``constant``. A linear warm-up (``warmup``) precedes every
    other schedule; with ``interval: step`` it is counted in optimizer steps, with ``epoch`` in epochs.

    Attributes:
        name: schedule name.
        interval: ``epoch`` (step the schedule once per epoch) or ``step`` (once per optimizer step).
        t_max: cosine period in ``interval`` units; ``None`` (the default) = the whole run, so the cosine follows
            ``train.epochs`` (and ``train.max_steps``); the paper recipes state their own period.
        eta_min: floor of the cosine schedules.
        t_mult: period multiplier of ``cosine_restarts``.
        power: exponent of ``poly``.
        warmup: linear warm-up length ``W`` in ``interval`` units (0 = none): from ``lr/W`` up to the peak at its
            last unit; >= 0, and a warm-up not shorter than the run's schedule gets a warning; for ``one_cycle``
            the length of its rise; ignored (with a warning) by ``plateau``. See :mod:`mambaseg.engine.optim`.
        factor: ``plateau`` decay factor.
        patience: ``plateau`` patience (in validations).
    """

    name: str = "cosine"
    interval: str = "epoch"
    t_max: int | None = None
    eta_min: float = 1e-5
    t_mult: int = 1
    power: float = 0.9
    warmup: int = 0
    factor: float = 0.5
    patience: int = 5


@dataclass
class TrainConfig:
    """Training loop.

    Attributes:
        epochs: number of epochs.
        max_steps: stop after this many optimizer steps (``None`` = no cap).
        batch_size: GLOBAL batch size (split evenly across DDP processes).
        val_batch_size: evaluation batch size per process.
        val_every: validate every N epochs (the last epoch is always validated).
        seed: seed of weights init, shuffling and augmentation.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        amp: ``auto`` (bf16 autocast on CUDA, off on CPU), ``bf16``, ``fp16`` or ``off``. The scan kernels run in
            fp32 whatever this says.
        grad_clip: max global gradient norm (``None`` or 0 = no clipping).
        best_metric: metric that chooses ``best.pt`` on the validation split, a key or dotted path of the
            evaluator's result (``dice``, ``pooled.iou``, ``loss``, ...).
        best_mode: ``max`` or ``min`` for ``best_metric``.
        out: run directory.
        log_every: log the running loss every N steps.
        deterministic: request deterministic algorithms from PyTorch (``torch.use_deterministic_algorithms``).
        find_unused_parameters: passed to DDP.
        checkpoint_every: write ``last.pt`` every N epochs (and always after the last one); ``None`` (default) =
            by time: after the first epoch, then whenever ``checkpoint_interval_s`` has passed since the last write.
            ``--resume`` restarts from the last one written. ``best.pt`` is kept in (device) memory when validation
            improves and written just before each ``last.pt`` (so the two always agree) and at the end; on CPU, where
            that copy would share the RAM of the run, it is written when validation improves.
        checkpoint_interval_s: the time interval of the default checkpoint policy (at most this much training is
            lost to a crash).
        async_checkpoints: write checkpoints on a background thread (training goes on while a device snapshot of
            the weights and optimizer state is saved; every write is still atomic and ordered). CUDA runs only: on
            CPU the snapshot would be a second copy of the weights and optimizer state in RAM, so CPU checkpoints are
            written synchronously from the live tensors.
        time_limit_s: stop after the first epoch that ends more than this many seconds after training started
            (``None`` = no limit); the run then ends like any early stop: ``last.pt``, ``best.pt`` and
            ``metrics.json`` are written and ``metrics.json`` names the reason.
        compile: run the training forward and backward through ``torch.compile`` (default mode; the Triton scan
            enters the graph as a custom operator, so VM-UNet compiles to one graph). The first steps compile
            for minutes; evaluation runs the model uncompiled.
        cuda_graph: replay the model's training forward and backward from a CUDA graph recorded on the first batch
            (:mod:`mambaseg.engine.cuda_graph`): one launch instead of thousands per step, which is what bounds
            small models at small batches (DermoMamba at batch 4). ``None`` (auto): on a single CUDA device without
            ``compile``, for models that do not change before each step; if recording fails the run says why on
            the console and in ``train.log`` and trains eagerly. ``true``: required (an error if impossible);
            ``false``: off. Batches of another shape (an epoch's short last batch) run eagerly.
        init_from: start from the weights of this checkpoint (a mambaseg checkpoint, a converted official
            one, or a ``save_pretrained`` folder) with ``strict=False`` semantics: what fits is loaded, a head of
            another ``num_classes`` is re-initialised, a stem of another ``in_chans`` adapted; the report goes to
            ``train.log`` and the console; a file that fills less than 10 % of the model's weights (a checkpoint
            of another network) is refused. Ignored when resuming (the run's own weights are restored).
        ema_decay: keep an exponential moving average of the weights with this decay (e.g. 0.999; ``None`` = off):
            validation, ``best.pt`` and the ``state_dict`` of every checkpoint are the average
            (:mod:`mambaseg.engine.ema`); ``last.pt`` also holds the live weights, so ``--resume`` continues exactly.
        scan_backend: selective-scan backend used around the model during training and validation (``auto``,
            ``torch``, ``triton``, ``ref``, ...; see :func:`mambaseg.ops.use_backend`). A runtime choice: it is
            not stored in the model or in its checkpoint's model description.
    """

    epochs: int = 300
    max_steps: int | None = None
    batch_size: int = 32
    val_batch_size: int = 8
    val_every: int = 1
    seed: int = 42
    device: str = "auto"
    amp: str = "auto"
    grad_clip: float | None = 1.0
    best_metric: str = "dice"
    best_mode: str = "max"
    out: str = "runs/run"
    log_every: int = 10
    deterministic: bool = False
    find_unused_parameters: bool = False
    checkpoint_every: int | None = None
    checkpoint_interval_s: float = 300.0
    async_checkpoints: bool = True
    time_limit_s: float | None = None
    compile: bool = False
    cuda_graph: bool | None = None
    init_from: str | None = None
    ema_decay: float | None = None
    scan_backend: str = "auto"


@dataclass
class LossConfig:
    """Loss: a name from ``mambaseg.losses.list_losses()`` and its keyword arguments.

    ``auto`` (the default) follows the data: ``bce_dice`` for a binary task (one output channel), ``ce_dice`` for a
    multi-class one (ACDC, Synapse, nnU-Net raw, labelled folders); the run's ``config.yaml`` records the choice.
    """

    name: str = "auto"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """Everything needed to reproduce a training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    description: str = ""


# ---------------------------------------------------------------------------------------------------------------
# conversion helpers


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string already parsed by YAML) to the annotated type ``tp``.

    YAML 1.1 reads the bare words ``off``/``no``/``false`` as ``False`` and ``on``/``yes``/``true`` as ``True``, so
    ``--set train.amp=off`` (or ``amp: off`` in a file) arrives as a boolean. A string field takes a boolean back as
    the word ``"off"`` (``False``) or ``"on"`` (``True``), for every string field: the field's own check then accepts
    it (``train.amp=off``) or names the valid values; quote the value (``'no'``) to keep another word.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot interpret {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int or tp is float:
        word = "an integer" if tp is int else "a number"
        if not isinstance(value, bool):
            if isinstance(value, int) or (isinstance(value, float) and (tp is float or value.is_integer())):
                return tp(value)
            if isinstance(value, str):
                try:
                    return tp(value)
                except ValueError:
                    pass
        raise ConfigError(f"{where}: expected {word}, got {value!r}")
    if tp is str:
        if isinstance(value, bool):  # a bare YAML off/on (no/yes, false/true): see the docstring
            return "on" if value else "off"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown field(s) {', '.join(repr(f'{where}.{k}'.lstrip('.')) for k in unknown)}; "
            f"valid fields of {where or 'the config'}: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    return cls(**kwargs)


#: fields that older versions wrote and that no longer exist; dropped when reading a stored config
_RETIRED = {"data": ("cache",)}


def config_from_dict(data: dict[str, Any] | None) -> RunConfig:
    """Build a :class:`RunConfig` from a (possibly partial) nested dict, checking names and types.

    Fields retired since an older version (``data.cache``, never used) are dropped when unset, so configs stored
    in older checkpoints still load; a retired field holding a value is an error naming it.
    """
    data = dict(data or {})
    for section, names in _RETIRED.items():
        if isinstance(data.get(section), dict):
            sec = dict(data[section])
            for name in names:
                if name in sec and sec[name] is None:
                    del sec[name]
            data[section] = sec
    return _from_dict(RunConfig, data, "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (only str/int/float/bool/None/list/dict) of a config dataclass."""
    return dataclasses.asdict(cfg)


def merge_dict(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, other values replace)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("kwargs",):
            out[k] = merge_dict(out[k], v)
        else:
            out[k] = v
    return out


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: RunConfig, overrides: list[str] | tuple[str, ...] | dict[str, Any]) -> RunConfig:
    """Return a copy of ``cfg`` with dotted-path overrides applied.

    Args:
        cfg: the base configuration.
        overrides: ``["section.field=value", ...]`` (values are parsed as YAML, so ``3``, ``1e-3``, ``[2,2]``,
            ``true`` and ``null`` work) or a mapping ``{"section.field": value}``. Keys under ``model.kwargs`` and
            ``loss.kwargs`` may be new (``model.kwargs.drop_path_rate=0.1``).

    Returns:
        A new, type-checked :class:`RunConfig`.

    Raises:
        ConfigError: an override is malformed, names an unknown field or has the wrong type.
    """
    data = config_to_dict(cfg)
    items: list[tuple[str, Any]]
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for ov in overrides:
            if "=" not in ov:
                raise ConfigError(f"override {ov!r} must look like section.field=value")
            key, _, raw = ov.partition("=")
            items.append((key.strip(), _parse_value(raw.strip())))
    for key, value in items:
        parts = key.split(".")
        if len(parts) < 1 or not all(parts):
            raise ConfigError(f"override key {key!r} must be a dotted path such as train.epochs")
        node: Any = data
        for i, p in enumerate(parts[:-1]):
            if not isinstance(node, dict) or p not in node:
                raise ConfigError(f"unknown config section {'.'.join(parts[: i + 1])!r} in override {key!r}")
            if node[p] is None and parts[i] in ("kwargs",):
                node[p] = {}
            node = node[p]
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts[:-1])!r} is not a section; cannot set {key!r}")
        free_form = len(parts) >= 2 and parts[-2] == "kwargs"
        if parts[-1] not in node and not free_form:
            raise ConfigError(f"unknown config field {key!r}; valid fields: {', '.join(sorted(node))}")
        node[parts[-1]] = value
    return config_from_dict(data)


def dump_yaml(cfg: RunConfig) -> str:
    """YAML text of a config (stable key order)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
