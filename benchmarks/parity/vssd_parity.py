"""Parity: VSSD-Base blocks (YuHengsss/VSSD ``classification/models/mamba2.py``) vs ``heteromedseg``'s encoder stages
after ``vssd`` conversion. For each of stages 0-2, a seeded token map goes through the official blocks 0 and 1
(NC-SSD path, ``linear_attn_duality=True``, ``ssd_positve_dA=True`` as the VSSD configs) and through our
``stages[i]``; the outputs are compared.

    PYTHONPATH=$PWD/src python benchmarks/parity/vssd_parity.py --repo /tmp/official/VSSD/classification [--write]

Environment: the official file imports Triton kernels of mamba_ssm at module level (not used by the NC-SSD path);
stand-in modules provide those names and raise if called.
"""

from __future__ import annotations

import subprocess
import sys
import types

import torch

from _official_env import ROOT, compare, fill_official, fixture_record, parse_args, synth

args = parse_args("/tmp/official/VSSD/classification")


def _unused(*a, **k):
    raise NotImplementedError("the causal / gated Mamba-2 kernels are not used by VSSD's NC-SSD path")


_names = {
    "mamba_ssm.ops.triton.ssd_combined": ("mamba_chunk_scan_combined", "mamba_split_conv1d_scan_combined"),
    "mamba_ssm.ops.triton.layernorm_gated": ("RMSNorm",),
    "mamba_ssm.ops.triton.selective_state_update": ("selective_state_update",),
}
for mod in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton", *_names):
    sys.modules[mod] = types.ModuleType(mod)
for mod, names in _names.items():
    for n in names:
        setattr(sys.modules[mod], n, _unused)

from models.mamba2 import VMAMBA2  # noqa: E402  (official)

import mambaseg  # noqa: E402
from mambaseg.models._convert.heteromedseg import convert_vssd  # noqa: E402
from mambaseg.models._pretrained import load_weights  # noqa: E402

commit = subprocess.run(["git", "-C", args.repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
HW, SEED = (8, 12), 99  # token map per stage (non-square: the scan order matters)

torch.manual_seed(0)
official = VMAMBA2(embed_dim=96, depths=[3, 4, 21, 5], num_heads=[3, 6, 12, 24], mlp_ratio=4.0,
                   simple_downsample=False, simple_patch_embed=False, ssd_expansion=2, ssd_ngroups=1,
                   ssd_chunk_size=256, linear_attn_duality=True, lepe=False,
                   attn_types=["mamba2", "mamba2", "mamba2", "standard"], bidirection=False, d_state=64,
                   ssd_positve_dA=True).eval()  # vssd_base_e300.yaml + config.py defaults
entries, sd = fill_official(official)

conv = convert_vssd(dict(sd), num_classes=2)
ours = mambaseg.create_model(conv.model_name, **conv.model_kwargs).eval()
rep = load_weights(ours, conv.state_dict, strict=True, partial=True, expected_missing=conv.expected_missing)
print(f"loaded {len(rep.loaded)}, documented gaps {len(rep.missing)}, dropped {len(conv.dropped)}")

refs, diff = [], 0.0
for i in range(3):
    c = 96 * 2**i
    x = synth.seeded_input([1, HW[0] * HW[1], c], SEED + i)
    with torch.no_grad():
        y = x
        for blk in official.layers[i].blocks[:2]:
            y = blk(y, HW[0], HW[1])
        mine = ours.stages[i](x.view(1, HW[0], HW[1], c)).reshape(1, -1, c)
    refs.append(y)
    diff = max(diff, compare(f"vssd_base stage {i} blocks 0-1", mine, y))

if args.write:
    CH = 16
    flat = torch.cat([r[..., ::CH].flatten() for r in refs])
    rec = fixture_record(source=f"github.com/YuHengsss/VSSD@{commit} classification/models/mamba2.py VMAMBA2 "
                                "(vssd_base_e300.yaml)", converter="vssd", options={"num_classes": 2},
                         entries=entries, sd=sd, input_shape=[1, HW[0] * HW[1], 96], input_seed=SEED, logits=flat,
                         max_abs_diff=diff,
                         notes=f"'logits' = outputs of official layers[i].blocks[0:2] for i = 0, 1, 2 on seeded "
                               f"(1, {HW[0]}*{HW[1]}, 96*2^i) tokens (seed {SEED} + i), every {CH}th channel")
    rec["token_map"] = list(HW)
    rec["channel_stride"] = CH
    synth.save_fixture(ROOT / "tests/models/fixtures/pretrained/heteromedseg/vssd_base.json", rec)
    print("wrote fixture")
