"""mambaseg: Mamba (state-space) medical image segmentation models under one roof.

Example:
    >>> import mambaseg
    >>> model = mambaseg.create_model("vmunet_tiny", num_classes=1)
"""

from __future__ import annotations

from mambaseg.models import create_model, list_models, model_info
from mambaseg.version import __version__

__all__ = ["__version__", "create_model", "list_models", "model_info"]
