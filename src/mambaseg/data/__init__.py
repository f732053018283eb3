"""mambaseg.data: every dataset layout (table in :mod:`mambaseg.data.layouts`), caches, splits, validation,
transforms, normalisation, synthetic data.

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
from mambaseg.data.volumetric import SliceDataset2D, Volume, VolumeDataset, paper_normalization
from mambaseg.data.acdc import ACDC_LABELS, acdc_slices, acdc_volumes
from mambaseg.data.synapse import SYNAPSE_LABELS, synapse_slices, synapse_volumes
from mambaseg.data.nnunet import NnUNetRaw, nnunet_slices, nnunet_volumes, read_nifti, write_nifti
from mambaseg.data.task import DataTask, DataTaskError
from mambaseg.data.layouts import detect_layout, list_layouts, open_task, register_layout, write_cache

__all__ = [
    "ACDC_LABELS",
    "DataTask",
    "DataTaskError",
    "detect_layout",
    "list_layouts",
    "open_task",
    "register_layout",
    "write_cache",
    "NnUNetRaw",
    "SYNAPSE_LABELS",
    "SliceDataset2D",
    "Volume",
    "VolumeDataset",
    "acdc_slices",
    "acdc_volumes",
    "nnunet_slices",
    "nnunet_volumes",
    "paper_normalization",
    "read_nifti",
    "synapse_slices",
    "synapse_volumes",
    "write_nifti",
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
