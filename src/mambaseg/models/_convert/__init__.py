"""Converters from published checkpoint formats to mambaseg models.

A converter maps the ``state_dict`` of an official file (an ImageNet encoder or a paper's trained network) to the key
names of one of our registered models and says how to build that model::

    @register_converter("vmunet_official", description="...", source="github.com/... @ <commit>")
    def convert(state_dict: dict[str, torch.Tensor], **options) -> Converted: ...

``Converted.expected_missing`` lists the key prefixes of our model that the source does not have by design (e.g. the
decoder when the source is an ImageNet classifier); loading with ``partial=True`` accepts exactly those gaps. Reading
the file, choosing a converter and loading with a report live in :mod:`mambaseg.models._pretrained`.

Converter families are imported from the one explicit table ``_FAMILIES`` below (no import side effects elsewhere).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Converted", "ConverterInfo", "register_converter", "get_converter", "list_converters", "converter_info"]


@dataclass
class Converted:
    """The result of a converter: which model to build, with which weights.

    Attributes:
        model_name: our registry name, e.g. ``"vmunet"``.
        model_kwargs: constructor kwargs for ``create_model`` (``num_classes``, ``in_chans``, ``variant=...``, ...).
        state_dict: the weights under OUR key names.
        expected_missing: key prefixes of our model that the source does not have by design (they keep their
            initialisation); only these are accepted as missing by a partial load.
        notes: human-readable remarks printed in the load report (what was dropped, mirrored, renamed, and why).
        dropped: source keys deliberately not converted (e.g. an ImageNet classifier head), shown in the report.
    """

    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    expected_missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConverterInfo:
    """Metadata of a registered converter: its ``--from`` name, what it converts, and where the source is published."""

    name: str
    description: str
    source: str


ConverterFn = Callable[..., Converted]

# family modules, imported on first use; one line per family (each module registers its converters on import)
_FAMILIES: tuple[str, ...] = (
    "mambaseg.models._convert.vmamba_v0",
    "mambaseg.models._convert.msvmunet",
    "mambaseg.models._convert.dermomamba",
    "mambaseg.models._convert.heteromedseg",
)

_REGISTRY: dict[str, tuple[ConverterInfo, ConverterFn]] = {}
_loaded = False


def register_converter(name: str, *, description: str, source: str) -> Callable[[ConverterFn], ConverterFn]:
    """Decorator registering ``fn(state_dict, **options) -> Converted`` under ``name`` (the ``--from`` value)."""

    def deco(fn: ConverterFn) -> ConverterFn:
        if name in _REGISTRY:
            raise ValueError(f"checkpoint converter {name!r} is registered twice")
        _REGISTRY[name] = (ConverterInfo(name=name, description=description, source=source), fn)
        return fn

    return deco


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _FAMILIES:
        importlib.import_module(module)


def list_converters() -> list[ConverterInfo]:
    """Every registered converter, sorted by name."""
    _ensure_loaded()
    return [_REGISTRY[n][0] for n in sorted(_REGISTRY)]


def converter_info(name: str) -> ConverterInfo:
    """Metadata of one converter (``ValueError`` listing the valid names if unknown)."""
    return _lookup(name)[0]


def get_converter(name: str) -> ConverterFn:
    """The conversion function registered as ``name``; raises ``ValueError`` listing the valid names if unknown."""
    return _lookup(name)[1]


def _lookup(name: str) -> tuple[ConverterInfo, ConverterFn]:
    _ensure_loaded()
    if name not in _REGISTRY:
        valid = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown checkpoint format {name!r}; valid formats: {valid}")
    return _REGISTRY[name]
