"""Parity: official DermoMamba (hnkhai25/DermoMamba) vs ``dermomamba`` after ``dermomamba_official`` conversion.

    PYTHONPATH=$PWD/src python benchmarks/parity/dermomamba_parity.py --repo /tmp/official/DermoMamba [--write]

Environment fixes for the released files (no model code is changed): ``mamba_ssm.ops.selective_scan_interface`` is
provided by a stand-in module whose ``selective_scan_fn`` is the float32 reference scan; ``module/VSSBlock.py`` uses
``F.silu`` without importing ``F`` (NameError at the first forward), so ``F`` is added to that module's namespace;
``module/model/proposed_net.py`` imports ``model.encoder``, so ``<repo>/module`` is put on the import path too.
The released bottleneck hard-codes the SS2D widths 6 and 8, so the input is 192 x 256.
"""

from __future__ import annotations

import subprocess
import sys
import types

import torch
import torch.nn.functional as F

from _official_env import ROOT, compare, fill_official, fixture_record, parse_args, ref_selective_scan, synth

args = parse_args("/tmp/official/DermoMamba")
sys.path.insert(0, f"{args.repo}/module")


def _selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    if z is not None or return_last_state:
        raise NotImplementedError("not used by DermoMamba")
    return ref_selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)


pkg = types.ModuleType("mamba_ssm")
ops = types.ModuleType("mamba_ssm.ops")
ssi = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
ssi.selective_scan_fn = ssi.selective_scan_ref = _selective_scan_fn
sys.modules.update({"mamba_ssm": pkg, "mamba_ssm.ops": ops, "mamba_ssm.ops.selective_scan_interface": ssi})

import module.VSSBlock as vss_mod  # noqa: E402  (official)

vss_mod.F = F
from model.proposed_net import DermoMamba  # noqa: E402  (official, module/model/proposed_net.py)

import mambaseg  # noqa: E402
from mambaseg.models._convert.dermomamba import convert_dermomamba_official  # noqa: E402
from mambaseg.models._pretrained import load_weights  # noqa: E402

SHAPE, SEED, STRIDE = [1, 3, 192, 256], 2024, (4, 4)
commit = subprocess.run(["git", "-C", args.repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

torch.manual_seed(0)
official = DermoMamba().eval()
entries, sd = fill_official(official)
x = synth.seeded_input(SHAPE, SEED)
with torch.no_grad():
    ref = official(x)

conv = convert_dermomamba_official(dict(sd))
ours = mambaseg.create_model(conv.model_name, **conv.model_kwargs).eval()
report = load_weights(ours, conv.state_dict, strict=True, notes=conv.notes, dropped=conv.dropped)
print(report.summary())
with torch.no_grad():
    out = ours(x)
diff = compare("dermomamba_official", out, ref)

if args.write:
    rec = fixture_record(source=f"github.com/hnkhai25/DermoMamba@{commit}", converter="dermomamba_official",
                         options={}, entries=entries, sd=sd, input_shape=SHAPE, input_seed=SEED, logits=ref,
                         max_abs_diff=diff, stride=STRIDE,
                         notes="official DermoMamba() (module/model/proposed_net.py); logits stored every 4th row "
                               "and column, the checksum covers all of them")
    path = ROOT / "tests/models/fixtures/pretrained/dermomamba/dermomamba_official.json"
    synth.save_fixture(path, rec)
    print("wrote", path.relative_to(ROOT))
