"""Loss registry: ``register_loss`` decorator, ``create_loss`` factory, ``list_losses``.

A registered loss is a class or factory ``fn(**kwargs) -> nn.Module`` whose module is called as
``loss(logits (B, C, *spatial), target (B, *spatial) int64) -> scalar tensor``. Losses always take
logits (never probabilities). Other modules register their own losses with ``@register_loss("name")``;
the file must be imported by ``mambaseg/losses/__init__.py`` so the name exists once the package is
imported (Python runs that ``__init__`` before any of its submodules, this one included, is imported).

Example:
    >>> import mambaseg.losses as L
    >>> loss = L.create_loss("bce_dice", bce_weight=1.0, dice_weight=1.0)
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch.nn as nn

__all__ = ["register_loss", "create_loss", "list_losses", "loss_description", "resolve_loss_name"]

F = TypeVar("F", bound=Callable[..., nn.Module])

_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str | None = None) -> Callable[[F], F]:
    """Register a loss class or factory under ``name`` (default: its ``__name__``); a name may be
    registered only once."""

    if callable(name):  # used bare as @register_loss
        raise TypeError("use @register_loss('name') or @register_loss() with parentheses")

    def deco(fn: F) -> F:
        key = name or fn.__name__
        if key in _LOSSES and _LOSSES[key] is not fn:
            raise ValueError(f"loss {key!r} is registered twice")
        _LOSSES[key] = fn
        return fn

    return deco


def list_losses(pattern: str | None = None) -> list[str]:
    """Sorted registered loss names, optionally filtered by a shell-style ``pattern``."""
    names = sorted(_LOSSES)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def loss_description(name: str) -> str:
    """First line of the registered loss's docstring."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(_LOSSES))}")
    return (inspect.getdoc(_LOSSES[name]) or "").split("\n")[0]


def resolve_loss_name(name: str, num_classes: int) -> str:
    """``auto`` -> ``bce_dice`` for one output channel, ``ce_dice`` for several; any other name unchanged."""
    if name != "auto":
        return name
    return "bce_dice" if int(num_classes) == 1 else "ce_dice"


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered loss.

    Args:
        name: registered name (see :func:`list_losses`).
        **kwargs: forwarded to the loss's constructor.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or an unknown keyword argument.
    """
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(_LOSSES))}")
    fn = _LOSSES[name]
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without signature: let the call report errors
        sig = None
    if sig is not None and not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        bad = sorted(set(kwargs) - set(sig.parameters))
        if bad:
            valid = ", ".join(k for k in sig.parameters if k != "self")
            raise ValueError(f"loss {name!r} got unknown argument(s) {bad}; valid: {valid}")
    return fn(**kwargs)
