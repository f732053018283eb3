"""Converters for MSVM-UNet: the official trained network and the VMamba-v2 ImageNet encoders it starts from.

Sources (read for key layout, not copied):

* MSVM-UNet, github.com/gndlwch2w/msvm-unet @ abb1a8e (the 2025 restructuring up to d08c2f5 keeps the same module
  names and the ``_model`` attribute). The network is ``MSVMUNet(encoder, decoder)``; the encoder
  splits VMamba's stem into ``encoder.layer0`` (``patch_embed[0:5]``) and ``encoder.layer1`` (``patch_embed[5:8]``)
  and keeps the stage downsamplings in ``encoder.downsamples.{i}``; the decoder keeps its final x4 expansion in
  ``decoder.out_layers.0``. Training runs through a Lightning module whose attribute is ``_model``, so a trained
  ``.ckpt`` holds ``{"state_dict": {"_model.encoder...": ...}}`` (the official ``inference.py`` strips ``_model.``).
* VMamba v2 ImageNet-1k releases, github.com/MzeroMiko/VMamba @ 2ed52ea (release tag ``#v2cls``): the channels-first
  ``vssm1_*`` (``ssm_ratio`` 1: tiny_0230s, small_0229s, base_0229s) and ``vssm_*`` (``ssm_ratio`` 2: tiny_0230,
  small_0229, base_0229) files, ``{"model": {...}}`` with ``patch_embed.*``, ``layers.{i}.blocks.*``,
  ``layers.{i}.downsample.*`` and the classifier ``classifier.{norm,head}.*``. MSVM-UNet loads them into its encoder
  after renaming ``layers.{i}.downsample`` to ``downsamples.{i}`` and skipping the classifier.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from mambaseg.models._convert import Converted, register_converter

__all__ = ["convert_msvmunet_official", "convert_vmamba_v2", "unwrap_state_dict", "vmamba_v2_config"]

_MSVM_SOURCE = "github.com/gndlwch2w/msvm-unet @ abb1a8e (trained with its train_synapse.py / train_acdc.py)"
_VMAMBA_SOURCE = "github.com/MzeroMiko/VMamba @ 2ed52ea, release #v2cls (vssm1_*_0230s / *_0229s, vssm_*_0230 / *_0229)"

# stem (patch_embed) index of the official split encoder -> VMamba's (and our) patch_embed index
_STEM = {"layer0.0": "patch_embed.0", "layer0.2": "patch_embed.2", "layer1.0": "patch_embed.5",
         "layer1.2": "patch_embed.7"}

# training-time stochastic depth of the released VMamba-v2 configs (classification/configs/vssm/vmambav2*.yaml);
# it does not change any weight, only the model rebuilt for fine-tuning
_V2_DROP_PATH = {
    (96, (2, 2, 8, 2), 1.0): ("vssm1_tiny_0230s", 0.2),
    (96, (2, 2, 20, 2), 1.0): ("vssm1_small_0229s", 0.3),
    (128, (2, 2, 20, 2), 1.0): ("vssm1_base_0229s", 0.5),
    (96, (2, 2, 5, 2), 2.0): ("vssm_tiny_0230", 0.2),
    (96, (2, 2, 15, 2), 2.0): ("vssm_small_0229", 0.3),
    (128, (2, 2, 15, 2), 2.0): ("vssm_base_0229", 0.6),
}


def unwrap_state_dict(obj: Any, *, what: str) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint: the object itself, or its ``"state_dict"`` / ``"model"`` entry.

    Raises ``ValueError`` naming ``what`` (the checkpoint kind) if no tensor mapping is found.
    """
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    raise ValueError(f"{what}: expected a state_dict (or a dict with a 'state_dict' / 'model' entry), "
                     f"got {type(obj).__name__}")


def _strip_prefix(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove the first of ``prefixes`` that every key carries (Lightning ``_model.``, DataParallel ``module.``).

    Returns the renamed dict and the removed prefix ("" if none), so dropped keys can be reported as in the file.
    """
    for prefix in prefixes:
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items()}, prefix
    return sd, ""


def _count_blocks(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    """Blocks per stage from keys matching ``pattern`` (groups: stage index, block index)."""
    seen: dict[int, set[int]] = {}
    for k in sd:
        m = re.match(pattern, k)
        if m:
            seen.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not seen:
        return []
    n = max(seen) + 1
    return [len(seen.get(i, ())) for i in range(n)]


def _ss2d_config(sd: Mapping[str, torch.Tensor], block: str, where: str) -> dict[str, Any]:
    """d_state and ssm_ratio of one SS2Dv2 block (``block`` = key prefix up to ``.op.``), read from its shapes."""
    try:
        in_proj = sd[f"{block}.op.in_proj.weight"]
        a_logs = sd[f"{block}.op.A_logs"]
    except KeyError as e:
        raise ValueError(f"{where}: missing {e.args[0]!r}; not a VMamba-v2 (v05_noz) checkpoint") from None
    d_model, d_inner = in_proj.shape[1], in_proj.shape[0]
    return {"d_state": int(a_logs.shape[1]), "ssm_ratio": d_inner / d_model}


def vmamba_v2_config(sd: Mapping[str, torch.Tensor], *, encoder_prefix: str = "") -> dict[str, Any]:
    """Encoder configuration of a VMamba-v2 (channels-first, ``v05_noz``) state dict, read from key names and shapes.

    Returns ``{"dims": int, "depths": tuple, "d_state": int, "ssm_ratio": float, "name": str | None,
    "drop_path_rate": float | None}`` (``name`` and ``drop_path_rate`` only for the released configurations).
    """
    p = encoder_prefix
    where = "VMamba-v2 checkpoint" if not p else f"MSVM-UNet checkpoint ({p}*)"
    depths = _count_blocks(sd, rf"^{re.escape(p)}layers\.(\d+)\.blocks\.(\d+)\.")
    if len(depths) != 4 or min(depths) == 0:
        raise ValueError(f"{where}: expected 4 stages of '{p}layers.<i>.blocks.<j>.*' keys, found blocks {depths}")
    if f"{p}layers.0.blocks.0.op.in_proj.weight" not in sd:
        raise ValueError(f"{where}: no '{p}layers.0.blocks.0.op.in_proj.weight'; expected the channels-first v2 "
                         "layout (vssm1_* / vssm_*_0229 / vssm_tiny_0230); v0 checkpoints (vssm_tiny/small/base "
                         "from VM-UNet) use another converter")
    dims = int(sd[f"{p}layers.0.blocks.0.op.in_proj.weight"].shape[1])
    ssm = _ss2d_config(sd, f"{p}layers.0.blocks.0", where)
    if ssm["d_state"] != 1:
        raise ValueError(f"{where}: d_state {ssm['d_state']} (A_logs shape); MSVM-UNet's encoder is the d_state-1 v2 "
                         "family")
    ratio = round(ssm["ssm_ratio"], 6)
    name, dpr = _V2_DROP_PATH.get((dims, tuple(depths), ratio), (None, None))
    return {"dims": dims, "depths": tuple(depths), "d_state": 1, "ssm_ratio": ratio, "name": name,
            "drop_path_rate": dpr}


def _official_key(k: str) -> str | None:
    """One official MSVM-UNet key -> ours (None: not a parameter of the network)."""
    if k.startswith("encoder."):
        rest = k[len("encoder."):]
        m = re.match(r"^(layer[01]\.\d+)\.(.*)$", rest)
        if m:
            if m.group(1) not in _STEM:
                return None
            return f"encoder.{_STEM[m.group(1)]}.{m.group(2)}"
        m = re.match(r"^downsamples\.(\d+)\.(.*)$", rest)
        if m:
            return f"encoder.layers.{m.group(1)}.downsample.{m.group(2)}"
        return k  # encoder.layers.{i}.blocks.* unchanged
    if k.startswith("decoder.out_layers.0."):
        rest = k[len("decoder.out_layers.0."):]
        return "decoder.head." + (rest if rest.startswith("out.") else "up." + rest)
    return k  # decoder.layers.{i}.{up,concat_layer,vss_layer}.* unchanged


@register_converter(
    "msvmunet_official",
    description="MSVM-UNet trained with the official code (Lightning .ckpt or its state_dict) -> msvmunet",
    source=_MSVM_SOURCE,
)
def convert_msvmunet_official(state_dict: Mapping[str, torch.Tensor], *, in_chans: int = 3,
                              **options: Any) -> Converted:
    """Official MSVM-UNet weights -> ``msvmunet``.

    The encoder size (tiny_0230s / small_0229s / base_0229s) and ``num_classes`` are read from the weights.

    Args:
        state_dict: the official ``MSVMUNet.state_dict()``, or a Lightning checkpoint (``state_dict`` entry, keys
            prefixed ``_model.``).
        in_chans: input channels of the rebuilt model (the released scripts feed 1-channel slices, repeated to RGB
            inside the network; the stem weights are RGB either way). 1 or 3.
    """
    if options:
        raise TypeError(f"msvmunet_official: unknown options {sorted(options)}; accepted: in_chans")
    if in_chans not in (1, 3):
        raise ValueError(f"msvmunet_official: in_chans must be 1 or 3 (the stem is RGB), got {in_chans}")
    raw = unwrap_state_dict(state_dict, what="MSVM-UNet checkpoint")
    sd, pre = _strip_prefix(raw, ("_model.", "model.", "module."))
    if "decoder.out_layers.0.0.weight" in sd:
        raise ValueError("MSVM-UNet checkpoint: trained with deep supervision (decoder.out_layers.<i>.0..3, the 2025 "
                         "code's deep_supervision=True); msvmunet has the FLKPE head only, as both released configs")
    if "decoder.out_layers.0.out.weight" not in sd:
        raise ValueError("MSVM-UNet checkpoint: no 'decoder.out_layers.0.out.weight'; expected the state_dict of the "
                         "official MSVMUNet (keys 'encoder.*', 'decoder.*', optionally prefixed '_model.')")
    enc = vmamba_v2_config(sd, encoder_prefix="encoder.")
    dec_depths = _count_blocks(sd, r"^decoder\.layers\.(\d+)\.vss_layer\.blocks\.(\d+)\.")
    dec_ssm = _ss2d_config(sd, "decoder.layers.0.vss_layer.blocks.0", "MSVM-UNet checkpoint (decoder)")
    if dec_ssm["d_state"] != enc["d_state"] or round(dec_ssm["ssm_ratio"], 6) != enc["ssm_ratio"]:
        raise ValueError(f"MSVM-UNet checkpoint: decoder SS2D (d_state {dec_ssm['d_state']}, ssm_ratio "
                         f"{dec_ssm['ssm_ratio']}) differs from the encoder's ({enc['d_state']}, {enc['ssm_ratio']}); "
                         "msvmunet shares these settings")
    num_classes = int(sd["decoder.out_layers.0.out.weight"].shape[0])
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in sd.items():
        nk = _official_key(k)
        if nk is None:
            dropped.append(pre + k)
        else:
            out[nk] = v
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "dims": enc["dims"],
                              "depths": enc["depths"], "decoder_depths": tuple(dec_depths), "d_state": 1,
                              "ssm_ratio": enc["ssm_ratio"]}
    if enc["drop_path_rate"] is not None:
        kwargs["drop_path_rate"] = enc["drop_path_rate"]
    notes = [f"encoder {enc['name'] or 'custom'} (dims {enc['dims']}, depths {enc['depths']}), "
             f"{num_classes} classes",
             "stem encoder.layer0/layer1 -> encoder.patch_embed, encoder.downsamples.i -> encoder.layers.i.downsample, "
             "decoder.out_layers.0 -> decoder.head"]
    return Converted("msvmunet", kwargs, out, notes=notes, dropped=dropped)


def convert_vmamba_v2(state_dict: Mapping[str, torch.Tensor], *, num_classes: int = 1, in_chans: int = 3,
                      **options: Any) -> Converted:
    """VMamba-v2 ImageNet checkpoint -> the encoder of ``msvmunet`` (as MSVM-UNet loads it; decoder stays random).

    Renames ``layers.{i}.downsample`` the way MSVM-UNet does (ours keeps VMamba's own spelling, so the keys pass
    unchanged) and drops the ImageNet classifier (``classifier.*``). Size and ``ssm_ratio`` are read from the
    weights; ``ssm_ratio`` 2 files (``vssm_*_0229`` / ``vssm_tiny_0230``) build msvmunet with ``ssm_ratio=2`` in
    encoder and decoder (the released MSVM-UNet cannot load them: its decoder width is fixed to ratio 1).

    Args:
        state_dict: the release file's ``"model"`` entry (or the whole file).
        num_classes: classes of the segmentation head to build (randomly initialised).
        in_chans: 1 or 3 (1-channel inputs are repeated to RGB; the stem is RGB).
    """
    expect = options.pop("_expect", None)
    if options:
        raise TypeError(f"vmamba_v2: unknown options {sorted(options)}; accepted: num_classes, in_chans")
    if in_chans not in (1, 3):
        raise ValueError(f"vmamba_v2: in_chans must be 1 or 3 (the ImageNet stem is RGB), got {in_chans}")
    sd, pre = _strip_prefix(unwrap_state_dict(state_dict, what="VMamba-v2 checkpoint"), ("module.", "backbone."))
    cfg = vmamba_v2_config(sd)
    if expect is not None and cfg["name"] != expect:
        raise ValueError(f"VMamba-v2 checkpoint: expected {expect} but the weights are "
                         f"{cfg['name'] or 'another configuration'} (dims {cfg['dims']}, depths {cfg['depths']}, "
                         f"ssm_ratio {cfg['ssm_ratio']}); use the format of that file or 'vmamba_v2' (detected)")
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in sd.items():
        if k.startswith(("classifier.", "head.", "norm.")):
            dropped.append(pre + k)
            continue
        nk = k.replace("ln_1", "norm").replace("self_attention", "op")
        nk = re.sub(r"^downsamples\.(\d+)\.", r"layers.\1.downsample.", nk)
        out["encoder." + nk] = v
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "dims": cfg["dims"],
                              "depths": cfg["depths"], "d_state": 1, "ssm_ratio": cfg["ssm_ratio"]}
    if cfg["drop_path_rate"] is not None:
        kwargs["drop_path_rate"] = cfg["drop_path_rate"]
    notes = [f"{cfg['name'] or 'unreleased v2 configuration'}: dims {cfg['dims']}, depths {cfg['depths']}, "
             f"ssm_ratio {cfg['ssm_ratio']}", "ImageNet classifier dropped; decoder keeps its initialisation"]
    return Converted("msvmunet", kwargs, out, expected_missing=["decoder."], notes=notes, dropped=dropped)


register_converter(
    "vmamba_v2",
    description="VMamba v2 ImageNet-1k encoder of any released size (detected from the weights) -> msvmunet "
                "encoder, loaded as MSVM-UNet does",
    source=_VMAMBA_SOURCE,
)(convert_vmamba_v2)

_V2_RELEASE = "https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/"
_V2_FILES = {
    "vssm1_tiny_0230s": "vssm1_tiny_0230s_ckpt_epoch_264.pth",
    "vssm1_small_0229s": "vssm1_small_0229s_ckpt_epoch_240.pth",
    "vssm1_base_0229s": "vssm1_base_0229s_ckpt_epoch_225.pth",
    "vssm_tiny_0230": "vssm_tiny_0230_ckpt_epoch_262.pth",
    "vssm_small_0229": "vssm_small_0229_ckpt_epoch_222.pth",
    "vssm_base_0229": "vssm_base_0229_ckpt_epoch_237.pth",
}


def _v2_sized(name: str):
    def convert(state_dict: Mapping[str, torch.Tensor], **options: Any) -> Converted:
        return convert_vmamba_v2(state_dict, _expect=name, **options)

    convert.__name__ = f"convert_vmamba_v2_{name}"
    convert.__doc__ = f"VMamba v2 {name} ImageNet-1k encoder -> msvmunet encoder (size checked; see convert_vmamba_v2)."
    return convert


for _name, _file in _V2_FILES.items():
    register_converter(
        "vmamba_v2_" + _name.split("_", 1)[1],
        description=f"VMamba v2 {_name} ImageNet-1k encoder -> msvmunet encoder"
                    + (" (MSVM-UNet's default)" if _name == "vssm1_tiny_0230s" else ""),
        source=_V2_RELEASE + _file,
    )(_v2_sized(_name))
