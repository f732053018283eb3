"""Parity: the VMamba-v0 family (VM-UNet, VMB-UNet, SliceMamba, VMamba v0 ImageNet encoders) vs our converted models.

    PYTHONPATH=$PWD/src python benchmarks/parity/vmamba_v0_parity.py --official /tmp/official [--write]

``--official`` holds checkouts of JCruan519/VM-UNet, jyBieber/vmbu_net, fAnchao1/SliceMamba and, under
``vmamba_d769/classification_models/vmamba_v0.py``, VMamba's ``classification/models/vmamba/vmamba.py`` at commit
d769bdb (the v0 classifier whose weights VM-UNet loads). The official files import ``mamba_ssm`` (CUDA) and ``timm``;
both are replaced in-process by small stand-ins (the float32 sequential scan of ``_official_env.ref_selective_scan``,
an identity-in-eval DropPath). Official state dicts are filled with the deterministic values of
``tests/models/_synth_checkpoint.py``; the seeded input's official logits are compared with ours after conversion.

Cases:
* ``vmunet``, ``vmbunet``, ``slicemamba``, ``slicemamba_supernet``: trained networks (num_classes 2, so the official
  wrappers return logits), converted by the format of the same name;
* ``vmamba_v0_{tiny,small,base}``: the ImageNet classifier's state dict is saved as ``{"model": ...}``, loaded by the
  official ``VMUNet.load_from`` (encoder + mirrored decoder) into a VM-UNet whose other weights were filled first with
  base seed 1, and converted by our ``vmamba_v0_<size>``; the documented gaps of our model get the same base-seed-1
  values before the logits are compared.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _official_env import ROOT, compare, fixture_record, ref_selective_scan, state_entries, synth  # noqa: E402

FIX = ROOT / "tests" / "models" / "fixtures" / "pretrained" / "vmamba_v0"
SHAPE, SEED, NUM_CLASSES, STRIDE = [1, 3, 64, 64], 1234, 2, (2, 2)
# SliceMamba genes for a 64 x 64 input (maps 16, 8, 4, 2): the 2 x 2 bottleneck blocks (positions 13-16) need (2, 2)
SLICE_ARCH = [3, 1, 2, 0, 3, 3, 1, 2, 0, 1, 3, 2, 1, 0, 0, 0, 0, 2, 1, 3, 0, 2]


class _DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x):  # the parity runs are in eval mode
        return x


def install_stand_ins() -> None:
    """``mamba_ssm.ops.selective_scan_interface`` and (if timm is absent) ``timm.models.layers`` stand-ins."""
    scan = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    scan.selective_scan_fn = scan.selective_scan_ref = ref_selective_scan
    for name in ("mamba_ssm", "mamba_ssm.ops"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["mamba_ssm.ops.selective_scan_interface"] = scan
    try:
        import timm.models.layers  # noqa: F401
    except ImportError:
        layers = types.ModuleType("timm.models.layers")
        layers.DropPath = _DropPath
        layers.to_2tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
        layers.trunc_normal_ = lambda t, mean=0.0, std=1.0, a=-2.0, b=2.0: nn.init.trunc_normal_(t, mean, std, a, b)
        for name in ("timm", "timm.models"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["timm.models.layers"] = layers


def import_official(models_dir: Path, package: str, module: str):
    """Import ``<models_dir>/<package>/<module>.py`` as ``<package>.<module>`` (fresh, relative imports working)."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
    sys.path.insert(0, str(models_dir))
    try:
        mod = __import__(f"{package}.{module}", fromlist=[module])
    finally:
        sys.path.remove(str(models_dir))
    return mod


def commit_of(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=7", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def fill(module: nn.Module, base_seed: int = 0) -> tuple[list, dict[str, torch.Tensor]]:
    entries = state_entries(module)
    sd = synth.synth_state_dict(entries, base_seed)
    module.load_state_dict(sd, strict=True)
    return entries, sd


def ours_from(fmt: str, sd: dict[str, torch.Tensor], partial: bool = False, **options):
    from mambaseg.models._pretrained import convert_weights

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "official.pth"
        torch.save(sd, path)
        model, report = convert_weights(path, fmt, partial=partial, **options)
    return model.eval(), report


def run_trained(name: str, wrapper, fmt: str, official_repo: str, options: dict, write: bool, note: str) -> float:
    torch.manual_seed(0)
    official = wrapper.eval()
    entries, sd = fill(official)
    x = synth.seeded_input(SHAPE, SEED)
    with torch.no_grad():
        ref = official(x)
    ours, report = ours_from(fmt, sd, **options)
    assert not report.missing and not report.unexpected, report.summary()
    with torch.no_grad():
        out = ours(x)
    diff = compare(name, out, ref)
    if write:
        rec = fixture_record(source=official_repo, converter=fmt, options=options, entries=entries, sd=sd,
                             input_shape=SHAPE, input_seed=SEED, logits=ref, max_abs_diff=diff, stride=STRIDE,
                             notes=note)
        synth.save_fixture(FIX / f"{name}.json", rec)
    return diff


def run_encoder(size: str, root: Path, make_official, prefix: str, options: dict, name: str, official_repo: str,
                write: bool) -> float:
    """ImageNet v0 classifier weights -> the official wrapper's ``load_from()`` vs our ``vmamba_v0_<size>`` conversion.

    ``make_official(path)`` builds the official wrapper with ``load_ckpt_path=path``; ``prefix`` is its attribute name
    (``vmunet.``, ``vmbunet.``, ``smunet.``); ``options`` are our converter options (``target``, ``arch``).
    """
    from mambaseg.models._convert.vmamba_v0 import V0_SIZES
    from mambaseg.models._pretrained import convert_weights

    dims, depths = V0_SIZES[size]
    cls_mod = import_official(root / "vmamba_d769", "classification_models", "vmamba_v0")
    torch.manual_seed(0)
    classifier = cls_mod.VSSM(depths=list(depths), dims=[dims * 2**i for i in range(4)], num_classes=1000)
    entries, enc_sd = fill(classifier)
    del classifier
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"vmamba_v0_{size}.pth"
        torch.save({"model": enc_sd}, path)
        official = make_official(str(path))
        fill(official, base_seed=1)  # what load_from leaves alone keeps these values
        official.load_from()
        official.eval()
        ours, report = convert_weights(path, f"vmamba_v0_{size}", partial=True, num_classes=NUM_CLASSES, **options)
    ours.eval()
    off_sd = official.state_dict()
    gaps = [k for k in ours.state_dict() if any(k.startswith(p) for p in report.expected_missing)]
    assert sorted(gaps) == sorted(report.missing), (gaps, report.missing)
    with torch.no_grad():
        for k in gaps:  # the documented gaps: same (seed-1) values as the official model's non-loaded weights
            ours.state_dict()[k].copy_(synth.synth_tensor(prefix + k, tuple(off_sd[prefix + k].shape), base_seed=1))
        # every weight our converter loaded equals the official load_from result
        for k in report.loaded:
            assert torch.equal(ours.state_dict()[k], off_sd[prefix + k]), k
    x = synth.seeded_input(SHAPE, SEED)
    with torch.no_grad():
        ref = official(x)
        out = ours(x)
    diff = compare(f"vmamba_v0_{size} -> {options.get('target', 'vmunet')} (load_from)", out, ref)
    if write:
        rec = fixture_record(source=f"github.com/MzeroMiko/VMamba@d769bdb + {official_repo}",
                             converter=f"vmamba_v0_{size}", options={"num_classes": NUM_CLASSES, **options},
                             entries=entries, sd=enc_sd, input_shape=SHAPE, input_seed=SEED, logits=ref,
                             max_abs_diff=diff, stride=STRIDE,
                             notes=f"VMamba v0 {size} classifier {{'model': state_dict}} -> the official wrapper's "
                                   f"load_from(); gaps = synth base seed 1 of the {prefix!r}-prefixed key")
        rec["gaps"] = {"base_seed": 1, "key_prefix": prefix, "expected_missing": report.expected_missing,
                       "loaded": len(report.loaded)}
        synth.save_fixture(FIX / f"{name}.json", rec)
    return diff


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", default="/tmp/official", type=Path, help="folder with the official checkouts")
    ap.add_argument("--write", action="store_true", help="write the fixtures under tests/models/fixtures/pretrained")
    ap.add_argument("--only", nargs="*", default=None, help="subset of cases")
    args = ap.parse_args()
    install_stand_ins()
    root: Path = args.official
    only = set(args.only or [])
    results = {}

    vmunet_mod = import_official(root / "VM-UNet" / "models", "vmunet", "vmunet")
    vmunet_mod.VSSM = sys.modules["vmunet.vmamba"].VSSM
    if not only or "vmunet" in only:
        results["vmunet"] = run_trained(
            "vmunet", vmunet_mod.VMUNet(num_classes=NUM_CLASSES, depths=[2, 2, 2, 2], depths_decoder=[2, 2, 2, 1]),
            "vmunet", f"github.com/JCruan519/VM-UNet@{commit_of(root / 'VM-UNet')}", {}, args.write,
            "official VMUNet(num_classes=2, depths=[2,2,2,2], depths_decoder=[2,2,2,1]) (configs/config_setting.py)")
    vmu_repo = f"github.com/JCruan519/VM-UNet@{commit_of(root / 'VM-UNet')}"

    def official_vmunet(dims: int):
        def make(path: str):
            net = vmunet_mod.VMUNet(num_classes=NUM_CLASSES, depths=[2, 2, 2, 2], depths_decoder=[2, 2, 2, 1],
                                    load_ckpt_path=path)
            if dims != 96:  # the wrapper passes no dims: build its VSSM at the encoder's width
                widths = [dims * 2**i for i in range(4)]
                net.vmunet = vmunet_mod.VSSM(in_chans=3, num_classes=NUM_CLASSES, depths=[2, 2, 2, 2],
                                             depths_decoder=[2, 2, 2, 1], dims=widths, dims_decoder=widths[::-1])
            return net
        return make

    for size, dims in (("tiny", 96), ("small", 96), ("base", 128)):
        if not only or f"vmamba_v0_{size}" in only:
            results[f"vmamba_v0_{size}"] = run_encoder(size, root, official_vmunet(dims), "vmunet.", {},
                                                       f"vmamba_v0_{size}", vmu_repo, args.write)

    if not only or "vmbunet" in only:
        vmb = import_official(root / "vmbu_net" / "models", "vmunet", "vmbunet")
        results["vmbunet"] = run_trained(
            "vmbunet", vmb.VMBUNet(num_classes=NUM_CLASSES, depths=[2, 2, 2, 2], depths_decoder=[2, 2, 2, 2]),
            "vmbunet", f"github.com/jyBieber/vmbu_net@{commit_of(root / 'vmbu_net')}", {}, args.write,
            "official VMBUNet(num_classes=2, depths=[2,2,2,2], depths_decoder=[2,2,2,2]) (configs/config_setting.py)")

    if not only or "vmamba_v0_tiny_vmbunet" in only:
        vmb = import_official(root / "vmbu_net" / "models", "vmunet", "vmbunet")
        results["vmamba_v0_tiny_vmbunet"] = run_encoder(
            "tiny", root, lambda p: vmb.VMBUNet(num_classes=NUM_CLASSES, depths=[2, 2, 2, 2],
                                                depths_decoder=[2, 2, 2, 2], load_ckpt_path=p),
            "vmbunet.", {"target": "vmbunet"}, "vmamba_v0_tiny_vmbunet",
            f"github.com/jyBieber/vmbu_net@{commit_of(root / 'vmbu_net')}", args.write)

    sm_repo = f"github.com/fAnchao1/SliceMamba@{commit_of(root / 'SliceMamba')}"
    if not only or "vmamba_v0_tiny_slicemamba" in only:
        smt = import_official(root / "SliceMamba" / "Evaluation" / "template" / "models", "smunet", "smunet")
        results["vmamba_v0_tiny_slicemamba"] = run_encoder(
            "tiny", root, lambda p: smt.SMUNet(num_classes=NUM_CLASSES, architecture=SLICE_ARCH, load_ckpt_path=p),
            "smunet.", {"target": "slicemamba", "arch": SLICE_ARCH}, "vmamba_v0_tiny_slicemamba", sm_repo, args.write)
    if not only or "slicemamba" in only:
        sm = import_official(root / "SliceMamba" / "Evaluation" / "template" / "models", "smunet", "smunet")
        results["slicemamba"] = run_trained(
            "slicemamba", sm.SMUNet(num_classes=NUM_CLASSES, architecture=SLICE_ARCH), "slicemamba", sm_repo,
            {"arch": SLICE_ARCH}, args.write,
            "official Evaluation/template SMUNet(num_classes=2, architecture=SLICE_ARCH), depths [2,2,9,2] / [2,2,2,1]")
    if not only or "slicemamba_supernet" in only:
        sup = import_official(root / "SliceMamba" / "models", "smunet", "smunet")

        class Searched(nn.Module):  # the supernet evaluated on one architecture, as search.py does
            def __init__(self) -> None:
                super().__init__()
                self.net = sup.SMUNet(num_classes=NUM_CLASSES)

            def forward(self, x):
                return self.net(x, SLICE_ARCH)

            def state_dict(self, *a, **k):
                return self.net.state_dict(*a, **k)

            def load_state_dict(self, sd, strict=True):
                return self.net.load_state_dict(sd, strict=strict)

        results["slicemamba_supernet"] = run_trained(
            "slicemamba_supernet", Searched(), "slicemamba_supernet", sm_repo, {"arch": SLICE_ARCH}, args.write,
            "official supernet SMUNet(num_classes=2) run with architecture=SLICE_ARCH (models/smunet)")
    print("\n| case | max abs logit diff |\n|---|---|")
    for k, v in results.items():
        print(f"| {k} | {v:.2e} |")


if __name__ == "__main__":
    main()
