"""Tier 3: full segmentation networks, one file per paper, each ending in registered entrypoints."""

from __future__ import annotations

from mambaseg.models._registry import ModelInfo, create_model, is_model, list_models, model_info, register_model

# Each import registers that file's entrypoints.
from mambaseg.models import vmunet  # noqa: E402,F401
from mambaseg.models import slicemamba  # noqa: E402,F401
from mambaseg.models import vmbunet  # noqa: E402,F401
from mambaseg.models import dermomamba  # noqa: E402,F401
from mambaseg.models import msvmunet  # noqa: E402,F401
from mambaseg.models import heteromedseg  # noqa: E402,F401

__all__ = ["ModelInfo", "create_model", "is_model", "list_models", "model_info", "register_model"]
