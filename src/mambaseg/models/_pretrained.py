"""Pretrained weights: read a weights file safely, convert it, and load it into a model with a report.

The pieces, used by ``create_model(name, pretrained=...)``, ``mambaseg convert`` and ``mambaseg train --init-from``:

* :func:`read_weights` reads ``.safetensors``, our self-describing checkpoints (``.pt`` / ``.safetensors`` with metadata
  / a :func:`~mambaseg.models.save_pretrained` folder) and official ``.pth`` files. Torch files are read with
  ``torch.load(weights_only=True)``; files that also pickle other objects (VMamba's checkpoints carry a yacs config)
  are read by an unpickler that only rebuilds tensors and plain containers and replaces every other object with an
  inert placeholder, so no code from the file ever runs.
* :func:`mambaseg.convert.convert_weights` (a tier above: it builds the model) applies a registered converter
  (:mod:`mambaseg.models._convert`) to a file and loads the result with :func:`load_weights`.
* :func:`load_weights` loads a state dict into a model and returns a :class:`LoadReport` of loaded / missing /
  unexpected / reshaped / re-initialised keys. Strict by default; ``partial=True`` accepts only the gaps the converter
  documents (``expected_missing``). A different ``num_classes`` re-initialises the classifier only; a different
  ``in_chans`` adapts the stem convolution (sum / mean / repeat, as timm's ``adapt_input_conv``), each with a note.
* :func:`init_from` is the fine-tuning entry (``strict=False``: every gap is reported, none is fatal).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from mambaseg.utils.modules import unwrap_model

__all__ = [
    "WeightsFile",
    "LoadReport",
    "PretrainedError",
    "read_weights",
    "adapt_input_conv",
    "load_weights",
    "load_pretrained",
    "run_converter",
    "init_from",
    "stem_and_head",
]

OUR_FORMAT = "mambaseg-checkpoint"  # the ``format`` entry of our self-describing checkpoints
PRETRAINED_FORMAT = "mambaseg-pretrained"  # the ``format`` entry of a save_pretrained folder's config.json
_SAFETENSORS_META_KEY = "mambaseg"
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
STEM_MODES = ("auto", "sum", "mean", "repeat")


class PretrainedError(ValueError):
    """Weights cannot be read, converted or loaded as asked; the message names the file and what was expected."""


@dataclass
class WeightsFile:
    """Tensors read from one file.

    Attributes:
        path: the file (or folder) read.
        state_dict: the tensors, already unwrapped from their container.
        container: where the tensors were found (``"state_dict"``, ``"model"``, ... or ``""`` for a bare mapping).
        model: for our own formats, ``{"name", "num_classes", "in_chans", "kwargs"}``; else ``None``.
        meta: other metadata of our formats (``pretrained`` info, label map, ...); empty for official files.
        placeholders: qualified names of non-tensor objects the safe reader replaced (e.g. a yacs config).
        other_keys: top-level entries of the container that were not used (optimizer, epoch, ...).
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    container: str = ""
    model: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    placeholders: list[str] = field(default_factory=list)
    other_keys: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------------
# reading


class _Placeholder(dict):
    """Inert stand-in for any pickled object that is not a tensor or a plain container (never runs its code)."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Placeholder":
        return self


def _placeholder_for(qualname: str) -> type:
    """An inert class standing in for the pickled global ``qualname`` (module and name as the file spells them)."""
    module, _, name = qualname.rpartition(".")
    return type(name, (_Placeholder,), {"qualname": qualname, "__module__": module, "__qualname__": name})


_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _torch_load(path: Path) -> tuple[Any, list[str]]:
    """``torch.load(weights_only=True)``, always. A file that also pickles other objects (VMamba's checkpoints carry a
    yacs config) names each one in the loader's refusal; an inert placeholder class is allowed under that name and the
    file read again, so no code of the file ever runs and the tensors next to those objects are still found."""
    found: list[str] = []
    for _ in range(64):  # a few distinct foreign globals at most in real files
        try:
            with torch.serialization.safe_globals([_placeholder_for(q) for q in found]):
                return torch.load(path, map_location="cpu", weights_only=True), sorted(found)
        except pickle.UnpicklingError as e:
            m = _UNSUPPORTED.search(str(e))
            if m is None or m.group(1) in found:
                raise PretrainedError(f"cannot read weights file {str(path)!r} with torch.load(weights_only=True): "
                                      f"{_first_line(e)}") from e
            found.append(m.group(1))
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/EOFError/... for unreadable files
            raise PretrainedError(f"cannot read weights file {str(path)!r} as a torch file: {_first_line(e)}") from e
    raise PretrainedError(f"{str(path)!r} pickles more than 64 kinds of non-tensor objects; not a weights file")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, path: Path, key: str | None) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            have = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise PretrainedError(f"{str(path)!r} has no entry {key!r} (top-level entries: {have})")
        inner = obj[key]
        if not _is_tensor_mapping(inner):
            raise PretrainedError(f"entry {key!r} of {str(path)!r} is not a mapping of tensors")
        return dict(inner), key, [k for k in obj if k != key]
    if _is_tensor_mapping(obj):
        return dict(obj), "", []
    if isinstance(obj, Mapping):
        for k in _CONTAINER_KEYS:
            if k in obj and _is_tensor_mapping(obj[k]):
                return dict(obj[k]), k, [o for o in obj if o != k]
        have = ", ".join(f"{k!r}" for k in list(obj)[:8])
        raise PretrainedError(f"no tensor mapping found in {str(path)!r}: looked at the file itself and the entries "
                              f"{list(_CONTAINER_KEYS)}; its top-level entries are {have}")
    raise PretrainedError(f"{str(path)!r} holds a {type(obj).__name__}, expected a mapping of tensors")


def read_weights(path: str | os.PathLike[str], key: str | None = None) -> WeightsFile:
    """Read the tensors of a weights file or a :func:`save_pretrained` folder.

    Args:
        path: ``.safetensors``, a torch file (``.pt``/``.pth``/``.ckpt``/``.bin``), or a folder with ``config.json`` +
            ``model.safetensors``.
        key: the container entry holding the tensors (e.g. ``"model_ema"``); default: the file itself if it is a
            mapping of tensors, else the first of ``state_dict``, ``model_state_dict``, ``model``, ``module``,
            ``net``, ``network`` that is one.

    Raises:
        PretrainedError: the path does not exist, cannot be read, or holds no tensors.
    """
    p = Path(path)
    if p.is_dir():
        return _read_pretrained_dir(p)
    if not p.is_file():
        raise PretrainedError(f"weights file {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        return _read_safetensors(p)
    obj, placeholders = _torch_load(p)
    if isinstance(obj, Mapping) and obj.get("format") == OUR_FORMAT:
        sd = obj.get("state_dict")
        if not _is_tensor_mapping(sd):
            raise PretrainedError(f"{str(p)!r} is a mambaseg checkpoint without weights ('state_dict')")
        meta = {k: v for k, v in obj.items() if k not in ("state_dict", "optimizer", "scheduler", "scaler", "rng")}
        return WeightsFile(p, dict(sd), "state_dict", dict(obj.get("model") or {}) or None, meta, placeholders)
    sd, container, other = _unwrap(obj, p, key)
    return WeightsFile(p, sd, container, None, {}, placeholders, [str(o) for o in other])


def _read_safetensors(p: Path) -> WeightsFile:
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise PretrainedError(f"cannot read safetensors file {str(p)!r}: {_first_line(e)}") from e
    if not sd:
        raise PretrainedError(f"safetensors file {str(p)!r} holds no tensors")
    info = json.loads(meta[_SAFETENSORS_META_KEY]) if _SAFETENSORS_META_KEY in meta else {}
    model = info.get("model") if isinstance(info, dict) else None
    if model is None and (p.parent / "config.json").is_file():
        return _read_pretrained_dir(p.parent)
    return WeightsFile(p, sd, "", dict(model) if model else None, info if isinstance(info, dict) else {})


def _read_pretrained_dir(d: Path) -> WeightsFile:
    cfg_path, weights = d / "config.json", d / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise PretrainedError(f"{str(d)!r} is not a pretrained folder: expected config.json and model.safetensors")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{str(cfg_path)!r} is not valid JSON: {e}") from e
    if cfg.get("format") != PRETRAINED_FORMAT or "model_name" not in cfg:
        raise PretrainedError(f"{str(cfg_path)!r} is not a mambaseg config (needs format {PRETRAINED_FORMAT!r} and "
                              "model_name)")
    from safetensors.torch import load_file

    sd = load_file(str(weights), device="cpu")
    model = {"name": cfg["model_name"], "num_classes": int(cfg.get("num_classes", 1)),
             "in_chans": int(cfg.get("in_chans", 3)), "kwargs": dict(cfg.get("model_kwargs") or {})}
    return WeightsFile(d, sd, "", model, cfg)


# ---------------------------------------------------------------------------------------------------------------------
# adapting the stem and the head


def adapt_input_conv(weight: torch.Tensor, in_chans: int, mode: str = "auto") -> tuple[torch.Tensor, str]:
    """Adapt a stem convolution weight (O, I, kh, kw) to ``in_chans`` input channels.

    Modes:
        ``auto``: timm's rule: 1 channel -> ``sum`` (a grey image then gives exactly the response of the same grey
        image repeated on every source channel, which is what the official VMamba-family wrappers feed), otherwise
        ``repeat``.
        ``sum``: every new channel gets sum over source channels / in_chans (responses to a grey image replicated on
        the new channels are unchanged).
        ``mean``: every new channel gets the mean over the source channels.
        ``repeat``: cycle the source channels and scale by I / in_chans (timm for in_chans != 1).

    Returns:
        (adapted weight, how it was done, for the report).
    """
    if mode not in STEM_MODES:
        raise PretrainedError(f"stem adaptation must be one of {STEM_MODES}, got {mode!r}")
    src = weight.shape[1]
    w = weight.float()
    if mode == "auto":
        mode = "sum" if in_chans == 1 else "repeat"
    if mode == "sum":
        out = w.sum(1, keepdim=True).repeat(1, in_chans, 1, 1) / in_chans
        how = f"summed over {src} input channels" + (f", / {in_chans}" if in_chans > 1 else "")
    elif mode == "mean":
        out = w.mean(1, keepdim=True).repeat(1, in_chans, 1, 1)
        how = f"averaged over {src} input channels"
    else:
        reps = math.ceil(in_chans / src)
        out = w.repeat(1, reps, 1, 1)[:, :in_chans] * (src / in_chans)
        how = f"{src} input channels repeated to {in_chans}, scaled by {src}/{in_chans}"
    return out.to(weight.dtype), how


def stem_and_head(model: nn.Module) -> tuple[str | None, str | None]:
    """Module paths of the stem convolution and the classifier.

    Uses the model's ``first_conv`` / ``classifier`` attributes when set, else the module of the first 4-D weight and
    of the last weight with >= 2 dims in the state dict (registration order).
    """
    stem = getattr(model, "first_conv", None)
    head = getattr(model, "classifier", None)
    if isinstance(stem, str) and isinstance(head, str):
        return stem, head
    keys = [(k, v) for k, v in model.state_dict().items() if k.endswith(".weight")]
    if not isinstance(stem, str):
        stem = next((k[: -len(".weight")] for k, v in keys if v.dim() == 4), None)
    if not isinstance(head, str):
        head = next((k[: -len(".weight")] for k, v in reversed(keys) if v.dim() >= 2), None)
    return stem, head


# ---------------------------------------------------------------------------------------------------------------------
# loading with a report


@dataclass
class LoadReport:
    """What happened when weights were loaded into a model.

    Attributes:
        loaded: keys copied as they are.
        reshaped: ``{key: "from (...) to (...): how"}`` for adapted tensors (stem channels, same-size views).
        reinitialized: keys of the model that kept their fresh initialisation because the source differs by design
            (a classifier for another number of classes).
        missing: model keys the source did not provide (keeping their initialisation).
        expected_missing: the documented gaps (prefixes) of the source; ``missing`` keys under them are accepted.
        unexpected: source keys the model has no place for.
        mismatched: ``{key: "source (...) vs model (...)"}`` that could not be adapted (not loaded).
        dropped: source keys the converter left out on purpose (e.g. an ImageNet classifier).
        notes: remarks (converter notes, adaptations).
        source, fmt: the file and the format it was read as.
    """

    loaded: list[str] = field(default_factory=list)
    reshaped: dict[str, str] = field(default_factory=dict)
    reinitialized: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    expected_missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""
    fmt: str = ""

    @property
    def undocumented_missing(self) -> list[str]:
        """Missing keys not covered by ``expected_missing``."""
        return [k for k in self.missing if not any(k.startswith(p) or k == p for p in self.expected_missing)]

    def problems(self, partial: bool) -> list[str]:
        """Why a strict (or, with ``partial``, a documented-gaps-only) load would fail; empty if it would not."""
        out = []
        missing = self.undocumented_missing if partial else self.missing
        if missing:
            out.append(f"{len(missing)} missing keys ({_preview(missing)})")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} unexpected keys ({_preview(self.unexpected)})")
        if self.mismatched:
            out.append(f"{len(self.mismatched)} keys with other shapes ({_preview(list(self.mismatched))})")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("source", "fmt", "loaded", "reshaped", "reinitialized", "missing",
                                              "expected_missing", "unexpected", "mismatched", "dropped", "notes")}

    def summary(self) -> str:
        """Multi-line human-readable report."""
        lines = [f"weights: {self.source}" + (f" (format {self.fmt})" if self.fmt else "")]
        lines.append(f"  loaded      {len(self.loaded)}")
        lines.append(f"  reshaped    {len(self.reshaped)}")
        for k, v in self.reshaped.items():
            lines.append(f"    {k}: {v}")
        lines.append(f"  re-initialised {len(self.reinitialized)}" + (f": {_preview(self.reinitialized)}"
                                                                     if self.reinitialized else ""))
        documented = [k for k in self.missing if k not in self.undocumented_missing]
        lines.append(f"  missing     {len(self.missing)}" + (f" ({len(documented)} documented gaps)" if documented
                                                            else ""))
        for p in self.expected_missing:
            lines.append(f"    documented gap: {p}")
        for k in self.undocumented_missing[:20]:
            lines.append(f"    {k}")
        lines.append(f"  unexpected  {len(self.unexpected)}")
        for k in self.unexpected[:20]:
            lines.append(f"    {k}")
        for k, v in self.mismatched.items():
            lines.append(f"  shape mismatch {k}: {v}")
        if self.dropped:
            lines.append(f"  not used from the source: {_preview(self.dropped, 6)}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)

    __str__ = summary


def _preview(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    partial: bool = False,
    expected_missing: list[str] | None = None,
    stem: str = "auto",
    source: str = "",
    fmt: str = "",
    notes: list[str] | None = None,
    dropped: list[str] | None = None,
    min_loaded: float = 0.0,
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` and report what happened.

    Tensors whose shape matches are copied. The stem convolution is adapted when only its input channels differ
    (:func:`adapt_input_conv`); the classifier keeps its fresh initialisation when its shape differs (another
    ``num_classes``); a tensor with the same number of elements in another layout is reshaped. Anything else that does
    not fit is reported as mismatched.

    Args:
        model: the target network (a ``torch.compile`` / DDP wrapper is unwrapped: its parameters are the model's).
        state_dict: weights under the model's key names.
        strict: raise :class:`PretrainedError` unless every model key is loaded (or adapted/re-initialised by design)
            and every source key is used.
        partial: with ``strict``, accept missing keys under ``expected_missing`` (the documented gaps).
        expected_missing: documented gaps (key prefixes).
        stem: stem adaptation mode (see :func:`adapt_input_conv`).
        source, fmt, notes, dropped: carried into the report.
        min_loaded: the share of the model's weights (elements of its state dict) that must come from the source,
            loaded or adapted; below it :class:`PretrainedError` is raised, also when not ``strict`` (a file of
            another network fills next to nothing: a fine-tuning start from it is a fresh initialisation in
            disguise).

    Returns:
        The :class:`LoadReport`. Nothing is copied into the model when a load fails.
    """
    model = unwrap_model(model)  # a torch.compile / DDP wrapper's state dict has its own key prefix
    report = LoadReport(expected_missing=list(expected_missing or []), notes=list(notes or []),
                        dropped=list(dropped or []), source=source, fmt=fmt)
    target = model.state_dict()
    stem_mod, head_mod = stem_and_head(model)
    new: dict[str, torch.Tensor] = {}
    head_note = False
    for key, value in state_dict.items():
        if key not in target:
            report.unexpected.append(key)
            continue
        want = target[key]
        if tuple(value.shape) == tuple(want.shape):
            new[key] = value
            report.loaded.append(key)
            continue
        module = key.rsplit(".", 1)[0]
        if (module == stem_mod and key.endswith(".weight") and value.dim() == 4 and want.dim() == 4
                and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]):
            adapted, how = adapt_input_conv(value, int(want.shape[1]), stem)
            new[key] = adapted
            report.reshaped[key] = f"{tuple(value.shape)} -> {tuple(want.shape)}: {how}"
            report.notes.append(f"stem {key}: {value.shape[1]} -> {want.shape[1]} input channels ({how})")
        elif module == head_mod and value.dim() >= 1 and value.shape[1:] == want.shape[1:]:
            report.reinitialized.append(key)
            if not head_note:
                report.notes.append(f"classifier {head_mod}: {value.shape[0]} -> {want.shape[0]} classes, "
                                    "re-initialised (every other weight is kept)")
                head_note = True
        elif value.numel() == want.numel():
            new[key] = value.reshape(want.shape)
            report.reshaped[key] = f"{tuple(value.shape)} -> {tuple(want.shape)}: same elements, reshaped"
        else:
            report.mismatched[key] = f"source {tuple(value.shape)} vs model {tuple(want.shape)}"
    # a head bias without a weight in the source keeps its init too; record it beside the weight
    report.missing = [k for k in target if k not in new and k not in report.reinitialized]
    share = sum(target[k].numel() for k in new) / max(1, sum(t.numel() for t in target.values()))
    if share < min_loaded:
        raise PretrainedError(
            f"weights from {source or 'the state dict'} fill only {share:.1%} of {type(model).__name__}'s weights "
            f"({len(new)} of {len(target)} tensors; at least {min_loaded:.0%} needed): they are not weights of this "
            f"network ({len(report.unexpected)} of the file's tensors have no place in it, "
            f"{len(report.mismatched)} have another shape). Check the model name and options, or convert the "
            "file for this model first (mambaseg convert)")
    if strict:
        problems = report.problems(partial)
        if problems:
            hint = ""
            if report.undocumented_missing == [] and report.missing and not partial:
                hint = "; these gaps are documented by the converter: pass partial=True (--partial) to accept them"
            raise PretrainedError(f"weights from {source or 'the state dict'} do not fit {type(model).__name__}: "
                                  + "; ".join(problems) + hint)
    with torch.no_grad():
        for key, value in new.items():
            target[key].copy_(value.to(dtype=target[key].dtype))
    return report


# ---------------------------------------------------------------------------------------------------------------------
# conversion and the user-facing entries


def run_converter(wf: WeightsFile, fmt: str, **options: Any) -> Any:
    """The tensors of ``wf`` through the registered converter ``fmt`` (:mod:`mambaseg.models._convert`): its
    ``Converted`` result (model name and arguments, renamed state dict, documented gaps, notes).

    Raises:
        PretrainedError: the converter refuses the file (the message names the file and the format).
    """
    from mambaseg.models._convert import get_converter

    convert = get_converter(fmt)
    try:
        return convert(wf.state_dict, **options)
    except (ValueError, TypeError, KeyError) as e:
        raise PretrainedError(f"{str(wf.path)!r} cannot be converted as {fmt!r}: {_first_line(e)}") from e


def _model_spec(model: nn.Module) -> dict[str, Any] | None:
    spec = getattr(model, "mambaseg_spec", None)
    return dict(spec) if isinstance(spec, dict) else None


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike[str] | WeightsFile,
    *,
    fmt: str | None = None,
    strict: bool = True,
    partial: bool = False,
    stem: str = "auto",
    key: str | None = None,
    min_loaded: float = 0.0,
    **options: Any,
) -> LoadReport:
    """Load weights into an existing model: our checkpoints / pretrained folders directly, official files through the
    converter ``fmt``.

    A checkpoint written by ``mambaseg convert`` records the gaps it documented; a strict load accepts exactly those.
    Different ``num_classes`` (classifier re-initialised) and ``in_chans`` (stem adapted) are handled in every mode.

    Raises:
        PretrainedError: unreadable file, a model name that does not match, or (strict) weights that do not fit.
    """
    model = unwrap_model(model)  # torch.compile(m) / DDP: load into m (the wrapper shares its parameters)
    wf = source if isinstance(source, WeightsFile) else read_weights(source, key=key)
    spec = _model_spec(model)
    if fmt is not None:
        conv = run_converter(wf, fmt, **options)
        if spec and spec.get("name") != conv.model_name:
            raise PretrainedError(f"format {fmt!r} converts to model {conv.model_name!r}, but the model is "
                                  f"{spec.get('name')!r}")
        return load_weights(model, conv.state_dict, strict=strict, partial=partial,
                            expected_missing=conv.expected_missing, stem=stem, source=str(wf.path), fmt=fmt,
                            notes=conv.notes, dropped=conv.dropped, min_loaded=min_loaded)
    if options:
        raise PretrainedError(f"options {sorted(options)} need a format (fmt=) to apply to")
    if wf.model is None:
        raise PretrainedError(f"{str(wf.path)!r} is not a mambaseg checkpoint or pretrained folder; convert it first "
                              "(mambaseg convert --from FORMAT ...) or pass its format")
    notes = []
    if spec and wf.model.get("name") and spec.get("name") != wf.model.get("name"):
        msg = f"{str(wf.path)!r} holds weights of model {wf.model.get('name')!r}, not {spec.get('name')!r}"
        if strict:
            raise PretrainedError(msg)
        notes.append(msg + "; loaded where names and shapes match")
    pre = wf.meta.get("pretrained") if isinstance(wf.meta.get("pretrained"), dict) else {}
    documented = list(pre.get("expected_missing") or [])
    return load_weights(model, wf.state_dict, strict=strict, partial=partial or bool(documented),
                        expected_missing=documented, stem=stem, source=str(wf.path), fmt="mambaseg",
                        notes=notes + list(pre.get("notes") or []), min_loaded=min_loaded)


def init_from(model: nn.Module, path: str | os.PathLike[str], strict: bool = False, *, stem: str = "auto",
              fmt: str | None = None, min_loaded: float = 0.1, **options: Any) -> LoadReport:
    """Initialise ``model`` for fine-tuning from a checkpoint (``mambaseg train --init-from``).

    ``strict=False``: weights that fit are loaded, a classifier of another ``num_classes`` is re-initialised, a stem of
    another ``in_chans`` adapted, and missing/unexpected keys are reported instead of raised. ``strict=True`` raises on
    any gap except those documented by a converted checkpoint. Either way a file that fills less than ``min_loaded``
    of the model's weights (10 %: an ImageNet encoder fills most of a VM-UNet, a checkpoint of another network next to
    nothing) is refused with :class:`PretrainedError` before anything is copied; ``min_loaded=0`` accepts it.
    A ``torch.compile`` (or DDP) wrapper may be passed: the weights go into the model it wraps.

    Returns:
        The :class:`LoadReport` (print it: ``print(report)``).
    """
    return load_pretrained(model, path, fmt=fmt, strict=strict, partial=True, stem=stem, min_loaded=min_loaded,
                           **options)
