"""Small helpers shared by the engine, inference and CLI: seeding, distributed context, atomic file writes, signals.

The names below load their submodule when first used (PEP 562), so a torch-free helper (``utils.files``,
``utils.signals``) can be imported, by the CLI at start-up for one, without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULE = {
    "DistContext": "distributed",
    "all_gather_objects": "distributed",
    "all_reduce_sum": "distributed",
    "init_distributed": "distributed",
    "atomic_path": "files",
    "atomic_write_json": "files",
    "json_safe": "files",
    "get_rng_state": "seed",
    "seed_everything": "seed",
    "seed_worker": "seed",
    "set_rng_state": "seed",
}

__all__ = sorted(_SUBMODULE)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULE:
        return getattr(importlib.import_module(f"mambaseg.utils.{_SUBMODULE[name]}"), name)
    raise AttributeError(f"module 'mambaseg.utils' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULE))
