"""What a dataset layout hands to training and evaluation: the :class:`DataTask`, and helpers of the openers.

Every opener (``mambaseg.data.{folder2d,cache,acdc,synapse,nnunet}``) builds a :class:`DataTask`;
:mod:`mambaseg.data.layouts` holds the table of layouts that maps a path to its opener.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from torch.utils.data import Dataset

if TYPE_CHECKING:
    from mambaseg.configs import RunConfig

__all__ = [
    "DataTask",
    "DataTaskError",
    "EVALUATIONS",
    "binary_label_map",
    "image_size_of",
    "open_splits",
    "volume_label_map",
]

EVALUATIONS = ("pixels2d", "volume_slicewise")


class DataTaskError(ValueError):
    """The data path cannot be opened as any known layout (or the chosen layout rejects it)."""


@dataclass
class DataTask:
    """Everything training and evaluation need from a dataset.

    Unpacks as ``train_ds, val_ds, evaluator, label_map = task``.

    Attributes:
        name: layout name.
        datasets: split name -> dataset (only the splits asked for).
        evaluation: the evaluation protocol (one of :data:`EVALUATIONS`).
        label_map: class name -> mask pixel value, in class-index order (written predictions use these values).
        num_classes: model output channels (1 for binary tasks).
        in_chans: image channels.
        normalization: input normalisation (``mambaseg.data.Normalization``) or ``None``.
        info: facts to record in logs/checkpoints (split file, counts, skipped files, ...).
        evaluator: the evaluator object, attached by the engine's ``open_data`` (``None`` at this tier).
    """

    name: str
    datasets: dict[str, Dataset]
    label_map: dict[str, int]
    num_classes: int
    in_chans: int
    evaluation: str = "pixels2d"
    normalization: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    evaluator: Any = None

    def __post_init__(self) -> None:
        if self.evaluation not in EVALUATIONS:
            raise DataTaskError(f"layout {self.name!r}: unknown evaluation {self.evaluation!r}; valid: {EVALUATIONS}")

    @property
    def train(self) -> Dataset | None:
        return self.datasets.get("train")

    @property
    def val(self) -> Dataset | None:
        return self.datasets.get("val")

    @property
    def label_names(self) -> dict[int, str]:
        """``{class index: name}`` of the foreground classes."""
        return {i: n for i, n in enumerate(self.label_map) if i != 0}

    def __iter__(self) -> Iterator[Any]:
        yield self.train
        yield self.val
        yield self.evaluator
        yield self.label_map


def binary_label_map() -> dict[str, int]:
    """Label map of binary tasks: background written as 0, foreground as 255."""
    return {"background": 0, "foreground": 255}


def volume_label_map(label_names: Mapping[int, str]) -> dict[str, int]:
    """Label map of a volumetric task from its foreground ``{value: name}``."""
    return {"background": 0, **{str(v): int(k) for k, v in sorted(label_names.items())}}


def image_size_of(cfg: RunConfig) -> tuple[int, int]:
    """``data.image_size`` as an (H, W) tuple of ints."""
    s = cfg.data.image_size
    return (int(s[0]), int(s[-1]))


def open_splits(make: Callable[[str, bool, Any], Any], splits: tuple[str, ...], normalization: Any,
                augment: bool) -> tuple[Any, dict[str, Any]]:
    """Build every split with ``make(split, augment, normalization)``; the normalisation, when not given, is
    computed on the un-augmented training split (only the training split is augmented)."""
    from mambaseg.data.normalization import compute_normalization

    if normalization is None:
        if "train" not in splits:
            raise DataTaskError("the input normalisation must be given when the training split is not opened")
        normalization = compute_normalization(make("train", False, None))
    return normalization, {s: make(s, augment and s == "train", normalization) for s in splits}
