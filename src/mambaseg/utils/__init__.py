"""Small helpers shared by the engine, inference and CLI: seeding, distributed context, atomic file writes."""

from __future__ import annotations

from mambaseg.utils.distributed import DistContext, all_gather_objects, all_reduce_sum, init_distributed
from mambaseg.utils.files import atomic_path, atomic_write_json, json_safe
from mambaseg.utils.seed import get_rng_state, seed_everything, seed_worker, set_rng_state

__all__ = [
    "DistContext",
    "all_gather_objects",
    "all_reduce_sum",
    "atomic_path",
    "atomic_write_json",
    "get_rng_state",
    "init_distributed",
    "json_safe",
    "seed_everything",
    "seed_worker",
    "set_rng_state",
]
