"""Converters for HeteroMedSeg: the official trained network and the BiFormer ImageNet checkpoints its code loads.

Sources (read for key layout, not copied):

* HeteroMedSeg, github.com/Yuyan-Bin/Synergistic-Network @ 1a70e62 (model files as in its first commit 866f8dc, the
  last version that imports). ``BRAUnet`` wraps ``BRAUnetSystem`` as ``bra_unet``: ``downsample_layers.{0..3}``,
  VSSD ``stages.{0..3}`` (``cpe1``, ``norm1``, ``attn`` = Mamba-2 mixer, ``cpe2``, ``norm2``, ``mlp.fc1/fc2``; stage 3
  is built but never run), ``layers_up.0`` (patch expand), ``layers_up.{1,2,3}`` (BiFormer ``blocks`` and
  ``upsample``), ``concat_back_dim.{1,2,3}``, SCSA ``sccsa3`` / ``sccsa2`` / ``sccsa1`` (deep to shallow, with
  ``local_dwc`` / ``global_dwc_{s,m,l}``), ``norm_up``, ``up4``, ``output``. Its training scripts save
  ``model.state_dict()`` directly.
* VSSD ImageNet-1k checkpoints, github.com/YuHengsss/VSSD @ 87b753b (``classification/models/mamba2.py``): blocks
  ``layers.{i}.blocks.{j}`` with the same inner names as HeteroMedSeg's VSSD blocks, a different conv stem
  (``patch_embed.conv1..3``) and downsampling (``layers.{i}.downsample.conv``). HeteroMedSeg's code never loads VSSD
  weights; :func:`convert_vssd` is our mapping of VSSD-Base blocks onto its encoder.
* BiFormer ImageNet-1k checkpoints, github.com/rayleizhu/BiFormer @ 1697bbb (``{"model": ...}``). HeteroMedSeg's
  ``BRAUnet.load_from`` loads ``biformer_base_best.pth`` by name into ``bra_unet`` after deleting every tensor whose
  shape differs, with ``strict=False``: only the conv stem / downsampling layers and the ``stages.{i}.{j}.norm1/norm2``
  LayerNorms share names and shapes with the VSSD encoder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from mambaseg.models._convert import Converted, register_converter
from mambaseg.models._convert.msvmunet import _count_blocks, _strip_prefix, unwrap_state_dict

__all__ = ["convert_heteromedseg_official", "convert_biformer", "convert_vssd"]

_HMS_SOURCE = "github.com/Yuyan-Bin/Synergistic-Network @ 1a70e62 (networks/ as of 866f8dc)"
_BIFORMER_SOURCE = "github.com/rayleizhu/BiFormer @ 1697bbb (biformer_{tiny,small,base} ImageNet-1k)"
_VSSD_SOURCE = ("github.com/YuHengsss/VSSD @ 87b753b, huggingface.co/YuhengSSS/VSSD vssd_base_best_ema.pth "
                "(micro/tiny/small are rejected: their widths do not fit)")

_SCSA = {"sccsa3": 0, "sccsa2": 1, "sccsa1": 2}  # official SCSA module -> our decoder step (deep to shallow)
_SCSA_CONV = {"local_dwc": 0, "global_dwc_s": 1, "global_dwc_m": 2, "global_dwc_l": 3}
_RELEASED_TOPKS = (8, 4, 2)  # decoder steps deep to shallow (topks [2, 4, 8, -2] indexed 3 - i in the official code)


def _official_key(k: str) -> str | None:
    """One official (``bra_unet.``-stripped) key -> ours; None: not part of the released forward graph."""
    m = re.match(r"^stages\.(\d+)\.(\d+)\.(.*)$", k)
    if m:
        i, j, rest = m.groups()
        rest = {"mlp.fc1.weight": "mlp.0.weight", "mlp.fc1.bias": "mlp.0.bias", "mlp.fc2.weight": "mlp.2.weight",
                "mlp.fc2.bias": "mlp.2.bias"}.get(rest, rest)
        return f"stages.{i}.{j}.{rest}"
    m = re.match(r"^(sccsa[123])\.(\w+)\.(.*)$", k)
    if m:
        mod, sub, rest = m.groups()
        if sub in _SCSA_CONV:
            sub = f"dwconvs.{_SCSA_CONV[sub]}"
        return f"decoder.{_SCSA[mod]}.scsa.{sub}.{rest}"
    if k.startswith("layers_up.0."):
        return "expand_bottleneck." + k[len("layers_up.0."):]
    m = re.match(r"^layers_up\.([123])\.(blocks\.\d+|upsample)\.(.*)$", k)
    if m:
        step, part, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
        if part.startswith("blocks"):
            rest = {"attn.qkv.qkv.weight": "attn.qkv.weight", "attn.qkv.qkv.bias": "attn.qkv.bias",
                    "mlp.3.weight": "mlp.2.weight", "mlp.3.bias": "mlp.2.bias"}.get(rest, rest)
        return f"decoder.{step}.{part}.{rest}"
    m = re.match(r"^concat_back_dim\.([123])\.(.*)$", k)
    if m:
        return f"decoder.{int(m.group(1)) - 1}.concat_back_dim.{m.group(2)}"
    if k.startswith(("downsample_layers.", "norm_up.", "up4.", "output.")):
        return k
    return None


@register_converter(
    "heteromedseg_official",
    description="HeteroMedSeg (Synergistic-Network BRAUnet) trained with the official code -> heteromedseg",
    source=_HMS_SOURCE,
)
def convert_heteromedseg_official(state_dict: Mapping[str, torch.Tensor], *, n_win: int | None = None,
                                  **options: Any) -> Converted:
    """Official HeteroMedSeg weights -> ``heteromedseg`` with the released forward graph.

    Widths, depths and ``num_classes`` are read from the weights; the model is built with the mixer the released code
    runs (``mixer="causal"``: its VSSD blocks keep ``linear_attn_duality=False``), without the never-executed 4th
    VSSD stage (its weights are dropped and listed) and with the released BiFormer blocks (``faithful_block=True``).

    Args:
        state_dict: ``BRAUnet.state_dict()`` (keys ``bra_unet.*``) or ``BRAUnetSystem.state_dict()``.
        n_win: routing regions per side. The released runs use 7 at 224 x 224 (Synapse, rectal cancer) and 8 at
            256 x 256 (ISIC 2018, CVC-ClinicDB), i.e. input size / 32, which is what ``None`` derives per call.
    """
    if options:
        raise TypeError(f"heteromedseg_official: unknown options {sorted(options)}; accepted: n_win")
    sd, pre = _strip_prefix(unwrap_state_dict(state_dict, what="HeteroMedSeg checkpoint"), ("module.", "model."))
    sd, pre2 = _strip_prefix(sd, ("bra_unet.",))
    pre += pre2
    for need in ("output.weight", "downsample_layers.0.0.weight", "layers_up.0.expand.weight", "sccsa1.q.weight"):
        if need not in sd:
            raise ValueError(f"HeteroMedSeg checkpoint: no {need!r}; expected the state_dict of the official BRAUnet "
                             "(keys 'bra_unet.downsample_layers.*', 'bra_unet.stages.*', 'bra_unet.layers_up.*', "
                             "'bra_unet.sccsa1..3.*', 'bra_unet.output.weight')")
    embed = [int(sd[f"downsample_layers.{i}.{3 if i == 0 else 0}.weight"].shape[0]) for i in range(4)]
    depths = _count_blocks(sd, r"^stages\.(\d+)\.(\d+)\.")
    if len(depths) < 3:
        raise ValueError(f"HeteroMedSeg checkpoint: expected VSSD stages 0-2 ('stages.<i>.<j>.*'), found {depths}")
    depths = (list(depths) + [2])[:4]
    dec = _count_blocks(sd, r"^layers_up\.(\d+)\.blocks\.(\d+)\.")
    decoder_depths = tuple(dec[1:4])
    if len(decoder_depths) != 3:
        raise ValueError(f"HeteroMedSeg checkpoint: expected BiFormer blocks under layers_up.1..3, found {dec}")
    heads = [int(sd[f"stages.{i}.0.attn.A_log"].shape[0]) for i in range(3)]
    head_dim = embed[0] // heads[0]
    if any(embed[i] != heads[i] * head_dim for i in range(3)):
        raise ValueError(f"HeteroMedSeg checkpoint: SSD heads {heads} at widths {embed[:3]} do not share one head "
                         "width; heteromedseg uses heads = width / head_dim at every stage")
    d_state = int((sd["stages.0.0.attn.conv2d.weight"].shape[0] - 2 * embed[0]) // 2)
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in sd.items():
        nk = _official_key(k)
        if nk is None or nk.startswith("stages.3."):
            dropped.append(pre + k)
        else:
            out[nk] = v
    kwargs: dict[str, Any] = {
        "num_classes": int(sd["output.weight"].shape[0]), "in_chans": int(sd["downsample_layers.0.0.weight"].shape[1]),
        "embed_dim": tuple(embed), "depths": tuple(depths), "decoder_depths": decoder_depths,
        "topks": _RELEASED_TOPKS, "head_dim": head_dim, "mixer": "causal",
        "bottleneck": False, "d_state": d_state, "faithful_block": True, "n_win": n_win,
    }
    notes = ["mixer='causal' (the released VSSD blocks run the causal Mamba-2 scan, not the paper's NC-SSD)",
             "encoder stage 3 is built but never executed by the released forward: its weights are dropped",
             "sccsa3/2/1 -> decoder.0/1/2.scsa; layers_up.0 -> expand_bottleneck; layers_up.1..3 -> decoder.0..2; "
             "concat_back_dim.1..3 -> decoder.0..2.concat_back_dim",
             "routing regions per side: " + (f"n_win={n_win}" if n_win else "input size / 32 (7 at 224, 8 at 256)")]
    return Converted("heteromedseg", kwargs, out, notes=notes, dropped=dropped)


def _biformer_dims(sd: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    try:
        return tuple(int(sd[f"downsample_layers.{i}.{3 if i == 0 else 0}.weight"].shape[0]) for i in range(4))
    except KeyError as e:
        raise ValueError(f"BiFormer checkpoint: missing {e.args[0]!r}; expected the BiFormer layout "
                         "('downsample_layers.<i>.*', 'stages.<i>.<j>.*', 'norm.*', 'head.*')") from None


@register_converter(
    "biformer",
    description="BiFormer ImageNet-1k checkpoint (base; tiny/small are rejected with the reason) -> heteromedseg "
                "encoder stem and LayerNorms, as HeteroMedSeg's load_from",
    source=_BIFORMER_SOURCE,
)
def convert_biformer(state_dict: Mapping[str, torch.Tensor], *, num_classes: int = 1, in_chans: int = 3,
                     n_win: int | None = None, **options: Any) -> Converted:
    """BiFormer ImageNet weights -> ``heteromedseg``, keeping exactly what HeteroMedSeg's ``load_from`` keeps.

    ``load_from`` matches by name and drops shape mismatches, so from BiFormer-Base (widths 96..768) it loads the conv
    stem and downsampling layers (with BatchNorm statistics) and the ``norm1`` / ``norm2`` LayerNorms of the blocks that
    exist in the VSSD encoder (blocks 0-1 of stages 0-2; the never-run stage 3 is not built here). Every mixer, MLP,
    CPE, the decoder, SCSA and the head keep their initialisation (``expected_missing``). BiFormer-Tiny/Small are
    64..512 wide: no tensor of theirs fits HeteroMedSeg's 96..768 encoder, so the official loader loads nothing from
    them, and this converter refuses them instead of returning an empty conversion.

    Args:
        state_dict: the release file's ``"model"`` entry (or the whole file).
        num_classes, in_chans: the segmentation task of the model to build (1-channel input is repeated to RGB).
        n_win: routing regions per side (None: input size / 32).
    """
    if options:
        raise TypeError(f"biformer: unknown options {sorted(options)}; accepted: num_classes, in_chans, n_win")
    sd, pre = _strip_prefix(unwrap_state_dict(state_dict, what="BiFormer checkpoint"), ("module.",))
    dims = _biformer_dims(sd)
    target = (96, 192, 384, 768)
    if dims != target:
        raise ValueError(f"BiFormer checkpoint with widths {dims}: HeteroMedSeg's encoder is {target} wide and its "
                         "loader keeps only same-name, same-shape tensors, so nothing of this checkpoint (BiFormer-"
                         "Tiny/Small) would load; the released code uses biformer_base (widths 96..768)")
    depth = 2  # VSSD blocks per stage in the released HeteroMedSeg
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in sd.items():
        if k.startswith("downsample_layers."):
            out[k] = v
            continue
        m = re.match(r"^stages\.([0-2])\.(\d+)\.(norm[12]\.(?:weight|bias))$", k)
        if m and int(m.group(2)) < depth:
            out[k] = v
        else:
            dropped.append(pre + k)
    expected = [f"stages.{i}.{j}.{p}." for i in range(3) for j in range(depth) for p in ("cpe1", "attn", "cpe2", "mlp")]
    expected += ["expand_bottleneck.", "decoder.", "norm_up.", "up4.", "output."]
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "mixer": "causal", "n_win": n_win}
    notes = ["as HeteroMedSeg's load_from: same-name, same-shape tensors only (stem, downsampling, block LayerNorms)",
             f"{len(dropped)} BiFormer tensors have no counterpart (attention, MLP, pos-embed, blocks >= 2, stage 3, "
             "classifier)", "mixer='causal' as the released code"]
    return Converted("heteromedseg", kwargs, out, expected_missing=expected, notes=notes, dropped=dropped)


@register_converter(
    "vssd",
    description="VSSD-Base ImageNet-1k (NC-SSD) -> heteromedseg encoder blocks (stages 0-2, blocks 0-1); "
                "not done by the released code, which never loads VSSD weights",
    source=_VSSD_SOURCE,
)
def convert_vssd(state_dict: Mapping[str, torch.Tensor], *, num_classes: int = 1, in_chans: int = 3,
                 n_win: int | None = None, **options: Any) -> Converted:
    """VSSD ImageNet weights -> the VSSD blocks of ``heteromedseg`` (our mapping; the released code loads no VSSD file).

    HeteroMedSeg's encoder stages 0-2 are two VSSD blocks each at widths 96 / 192 / 384 with 3 / 6 / 12 SSD heads of
    width 64 and state size 64: exactly VSSD-Base's first three stages. Blocks ``layers.{i}.blocks.{0,1}`` (i < 3) map
    to ``stages.{i}.{0,1}`` (``mlp.fc1/fc2`` -> ``mlp.0/2``); VSSD-Base's deeper blocks, its stem and downsampling
    (a different conv design), its attention stage 3 and its classifier have no counterpart. The model is built with
    ``mixer="noncausal"`` (the NC-SSD these weights were trained with; the released HeteroMedSeg runs a causal scan) and
    ``mlp_ratio=4`` (VSSD's MLP width; HeteroMedSeg's released ratio is 3, which also sets the decoder's MLPs here).
    VSSD-Micro/Tiny/Small (widths 48 / 64) do not fit the 96-wide encoder and are refused.

    Args:
        state_dict: the release file's ``"model"`` entry (or the whole file).
        num_classes, in_chans: the segmentation task of the model to build.
        n_win: routing regions per side (None: input size / 32).
    """
    if options:
        raise TypeError(f"vssd: unknown options {sorted(options)}; accepted: num_classes, in_chans, n_win")
    sd, pre = _strip_prefix(unwrap_state_dict(state_dict, what="VSSD checkpoint"), ("module.",))
    try:
        widths = [int(sd[f"layers.{i}.blocks.0.norm1.weight"].shape[0]) for i in range(3)]
        heads = [int(sd[f"layers.{i}.blocks.0.attn.A_log"].shape[0]) for i in range(3)]
        conv_dim = int(sd["layers.0.blocks.0.attn.conv2d.weight"].shape[0])
        mlp_hidden = int(sd["layers.0.blocks.0.mlp.fc1.weight"].shape[0])
    except KeyError as e:
        raise ValueError(f"VSSD checkpoint: missing {e.args[0]!r}; expected the VSSD layout ('layers.<i>.blocks.<j>."
                         "{cpe1,norm1,attn,cpe2,norm2,mlp}.*' with a Mamba-2 'attn')") from None
    if widths != [96, 192, 384] or heads != [3, 6, 12]:
        raise ValueError(f"VSSD checkpoint with stage widths {widths} and SSD heads {heads}: HeteroMedSeg's encoder "
                         "stages are 96 / 192 / 384 wide with 3 / 6 / 12 heads, which only VSSD-Base matches "
                         "(VSSD-Micro/Tiny/Small are 48 / 64 wide)")
    d_state = (conv_dim - 2 * widths[0]) // 2
    depths = _count_blocks(sd, r"^layers\.(\d+)\.blocks\.(\d+)\.")
    if min(depths[:3]) < 2:
        raise ValueError(f"VSSD checkpoint: stages 0-2 need at least 2 blocks each, found {depths}")
    rename = {"mlp.fc1.weight": "mlp.0.weight", "mlp.fc1.bias": "mlp.0.bias", "mlp.fc2.weight": "mlp.2.weight",
              "mlp.fc2.bias": "mlp.2.bias"}
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in sd.items():
        m = re.match(r"^layers\.([0-2])\.blocks\.([01])\.(.*)$", k)
        if m:
            out[f"stages.{m.group(1)}.{m.group(2)}.{rename.get(m.group(3), m.group(3))}"] = v
        else:
            dropped.append(pre + k)
    expected = ["downsample_layers.", "expand_bottleneck.", "decoder.", "norm_up.", "up4.", "output."]
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "mixer": "noncausal",
                              "mlp_ratio": mlp_hidden / widths[0], "d_state": d_state, "n_win": n_win}
    notes = ["our mapping (the released HeteroMedSeg code loads no VSSD weights): VSSD-Base layers.i.blocks.0-1 -> "
             "stages.i.0-1 for i < 3",
             f"mixer='noncausal' (VSSD's NC-SSD) and mlp_ratio={kwargs['mlp_ratio']:g} (VSSD's MLP width)",
             "stem and downsampling keep their initialisation: VSSD's conv stem has another design",
             f"{len(dropped)} VSSD tensors have no counterpart (deeper blocks, stem, downsampling, stage 3, classifier)"]
    return Converted("heteromedseg", kwargs, out, expected_missing=expected, notes=notes, dropped=dropped)
