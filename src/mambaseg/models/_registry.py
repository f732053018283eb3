"""Model registry: ``register_model`` decorator, ``create_model`` factory and ``list_models``.

Every model file ends with entrypoints decorated by :func:`register_model`. An entrypoint is a
function ``fn(num_classes=1, in_chans=3, **kwargs) -> nn.Module``. The factory records how the model
was built on ``model.mambaseg_spec`` so checkpoints can rebuild it (name + init kwargs).

The registry is full whenever it can be used: ``mambaseg/models/__init__.py`` imports every model file, and Python
runs a package's ``__init__`` before any of its submodules is imported.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

__all__ = ["ModelInfo", "register_model", "create_model", "list_models", "model_info", "is_model", "check_model_kwargs"]


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of a registered model entrypoint."""

    name: str
    fn: Callable[..., nn.Module]
    paper: str = ""
    description: str = ""
    #: parameters of ``create_model(name)`` with its defaults (1 class, 3 channels), stated at registration so that
    #: listing models builds none (``tests/models/test_registry_params.py`` checks every stated count)
    params: int | None = None


_REGISTRY: dict[str, ModelInfo] = {}

#: why ``pretrained=True`` is refused, and what to pass instead
NO_HOSTED_WEIGHTS = (
    "mambaseg hosts no weights to download, so there is nothing for pretrained=True to fetch. Pass the path of a "
    "weights file instead: a checkpoint written by mambaseg train, a save_pretrained folder, or an official paper / "
    "ImageNet checkpoint converted once with `mambaseg convert --from FORMAT FILE --out OUT.pt` (add --partial for "
    "an ImageNet encoder; in Python mambaseg.convert_checkpoint(FILE, FORMAT, OUT.pt, partial=True); "
    "`mambaseg convert --list` names the formats), then pretrained='OUT.pt'; an official file of a whole trained "
    "network also loads as it is with pretrained=FILE, pretrained_format=FORMAT. pretrained=False or None builds "
    "the model randomly initialised"
)


def register_model(
    fn: Callable[..., nn.Module] | None = None, *, name: str | None = None, paper: str = "", description: str = "",
    params: int | None = None,
):
    """Register a model entrypoint (usable as ``@register_model`` or ``@register_model(paper=..., params=...)``).

    ``params``: the parameter count of the entrypoint with its defaults (1 class, 3 channels), shown by
    ``mambaseg models`` without building the model; ``None`` = counted when listed."""

    def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        desc = description or (inspect.getdoc(f) or "").split("\n")[0]
        _REGISTRY[key] = ModelInfo(name=key, fn=f, paper=paper, description=desc, params=params)
        return f

    if fn is not None:
        return deco(fn)
    return deco


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style ``pattern``."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def is_model(name: str) -> bool:
    return name in _REGISTRY


def model_info(name: str) -> ModelInfo:
    """Metadata of one model; raises ``ValueError`` listing the valid names if unknown."""
    if name not in _REGISTRY:
        valid = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown model {name!r}; valid names: {valid}")
    return _REGISTRY[name]


def _unknown_keyword_error(name: str, kwargs: dict[str, Any], exc: TypeError) -> TypeError | None:
    """A ``TypeError`` naming the model and what it takes when ``exc`` is a refusal of keywords the caller gave
    (``... got an unexpected keyword argument 'foo'``, or a block's own ``... got unexpected options: ['foo']``);
    ``None`` for any other ``TypeError``, which then goes on unchanged."""
    text = str(exc)
    unknown = [k for k in kwargs if "unexpected" in text and repr(k) in text]
    if not unknown:
        return None
    sig = inspect.signature(model_info(name).fn, eval_str=True)
    cls = sig.return_annotation if inspect.isclass(sig.return_annotation) else None
    takes = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if cls is not None:
        takes += list(inspect.signature(cls).parameters.values())
    names = sorted({p.name for p in takes if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
                   - {"num_classes", "in_chans"})
    passes_on = cls is not None and any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values())
    owner = cls.__name__ if cls is not None else name
    return TypeError(
        f"model {name!r} takes no keyword{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} (model.kwargs of "
        f"the config, or --set model.kwargs.KEY=VALUE); {owner} takes: {', '.join(names)}"
        + (f" (and the options of its blocks: help(mambaseg.models.{owner}))" if passes_on else ""))


def check_model_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Raise :func:`create_model`'s ``TypeError`` if model ``name`` does not take ``kwargs``: for checks before any
    work is written (it builds the model once and drops it)."""
    create_model(name, **kwargs)


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    *,
    pretrained: str | os.PathLike[str] | bool | None = None,
    pretrained_format: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally initialised from pretrained weights.

    Args:
        name: a name from :func:`list_models`.
        num_classes: output channels (1 = binary with a sigmoid applied by losses/metrics, never by the model).
            Default: the pretrained checkpoint's, else 1. Another value than the checkpoint's re-initialises the
            classifier only.
        in_chans: input image channels. Default: the checkpoint's, else 3. Another value than the checkpoint's adapts
            the stem convolution (summed for 1 channel, as timm does).
        pretrained: a checkpoint written by mambaseg (``mambaseg convert``, ``mambaseg train``), a
            :func:`save_pretrained` folder, or an official file together with ``pretrained_format``. The
            architecture options stored in a mambaseg checkpoint (``depths``, ``arch``, ``variant``, ...) are used
            unless given here. The load is strict except for the gaps a converted checkpoint documents; the
            report is kept on ``model.pretrained_report``. ``None`` or ``False`` (timm's spelling): random
            initialisation. ``True`` is refused (``PretrainedError``, a ``ValueError``): no weights are hosted for
            download; the message says which file to pass instead.
        pretrained_format: converter name for an official file (see ``mambaseg convert --help``).
        **kwargs: model-specific options. ``image_size`` (H, W) (the library's name for the input size, as in
            ``data.image_size``) is mapped to the paper's ``img_size`` of models built for a fixed input size and
            dropped for size-agnostic ones, so generic code may always pass it. Other unknown options raise
            ``TypeError`` naming the model and the options it takes.

    Returns:
        The model (``nn.Module``) whose ``forward`` returns logits of shape (B, num_classes, H, W).

    Example:
        >>> m = create_model("vmunet_tiny", num_classes=1)
        >>> m = create_model("vmunet", num_classes=3, pretrained="vmunet_from_vmamba_small.pt")  # doctest: +SKIP
    """
    info = model_info(name)
    if pretrained is False:  # timm's pretrained=False: no weights
        pretrained = None
    elif pretrained is True:
        from mambaseg.models._pretrained import PretrainedError

        raise PretrainedError(f"create_model({name!r}, pretrained=True): {NO_HOSTED_WEIGHTS}")
    wf = None
    if pretrained is not None and pretrained_format is None:
        from mambaseg.models._pretrained import read_weights

        wf = read_weights(pretrained)
        if wf.model:
            stored = dict(wf.model.get("kwargs") or {})
            stored.pop("backend", None)  # older checkpoints recorded the scan backend; it is a runtime choice now
            kwargs = {**stored, **kwargs}
            num_classes = int(wf.model.get("num_classes", 1)) if num_classes is None else num_classes
            in_chans = int(wf.model.get("in_chans", 3)) if in_chans is None else in_chans
    num_classes = 1 if num_classes is None else num_classes
    in_chans = 3 if in_chans is None else in_chans
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
    if "backend" in kwargs:
        raise TypeError(
            "create_model() takes no 'backend': the scan backend is a runtime choice applied around the model "
            "(with mambaseg.ops.use_backend(name): ..., the MAMBASEG_SCAN_BACKEND variable, or train.scan_backend)"
        )
    sig = inspect.signature(info.fn)
    if "image_size" in kwargs:
        size = kwargs.pop("image_size")
        if "img_size" in sig.parameters:  # the paper's name of the input size, kept by the models that take one
            kwargs.setdefault("img_size", tuple(size) if isinstance(size, (list, tuple)) else size)
    if "img_size" in kwargs and "img_size" not in sig.parameters:
        # size-agnostic models (any H, W divisible by their stride) take no size: it carries no information here
        kwargs.pop("img_size")
    try:
        model = info.fn(num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as e:
        error = _unknown_keyword_error(name, kwargs, e)
        if error is None:
            raise
        raise error from e
    model.mambaseg_spec = {"name": name, "num_classes": num_classes, "in_chans": in_chans, "kwargs": dict(kwargs)}
    if pretrained is not None:
        from mambaseg.models._pretrained import load_pretrained

        model.pretrained_report = load_pretrained(model, wf if wf is not None else pretrained,
                                                  fmt=pretrained_format)
    return model
