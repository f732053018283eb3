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

from mambaseg.models._hub import from_pretrained, save_pretrained  # noqa: E402
from mambaseg.models._pretrained import LoadReport, PretrainedError, init_from, load_pretrained  # noqa: E402

__all__ = [
    "LoadReport",
    "ModelInfo",
    "PretrainedError",
    "create_model",
    "from_pretrained",
    "init_from",
    "is_model",
    "list_models",
    "load_pretrained",
    "model_info",
    "register_model",
    "save_pretrained",
]
