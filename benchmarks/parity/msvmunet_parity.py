"""Parity: official MSVM-UNet (gndlwch2w/msvm-unet) vs ``msvmunet`` after ``msvmunet_official`` conversion.

    PYTHONPATH=$PWD/src python benchmarks/parity/msvmunet_parity.py --repo /tmp/official/msvm-unet [--write]

The official VMamba copy calls a compiled selective-scan extension and Triton cross-scan kernels; both are replaced by
float32 reference functions (the official pure-torch CrossScan/CrossMerge of the same file and a sequential scan).
"""

from __future__ import annotations

import subprocess

import torch

from _official_env import ROOT, compare, fill_official, fixture_record, parse_args, ref_selective_scan, synth

args = parse_args("/tmp/official/msvm-unet", [("--enc", {"default": "tiny_0230s"})])

import model.vmamba.vmamba as vm  # noqa: E402  (official)


class _RefScan:
    @staticmethod
    def apply(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *rest):
        return ref_selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)


for name in ("SelectiveScanOflex", "SelectiveScanCore", "SelectiveScanMamba"):
    setattr(vm, name, _RefScan)
vm.CrossScanTriton, vm.CrossMergeTriton = vm.CrossScan, vm.CrossMerge

from model import MSVMUNet  # noqa: E402  (official)

import mambaseg  # noqa: E402
from mambaseg.models._convert.msvmunet import convert_msvmunet_official  # noqa: E402

NUM_CLASSES, SHAPE, SEED = 2, [1, 3, 32, 64], 1234
commit = subprocess.run(["git", "-C", args.repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

torch.manual_seed(0)
official = MSVMUNet(in_channels=3, num_classes=NUM_CLASSES, enc_name=args.enc).eval()
entries, sd = fill_official(official)
x = synth.seeded_input(SHAPE, SEED)
with torch.no_grad():
    ref = official(x)

conv = convert_msvmunet_official(dict(sd))
ours = mambaseg.create_model(conv.model_name, **conv.model_kwargs).eval()
ours.load_state_dict(conv.state_dict, strict=True)
with torch.no_grad():
    out = ours(x)
diff = compare(f"msvmunet_official ({args.enc})", out, ref)

if args.write:
    rec = fixture_record(source=f"github.com/gndlwch2w/msvm-unet@{commit}", converter="msvmunet_official",
                         options={}, entries=entries, sd=sd, input_shape=SHAPE, input_seed=SEED, logits=ref,
                         max_abs_diff=diff,
                         notes=f"official MSVMUNet(in_channels=3, num_classes={NUM_CLASSES}, enc_name={args.enc!r})")
    path = ROOT / "tests/models/fixtures/pretrained/msvmunet" / f"msvmunet_official_{args.enc}.json"
    synth.save_fixture(path, rec)
    print("wrote", path.relative_to(ROOT))
