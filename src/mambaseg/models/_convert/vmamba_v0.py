"""Converters for the VMamba-v0 family: VMamba v0 ImageNet encoders, VM-UNet, VMB-UNet and SliceMamba checkpoints.

All four code bases share VMamba's January-2024 ("vanilla", v0) key layout, which our VM-UNet / VMB-UNet / SliceMamba
modules keep (``patch_embed.proj``, ``layers.{i}.blocks.{j}.ln_1``, ``...self_attention.{in_proj, conv2d, x_proj_weight,
dt_projs_weight, dt_projs_bias, A_logs, Ds, out_norm, out_proj}``, ``layers.{i}.downsample``,
``layers_up.{i}.upsample``,
``final_up``, ``final_conv``). What differs between the published files:

* trained networks are saved from the authors' wrappers, so every key carries the wrapper's attribute name
  (``vmunet.``, ``vmbunet.``, ``smunet.``); ``torch.nn.DataParallel`` adds ``module.`` in front;
* VMamba's later code renamed the v0 modules (``patch_embed.0/2``, ``blocks.{j}.norm``/``.op``,
  ``classifier.norm/head``)
  and its re-released v0 files use those names; both spellings are accepted here;
* ImageNet encoders have no decoder. VM-UNet, VMB-UNet and SliceMamba all initialise from them with the same
  two-pass ``load_from`` of VM-UNet: (1) every encoder key whose name exists in the segmentation network is copied
  (so only the first ``depths[i]`` blocks of each stage are used), (2) ``layers.{i}`` is renamed ``layers_up.{3-i}`` and
  copied where the name exists, i.e. decoder block ``j`` of stage ``k`` starts from encoder block ``j`` of stage
  ``3-k`` (mirror). Patch expanding, the final expand, the head and every module the encoder has no counterpart for
  (CBAM, boundary attention, skip fusion) keep their initialisation.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import torch

from mambaseg.models._convert import Converted, register_converter

__all__ = [
    "V0_SIZES",
    "normalize_v0_keys",
    "encoder_layout",
    "strip_wrapper",
    "mirror_encoder",
    "collapse_prefixes",
]

VMAMBA_REPO = "github.com/MzeroMiko/VMamba"
VMAMBA_V0_RELEASE = "https://github.com/MzeroMiko/VMamba/releases/tag/%23v0cls"

# VMamba v0 ImageNet-1k classifiers: (embed dim, depths) of vanilla_vmamba_{tiny,small,base}
V0_SIZES: dict[str, tuple[int, tuple[int, ...]]] = {
    "tiny": (96, (2, 2, 9, 2)),
    "small": (96, (2, 2, 27, 2)),
    "base": (128, (2, 2, 27, 2)),
}

# segmentation networks an ImageNet v0 encoder can initialise (registry names) -> what the official code does
_ENCODER_TARGETS = ("vmunet", "vmunet_code_default", "vmbunet", "slicemamba")

_NEW_NAMES = (
    (re.compile(r"^patch_embed\.0\."), "patch_embed.proj."),
    (re.compile(r"^patch_embed\.2\."), "patch_embed.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.norm\."), r"\1.ln_1."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.op\."), r"\1.self_attention."),
    (re.compile(r"^classifier\.norm\."), "norm."),
    (re.compile(r"^classifier\.head\."), "head."),
)
_BLOCK = re.compile(r"^(layers|layers_up)\.(\d+)\.blocks\.(\d+)\.")


def normalize_v0_keys(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Rename VMamba's later v0 key spelling to the original one; returns (state dict, number of renamed keys)."""
    out: dict[str, torch.Tensor] = {}
    renamed = 0
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _NEW_NAMES:
            new = pattern.sub(repl, new)
        renamed += new != key
        out[new] = value
    return out, renamed


def strip_wrapper(state_dict: Mapping[str, torch.Tensor], prefix: str, what: str) -> dict[str, torch.Tensor]:
    """Remove the wrapper attribute ``prefix`` (and a leading ``module.``) from every key.

    Raises:
        ValueError: some keys do not start with the prefix, i.e. the file is not ``what``.
    """
    out: dict[str, torch.Tensor] = {}
    foreign = []
    for key, value in state_dict.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if not k.startswith(prefix):
            foreign.append(key)
            continue
        out[k[len(prefix):]] = value
    if foreign or not out:
        sample = ", ".join(repr(k) for k in (foreign or list(state_dict))[:3])
        hint = ""
        if any(k.startswith(("final_conv.", "layers_up.")) for k in state_dict):  # a decoder: not an encoder file
            hint = ("; its keys (layers_up, final_conv) are a whole network's, not an encoder's: a mambaseg model's "
                    "own state_dict needs no conversion (model.load_state_dict(state_dict)); an official VM-UNet "
                    "file has every key under 'vmunet.'")
        elif any(k.startswith(("layers.", "patch_embed.", "classifier.")) for k in state_dict):
            hint = "; its keys look like a VMamba ImageNet encoder: use the format vmamba_v0_tiny/small/base"
        raise ValueError(
            f"expected {what} (every key starting with {prefix!r}), but {len(foreign)} of {len(state_dict)} keys do "
            f"not, e.g. {sample}{hint}"
        )
    return out


def _count_blocks(state_dict: Mapping[str, torch.Tensor], group: str) -> list[int]:
    """Blocks per stage of ``layers`` or ``layers_up`` (highest block index + 1), in stage order."""
    counts: dict[int, int] = {}
    for key in state_dict:
        m = _BLOCK.match(key)
        if m and m.group(1) == group:
            stage, block = int(m.group(2)), int(m.group(3))
            counts[stage] = max(counts.get(stage, 0), block + 1)
    if not counts:
        return []
    if sorted(counts) != list(range(len(counts))):
        raise ValueError(f"the {group!r} stages are not numbered 0..n-1: found {sorted(counts)}")
    return [counts[i] for i in range(len(counts))]


def encoder_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Widths and depths of a v0-layout state dict (original key spelling, no wrapper prefix).

    Returns:
        ``{"dims": int, "depths": [...], "depths_decoder": [...], "d_state": int, "in_chans": int,
        "num_classes": int | None}`` (``depths_decoder`` is empty for an encoder, ``num_classes`` None without
        ``final_conv``).
    """
    stem = state_dict.get("patch_embed.proj.weight")
    if stem is None or stem.dim() != 4:
        raise ValueError("no 4-D 'patch_embed.proj.weight' (the VMamba v0 patch embedding) in the weights")
    a_logs = next((v for k, v in state_dict.items() if k.endswith("self_attention.A_logs")), None)
    if a_logs is None:
        raise ValueError("no '...self_attention.A_logs' entry: these are not VMamba-v0 (SS2D) weights")
    head = state_dict.get("final_conv.weight")
    return {
        "dims": int(stem.shape[0]),
        "depths": _count_blocks(state_dict, "layers"),
        "depths_decoder": _count_blocks(state_dict, "layers_up"),
        "d_state": int(a_logs.shape[-1]),
        "in_chans": int(stem.shape[1]),
        "num_classes": int(head.shape[0]) if head is not None else None,
    }


def _network_kwargs(layout: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor kwargs reproducing ``layout``, leaving out values equal to the model's defaults."""
    kwargs: dict[str, Any] = {"num_classes": layout["num_classes"], "in_chans": layout["in_chans"]}
    for name in ("depths", "depths_decoder", "dims", "d_state"):
        value = layout[name]
        value = list(value) if isinstance(value, (list, tuple)) else value
        default = defaults[name]
        default = list(default) if isinstance(default, (list, tuple)) else default
        if value != default:
            kwargs[name] = value
    return kwargs


_VMUNET_DEFAULTS = {"depths": (2, 2, 2, 2), "depths_decoder": (2, 2, 2, 1), "dims": 96, "d_state": 16}
_VMBUNET_DEFAULTS = {"depths": (2, 2, 2, 2), "depths_decoder": (2, 2, 2, 2), "dims": 96, "d_state": 16}
_SLICEMAMBA_DEFAULTS = {"depths": (2, 2, 9, 2), "depths_decoder": (2, 2, 2, 1), "dims": 96, "d_state": 16}

_SIGMOID_NOTE = (
    "the official wrapper returned sigmoid(logits) for one class; this model returns logits (apply torch.sigmoid "
    "to compare outputs)"
)
_GRAY_NOTE = "the official wrapper repeated a 1-channel input to 3 channels; summing the stem over its input " \
             "channels (in_chans=1) is the exact equivalent"


def _trained(state_dict: Mapping[str, torch.Tensor], prefix: str, what: str) -> tuple[dict[str, torch.Tensor], dict]:
    sd = strip_wrapper(state_dict, prefix, what)
    layout = encoder_layout(sd)
    if layout["num_classes"] is None or not layout["depths_decoder"]:
        raise ValueError(f"expected {what} with a decoder and 'final_conv', but the weights have neither")
    return sd, layout


@register_converter(
    "vmunet",
    description="VM-UNet trained network (best.pth / latest.pth of JCruan519/VM-UNet) -> vmunet",
    source="github.com/JCruan519/VM-UNet @ 43c495b (no trained weights are published; files written by its train.py)",
)
def convert_vmunet(state_dict: dict[str, torch.Tensor], **options: Any) -> Converted:
    """Official VM-UNet state dict (keys ``vmunet.*``) -> ``vmunet`` with the same depths/width."""
    _no_options("vmunet", options)
    sd, layout = _trained(state_dict, "vmunet.", "a VM-UNet network saved by its train.py")
    return Converted("vmunet", _network_kwargs(layout, _VMUNET_DEFAULTS), sd, notes=[_SIGMOID_NOTE, _GRAY_NOTE])


@register_converter(
    "vmbunet",
    description="VMB-UNet trained network (jyBieber/vmbu_net) -> vmbunet, variant='official' (released wiring)",
    source="github.com/jyBieber/vmbu_net @ d244c32 (no trained weights are published; files written by its train.py)",
)
def convert_vmbunet(state_dict: dict[str, torch.Tensor], **options: Any) -> Converted:
    """Official VMB-UNet state dict (keys ``vmbunet.*``) -> ``vmbunet(variant="official")``."""
    _no_options("vmbunet", options)
    sd, layout = _trained(state_dict, "vmbunet.", "a VMB-UNet network saved by its train.py")
    kwargs = _network_kwargs(layout, _VMBUNET_DEFAULTS)
    kwargs["variant"] = "official"
    notes = [
        "variant='official' keeps the released wiring: the BSF at up1 is built but never called, up3 fuses no "
        "encoder skip, the boundary cross-attention uses nn.MultiheadAttention",
        _SIGMOID_NOTE,
        _GRAY_NOTE,
    ]
    return Converted("vmbunet", kwargs, sd, notes=notes)


def _arch_option(options: dict[str, Any], fmt: str) -> Any:
    arch = options.pop("arch", None)
    if arch is None:
        raise ValueError(
            f"{fmt}: the slicing architecture is not stored in the weights (parameter shapes do not depend on it); "
            "pass arch= the 22 genes of the searched network (arch.pkl of the official search, a JSON list, "
            "or '3,3,1,...')"
        )
    return read_arch(arch)


def read_arch(arch: Any) -> Any:
    """An architecture option as given, or the gene tuple of an official ``arch.pkl`` (read without unpickling code)."""
    import os

    if isinstance(arch, (str, os.PathLike)) and str(arch).endswith(".pkl"):
        import io
        import pickle

        class _NoGlobals(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:  # an arch.pkl holds plain ints only
                raise ValueError(f"{arch}: expected a pickled list/tuple of ints, found a reference to {module}.{name}")

        with open(arch, "rb") as f:
            return list(_NoGlobals(io.BytesIO(f.read())).load())
    return arch


@register_converter(
    "slicemamba",
    description="SliceMamba retrained searched network (Evaluation/template of fAnchao1/SliceMamba) -> slicemamba; "
    "option arch= (22 genes / arch.pkl)",
    source="github.com/fAnchao1/SliceMamba @ 44c61b4 (no trained weights are published)",
)
def convert_slicemamba(state_dict: dict[str, torch.Tensor], **options: Any) -> Converted:
    """Official searched SliceMamba (keys ``smunet.*``, one block per position) -> ``slicemamba(arch=...)``."""
    arch = _arch_option(options, "slicemamba")
    _no_options("slicemamba", options)
    sd, layout = _trained(state_dict, "smunet.", "a SliceMamba network saved by Evaluation/template/train.py")
    if any(re.match(r"^layers(_up)?\.\d+\.blocks\.\d+\.\d+\.", k) for k in sd):
        raise ValueError(
            "these are SliceMamba supernet weights (4 candidate blocks per position); use the format "
            "slicemamba_supernet with arch= to extract the searched network"
        )
    kwargs = _network_kwargs(layout, _SLICEMAMBA_DEFAULTS)
    kwargs["arch"] = _genes(arch, layout)
    return Converted("slicemamba", kwargs, sd, notes=[_SIGMOID_NOTE, _GRAY_NOTE])


@register_converter(
    "slicemamba_supernet",
    description="SliceMamba supernet (train.py of fAnchao1/SliceMamba) -> slicemamba: the candidate of every "
    "position chosen by arch=",
    source="github.com/fAnchao1/SliceMamba @ 44c61b4 (no trained weights are published)",
)
def convert_slicemamba_supernet(state_dict: dict[str, torch.Tensor], **options: Any) -> Converted:
    """Supernet keys ``smunet.layers.{i}.blocks.{j}.{c}.*`` -> the sub-network using candidate arch[p] at position p."""
    arch = _arch_option(options, "slicemamba_supernet")
    _no_options("slicemamba_supernet", options)
    sd = strip_wrapper(state_dict, "smunet.", "a SliceMamba supernet saved by train.py")
    cand = re.compile(r"^(layers|layers_up)\.(\d+)\.blocks\.(\d+)\.(\d+)\.(.*)$")
    flat: dict[str, torch.Tensor] = {}
    by_position: dict[tuple[str, int, int], dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in sd.items():
        m = cand.match(key)
        if m is None:
            flat[key] = value
            continue
        pos = (m.group(1), int(m.group(2)), int(m.group(3)))
        by_position.setdefault(pos, {}).setdefault(int(m.group(4)), {})[m.group(5)] = value
    if not by_position:
        raise ValueError("expected supernet keys 'layers.{i}.blocks.{j}.{candidate}.*'; use the format slicemamba")
    enc = sorted(p for p in by_position if p[0] == "layers")
    dec = sorted(p for p in by_position if p[0] == "layers_up")
    positions = enc + dec  # gene order: encoder stages, then decoder stages (bottleneck side first)
    from mambaseg.models.slicemamba import parse_arch

    genes = parse_arch(arch, len(positions))
    dropped = []
    for (group, stage, block), gene in zip(positions, genes):
        cands = by_position[(group, stage, block)]
        if gene not in cands:
            raise ValueError(f"{group}.{stage}.blocks.{block}: candidate {gene} is not in the supernet "
                             f"(has {sorted(cands)})")
        for rest, value in cands[gene].items():
            flat[f"{group}.{stage}.blocks.{block}.{rest}"] = value
        dropped += [f"{group}.{stage}.blocks.{block}.{c}." for c in sorted(cands) if c != gene]
    layout = encoder_layout(flat)
    kwargs = _network_kwargs(layout, _SLICEMAMBA_DEFAULTS)
    kwargs["arch"] = list(genes)
    notes = [f"kept candidate arch[p] of each of the {len(positions)} positions; the other candidates are dropped",
             _SIGMOID_NOTE, _GRAY_NOTE]
    return Converted("slicemamba", kwargs, flat, notes=notes, dropped=dropped)


def _genes(arch: Any, layout: Mapping[str, Any]) -> list[int]:
    from mambaseg.models.slicemamba import num_positions, parse_arch

    return list(parse_arch(arch, num_positions(layout["depths"], layout["depths_decoder"])))


def _no_options(fmt: str, options: Mapping[str, Any]) -> None:
    if options:
        raise TypeError(f"format {fmt!r} takes no options, got {sorted(options)}")


# ---------------------------------------------------------------------------------------------------------------------
# ImageNet encoders


def collapse_prefixes(keys: Iterable[str], all_keys: Sequence[str]) -> list[str]:
    """The shortest module prefixes (ending in '.') that cover exactly ``keys`` among ``all_keys``."""
    keys = set(keys)
    out: set[str] = set()
    for key in keys:
        parts = key.split(".")
        best = key
        for n in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:n]) + "."
            if all(k in keys for k in all_keys if k.startswith(prefix)):
                best = prefix
            else:
                break
        out.add(best)
    return sorted(p for p in out if not any(q != p and p.startswith(q) and q.endswith(".") for q in out))


def mirror_encoder(
    encoder: Mapping[str, torch.Tensor], target_keys: Iterable[str], mirror: bool = True
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """VM-UNet's two-pass ``load_from`` on an encoder state dict (original v0 spelling).

    Returns:
        (state dict under target names, encoder keys used by no pass, notes).
    """
    target = set(target_keys)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    n_stages = 1 + max((int(m.group(2)) for k in encoder if (m := _BLOCK.match(k))), default=-1)
    for key, value in encoder.items():  # pass 1: same names
        if key in target:
            out[key] = value
            used.add(key)
    mirrored = 0
    if mirror:
        stage = re.compile(r"^layers\.(\d+)\.")
        for key, value in encoder.items():  # pass 2: layers.i -> layers_up.(n-1-i), where the name exists
            m = stage.match(key)
            if m is None:
                continue
            new = f"layers_up.{n_stages - 1 - int(m.group(1))}." + key[m.end():]
            if new in target:
                out[new] = value
                used.add(key)
                mirrored += 1
    unused = [k for k in encoder if k not in used]
    notes = [f"encoder: {len(out) - mirrored} tensors copied by name"]
    if mirror:
        notes.append(
            f"decoder: {mirrored} tensors mirrored from the encoder (layers.i -> layers_up.{n_stages - 1}-i, "
            "VM-UNet's load_from)"
        )
    return out, unused, notes


def _summarize_unused(unused: Sequence[str]) -> list[str]:
    """Group unused encoder keys by block for the report ("layers.2.blocks.2..26")."""
    blocks: dict[int, list[int]] = {}
    other = []
    for key in unused:
        m = _BLOCK.match(key)
        if m and m.group(1) == "layers":
            blocks.setdefault(int(m.group(2)), []).append(int(m.group(3)))
        else:
            other.append(key)
    lines = [f"layers.{s}.blocks.{min(b)}..{max(b)}" for s, b in sorted(blocks.items())]
    prefixes = sorted({k.rsplit(".", 1)[0] + "." for k in other})
    return lines + prefixes


def _convert_v0_encoder(state_dict: dict[str, torch.Tensor], size: str | None, **options: Any) -> Converted:
    from mambaseg.models._registry import create_model

    sd, renamed = normalize_v0_keys(state_dict)
    if any(k.startswith(("vmunet.", "vmbunet.", "smunet.", "module.")) for k in sd):
        raise ValueError("these are weights of a trained segmentation network, not an ImageNet encoder; use the "
                         "format vmunet, vmbunet or slicemamba")
    layout = encoder_layout(sd)
    if layout["depths_decoder"]:
        raise ValueError("the weights contain a decoder ('layers_up.*'): use the format of the trained network")
    found = (layout["dims"], tuple(layout["depths"]))
    if size is None:
        size = next((name for name, spec in V0_SIZES.items() if spec == found), None)
        if size is None:
            raise ValueError(f"VMamba v0 encoder with dims {found[0]} and depths {list(found[1])} matches none of "
                             f"{ {k: [v[0], list(v[1])] for k, v in V0_SIZES.items()} }")
    elif V0_SIZES[size] != found:
        dims, depths = V0_SIZES[size]
        raise ValueError(f"vmamba_v0_{size} expects embed dim {dims} and depths {list(depths)}, the weights have "
                         f"{found[0]} and {list(found[1])}")
    target = options.pop("target", "vmunet")
    if target not in _ENCODER_TARGETS:
        raise ValueError(f"target must be one of {_ENCODER_TARGETS}, got {target!r}")
    mirror = bool(options.pop("mirror", True))
    kwargs: dict[str, Any] = {"num_classes": int(options.pop("num_classes", 1)),
                              "in_chans": int(options.pop("in_chans", layout["in_chans"]))}
    for name in ("depths", "depths_decoder", "drop_path_rate"):
        if name in options:
            kwargs[name] = options.pop(name)
    if layout["dims"] != 96:
        kwargs["dims"] = layout["dims"]
    if layout["d_state"] != 16:
        kwargs["d_state"] = layout["d_state"]
    if target == "vmbunet":
        kwargs["variant"] = options.pop("variant", "official")
    if target == "slicemamba":
        if "arch" not in options:
            raise ValueError("target='slicemamba' needs arch= (the 22 genes of the searched network)")
        kwargs["arch"] = read_arch(options.pop("arch"))
    if options:
        raise TypeError(f"unknown options for an ImageNet VMamba v0 encoder: {sorted(options)}; valid: target, "
                        "variant (vmbunet), arch (slicemamba), num_classes, in_chans, depths, depths_decoder, "
                        "drop_path_rate, mirror")
    model = create_model(target, **kwargs)  # only its key names and shapes are used
    model_sd = model.state_dict()
    out, unused, notes = mirror_encoder(sd, model_sd.keys(), mirror=mirror)
    missing = [k for k in model_sd if k not in out]
    if target == "slicemamba":
        kwargs["arch"] = list(model.arch)
    notes.insert(0, f"VMamba v0 {size} ImageNet-1k encoder (dims {layout['dims']}, depths {layout['depths']})"
                    + (f"; {renamed} keys renamed from VMamba's later spelling (norm/op/classifier)"
                       if renamed else ""))
    if layout["dims"] != 96 and target != "vmbunet":
        notes.append(f"embed dim {layout['dims']}: the official wrappers build width 96 only; this network is built "
                     f"with dims={layout['dims']} to take the encoder")
    return Converted(
        model_name=target,
        model_kwargs=kwargs,
        state_dict=out,
        expected_missing=collapse_prefixes(missing, list(model_sd)),
        notes=notes,
        dropped=_summarize_unused(unused),
    )


def _v0_converter(size: str | None):
    def convert(state_dict: dict[str, torch.Tensor], **options: Any) -> Converted:
        return _convert_v0_encoder(state_dict, size, **options)

    convert.__name__ = f"convert_vmamba_v0_{size or 'auto'}"
    convert.__doc__ = (f"VMamba v0 {size or '(size detected)'} ImageNet encoder -> a VM-UNet-family network "
                       "initialised as VM-UNet's load_from does (options: target, variant, arch, num_classes, "
                       "in_chans, depths, depths_decoder, mirror).")
    return convert


_FILES = {
    "tiny": "vssmtiny_dp01_ckpt_epoch_292.pth",
    "small": "vssmsmall_dp03_ckpt_epoch_238.pth (VM-UNet's README: vmamba_small_e238_ema.pth)",
    "base": "vssmbase_dp06_ckpt_epoch_241.pth",
}
for _size in V0_SIZES:
    register_converter(
        f"vmamba_v0_{_size}",
        description=f"VMamba v0 {_size} ImageNet-1k encoder -> vmunet (default), vmunet_code_default, vmbunet or "
        "slicemamba (option target=), encoder copied and decoder mirrored as VM-UNet's load_from",
        source=f"{VMAMBA_V0_RELEASE} {_FILES[_size]}",
    )(_v0_converter(_size))
register_converter(
    "vmamba_v0",
    description="VMamba v0 ImageNet-1k encoder of any size (tiny/small/base detected from the weights)",
    source=VMAMBA_V0_RELEASE,
)(_v0_converter(None))
