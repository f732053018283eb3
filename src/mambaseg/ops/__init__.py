"""Tier 1: functional kernels (no nn.Module): selective scan backends and scan orders."""

from __future__ import annotations

from mambaseg.ops.backend import (
    BACKENDS,
    ENV_VAR,
    BackendUnavailableError,
    available_backends,
    explain_backend,
    get_backend,
    resolve_backend,
    use_backend,
)
from mambaseg.ops.cross_scan import RasterScan, cross_merge, cross_scan
from mambaseg.ops.selective_scan import selective_scan
from mambaseg.ops.selective_scan_ref import selective_scan_ref
from mambaseg.ops.selective_scan_torch import selective_scan_torch
from mambaseg.ops.slice_scan import SLICE_CHOICES, SliceScan, slice_merge, slice_scan, slice_scan_indices

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "BackendUnavailableError",
    "RasterScan",
    "SLICE_CHOICES",
    "SliceScan",
    "available_backends",
    "cross_merge",
    "cross_scan",
    "explain_backend",
    "get_backend",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_torch",
    "slice_merge",
    "slice_scan",
    "slice_scan_indices",
    "use_backend",
]
