"""mambaseg.data: folder datasets, splits, validation, transforms, normalisation, synthetic data.

Example:
    >>> from mambaseg.data import FolderDataset2D, resolve_splits, validate_dataset
    >>> validate_dataset("data/ph2_dev")                                   # doctest: +SKIP
    >>> ds = FolderDataset2D("data/ph2_dev", "train", image_size=(256, 256), augment=True,
    ...                      normalization=None)                          # doctest: +SKIP
"""

from __future__ import annotations

from mambaseg.data.files import DatasetError, list_split, read_image, read_mask
from mambaseg.data.folder2d import FolderDataset2D
from mambaseg.data.normalization import Normalization, compute_normalization
from mambaseg.data.splits import Splits, resolve_splits
from mambaseg.data.synthetic import make_synthetic_dataset
from mambaseg.data.transforms import build_transforms, vmunet_isic_transforms
from mambaseg.data.validation import Problem, ValidationReport, validate_dataset

__all__ = [
    "DatasetError",
    "FolderDataset2D",
    "Normalization",
    "Problem",
    "Splits",
    "ValidationReport",
    "build_transforms",
    "compute_normalization",
    "list_split",
    "make_synthetic_dataset",
    "read_image",
    "read_mask",
    "resolve_splits",
    "validate_dataset",
    "vmunet_isic_transforms",
]
