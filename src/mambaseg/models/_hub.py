"""``save_pretrained`` / ``from_pretrained``: a model folder that hub tooling understands, written and read offline.

Layout of the folder::

    config.json         {"format": "mambaseg-pretrained", "model_name", "num_classes", "in_chans", "model_kwargs",
                         "library_version", "pretrained" (source, format, documented gaps), "label_map", ...}
    model.safetensors   the weights (the same JSON in the file's metadata under "mambaseg")
    README.md           a model card: YAML front matter (library_name, tags, datasets, metrics) + training data,
                        metrics, the command that produced the weights and how to load them

Nothing here touches the network; uploading the folder is left to the user's own tooling.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from mambaseg.utils.modules import unwrap_model
from mambaseg.models._pretrained import PRETRAINED_FORMAT, PretrainedError, read_weights

__all__ = ["save_pretrained", "from_pretrained", "model_card"]

_CARD_FIELDS = ("training_data", "metrics", "command", "license", "notes", "base_model", "datasets", "label_map")


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot write a {type(obj).__name__} to config.json")


def model_card(config: Mapping[str, Any], card: Mapping[str, Any]) -> str:
    """The README.md text for a pretrained folder (YAML front matter + sections)."""
    metrics = card.get("metrics") or {}
    datasets = card.get("datasets") or ([card["training_data"]] if isinstance(card.get("training_data"), str) else [])
    front = ["---", "library_name: mambaseg", f"license: {card.get('license', 'apache-2.0')}",
             "tags:", "  - image-segmentation", "  - medical-imaging", "  - mamba", f"  - {config['model_name']}"]
    if card.get("base_model"):
        front.append(f"base_model: {card['base_model']}")
    if datasets:
        front.append("datasets:")
        front += [f"  - {d}" for d in datasets]
    if metrics:
        front.append("metrics:")
        front += [f"  - {k}" for k in metrics]
    front.append("---")
    name = config["model_name"]
    lines = front + ["", f"# {name}", "",
                     f"`{name}` from mambaseg {config.get('library_version', '')}: {config['num_classes']} output "
                     f"channel(s), {config['in_chans']} input channel(s).", ""]
    lines += ["## Training data", "", str(card.get("training_data") or "not stated"), ""]
    lines += ["## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("not stated")
    lines += ["", "## How it was made", "", "```bash", str(card.get("command") or "not stated"), "```", ""]
    pre = config.get("pretrained") or {}
    if pre:
        lines += [f"Initialised from `{pre.get('source', '?')}` (format `{pre.get('format', '?')}`)."]
        if pre.get("expected_missing"):
            lines.append("Not in that source (kept their initialisation): "
                         + ", ".join(f"`{p}`" for p in pre["expected_missing"]) + ".")
        lines.append("")
    if card.get("notes"):
        lines += ["## Notes", "", str(card["notes"]), ""]
    lines += ["## Use", "", "```python", "import mambaseg",
              f"model = mambaseg.from_pretrained(\"{config.get('folder_name', 'PATH')}\")  # logits (B, C, H, W)",
              "```", ""]
    return "\n".join(lines)


def save_pretrained(model: nn.Module, directory: str | os.PathLike[str], card: Mapping[str, Any] | None = None,
                    *, pretrained: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` + ``README.md`` for a model built by ``create_model``.

    Args:
        model: a model from :func:`mambaseg.create_model` (its ``mambaseg_spec`` names how to rebuild it), also
            wrapped by ``torch.compile`` (or DDP): the wrapped model's weights are written, under its own key names.
        directory: the folder (created; existing files of the same names are replaced).
        card: model-card fields: ``training_data`` (str), ``metrics`` (dict name -> value), ``command`` (str),
            ``license``, ``notes``, ``base_model``, ``datasets`` (list), ``label_map`` (dict).
        pretrained: where the weights came from (``source``, ``format``, ``expected_missing``), if converted.

    Returns:
        The folder path.
    """
    from safetensors.torch import save_file

    from mambaseg.version import __version__

    model = unwrap_model(model)  # torch.compile(m).state_dict() prefixes every key with '_orig_mod.'
    spec = getattr(model, "mambaseg_spec", None)
    if not isinstance(spec, dict) or "name" not in spec:
        raise PretrainedError("save_pretrained needs a model built by mambaseg.create_model (no mambaseg_spec found)")
    card = dict(card or {})
    unknown = sorted(set(card) - set(_CARD_FIELDS))
    if unknown:
        raise PretrainedError(f"unknown model-card fields {unknown}; valid: {list(_CARD_FIELDS)}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    config = {
        "format": PRETRAINED_FORMAT,
        "library_name": "mambaseg",
        "library_version": __version__,
        "model_name": spec["name"],
        "num_classes": int(spec["num_classes"]),
        "in_chans": int(spec["in_chans"]),
        "model_kwargs": _json_ready(spec.get("kwargs") or {}),
        "label_map": _json_ready(card.get("label_map")),
        "metrics": _json_ready(card.get("metrics") or {}),
        "pretrained": _json_ready(pretrained or {}),
    }
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"mambaseg": json.dumps({"model": {"name": config["model_name"], "num_classes": config["num_classes"],
                                              "in_chans": config["in_chans"], "kwargs": config["model_kwargs"]},
                                    "format": PRETRAINED_FORMAT, "library_version": __version__})}
    save_file(state, str(d / "model.safetensors"), metadata=meta)
    (d / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (d / "README.md").write_text(model_card({**config, "folder_name": d.name}, card))
    return d


def from_pretrained(directory: str | os.PathLike[str], **overrides: Any) -> nn.Module:
    """Rebuild the model saved by :func:`save_pretrained` and load its weights (strict), in eval mode.

    Args:
        directory: the folder with ``config.json`` and ``model.safetensors``.
        **overrides: ``num_classes`` / ``in_chans`` / model options to change (the classifier is then re-initialised,
            the stem adapted).
    """
    from mambaseg.models._registry import create_model

    wf = read_weights(directory)
    if wf.model is None:
        raise PretrainedError(f"{str(directory)!r} holds no model description")
    model = create_model(wf.model["name"], pretrained=wf.path, **overrides)
    return model.eval()
