"""Run configuration: typed dataclasses (:mod:`mambaseg.configs.schema`) and the YAML recipes shipped with the package.

A recipe is a YAML file under ``mambaseg/configs/recipes/`` holding the fields of a :class:`RunConfig` that differ
from the defaults (for instance ``vmunet_isic17.yaml`` = the VM-UNet ISIC recipe). Load one with
:func:`load_recipe`, a file of your own with :func:`load_config`, and override single fields with
:func:`apply_overrides`.

Example:
    >>> from mambaseg.configs import load_recipe, apply_overrides
    >>> cfg = apply_overrides(load_recipe("vmunet_isic17"), ["train.epochs=10"])
    >>> cfg.optim.lr
    0.001
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mambaseg.configs.schema import (
    ConfigError,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_yaml,
    merge_dict,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "dump_yaml",
    "list_recipes",
    "load_config",
    "load_recipe",
    "merge_dict",
    "recipe_path",
    "save_config",
]


def _recipe_dir():
    return resources.files("mambaseg.configs").joinpath("recipes")


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package (file names without ``.yaml``)."""
    return sorted(p.name[: -len(".yaml")] for p in _recipe_dir().iterdir() if p.name.endswith(".yaml"))


def recipe_path(name: str) -> Path:
    """Path of a shipped recipe; raises :class:`ConfigError` listing the valid names if unknown."""
    p = _recipe_dir().joinpath(f"{name}.yaml")
    if not p.is_file():
        raise ConfigError(f"unknown recipe {name!r}; shipped recipes: {', '.join(list_recipes())}")
    return Path(str(p))


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _resolve(data: dict[str, Any], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Apply ``base: <recipe name>`` inheritance (the file's fields override its base's)."""
    base = data.pop("base", None)
    if base is None:
        return data
    if base in seen:
        raise ConfigError(f"recipe inheritance cycle: {' -> '.join(seen + (base,))}")
    parent = _resolve(_read_yaml(recipe_path(base)), seen + (base,))
    return merge_dict(parent, data)


def load_recipe(name: str) -> RunConfig:
    """Load a shipped recipe by name (see :func:`list_recipes`).

    Raises:
        ConfigError: unknown name or invalid content.
    """
    try:
        return config_from_dict(_resolve(_read_yaml(recipe_path(name)), (name,)))
    except ConfigError as e:
        raise ConfigError(f"recipe {name!r}: {e}") from e


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Load a YAML config file (a full resolved ``config.yaml`` or a partial recipe, optionally with ``base:``)."""
    try:
        return config_from_dict(_resolve(_read_yaml(path)))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def save_config(cfg: RunConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML (atomically) and return its path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(dump_yaml(cfg))
    os.replace(tmp, p)
    return p
