"""Neural architecture search for SliceMamba: SPOS supernet, path sampler, evolutionary search and runner."""

from __future__ import annotations

from mambaseg.nas.evolution import EvolutionConfig, EvolutionSearch, SearchResult
from mambaseg.nas.runner import SearchSettings, carve_search_split, run_search
from mambaseg.nas.sampler import UniformPathSampler
from mambaseg.nas.supernet import SliceMambaSupernet

__all__ = [
    "EvolutionConfig",
    "EvolutionSearch",
    "SearchResult",
    "SearchSettings",
    "SliceMambaSupernet",
    "UniformPathSampler",
    "carve_search_split",
    "run_search",
]
