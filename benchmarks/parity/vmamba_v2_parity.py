"""Parity: VMamba-v2 ImageNet encoders (MzeroMiko/VMamba classification models) vs ``msvmunet``'s encoder after
``vmamba_v2`` conversion. Compares the four stage outputs (what MSVM-UNet's decoder consumes).

    PYTHONPATH=$PWD/src python benchmarks/parity/vmamba_v2_parity.py --repo /tmp/official/VMamba/classification \
        [--variants vmamba_tiny_s1l8,...] [--write]

VMamba's own code runs on CPU with its pure-torch cross scan and selective scan (``csms6s.selective_scan_torch``);
only ``torch.cuda.device(...)`` (used as a context manager around the cross scan) is made a no-op for CPU tensors.
"""

from __future__ import annotations

import contextlib
import subprocess

import torch

from _official_env import ROOT, compare, fill_official, fixture_record, parse_args, synth

# release file of each official constructor (README / vmamba.py of the repository)
RELEASES = {
    "vmamba_tiny_s1l8": "vssm1_tiny_0230s_ckpt_epoch_264.pth",
    "vmamba_small_s1l20": "vssm1_small_0229s_ckpt_epoch_240.pth",
    "vmamba_base_s1l20": "vssm1_base_0229s_ckpt_epoch_225.pth",
    "vmamba_tiny_s2l5": "vssm_tiny_0230_ckpt_epoch_262.pth",
    "vmamba_small_s2l15": "vssm_small_0229_ckpt_epoch_222.pth",
    "vmamba_base_s2l15": "vssm_base_0229_ckpt_epoch_237.pth",
}
FIXTURE_VARIANTS = ("vmamba_tiny_s1l8", "vmamba_base_s1l20", "vmamba_tiny_s2l5")

args = parse_args("/tmp/official/VMamba/classification",
                  [("--variants", {"default": ",".join(RELEASES)})])
_real_cuda_device = torch.cuda.device
torch.cuda.device = lambda d: contextlib.nullcontext() if torch.device(d).type == "cpu" else _real_cuda_device(d)

import models.vmamba as official_vmamba  # noqa: E402  (official)

import mambaseg  # noqa: E402
from mambaseg.models._convert.msvmunet import convert_vmamba_v2  # noqa: E402

SHAPE, SEED = [1, 3, 32, 64], 4321
commit = subprocess.run(["git", "-C", args.repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
CH_STRIDE = 8  # channels kept in the fixture: every 8th

for variant in args.variants.split(","):
    torch.manual_seed(0)
    official = getattr(official_vmamba, variant)().eval()
    entries, sd = fill_official(official)
    feats: list[torch.Tensor] = []
    hooks = [layer.blocks.register_forward_hook(lambda m, i, o: feats.append(o)) for layer in official.layers]
    x = synth.seeded_input(SHAPE, SEED)
    with torch.no_grad():
        official(x)
    for h in hooks:
        h.remove()

    conv = convert_vmamba_v2(dict(sd), num_classes=2)
    ours = mambaseg.create_model(conv.model_name, **conv.model_kwargs).eval()
    missing, unexpected = ours.load_state_dict(conv.state_dict, strict=False)
    assert not unexpected and all(k.startswith("decoder.") for k in missing), (unexpected, missing[:5])
    with torch.no_grad():
        mine = ours.encoder(x)
    diff = max(compare(f"{variant} ({RELEASES[variant]}) stage {i}", a, b) for i, (a, b) in enumerate(zip(mine, feats)))
    print(f"{variant}: max over stages {diff:.3e}; kwargs {conv.model_kwargs}")

    if args.write and variant in FIXTURE_VARIANTS:
        sub = torch.cat([f[:, ::CH_STRIDE].flatten() for f in feats])
        rec = fixture_record(source=f"github.com/MzeroMiko/VMamba@{commit} classification/models/vmamba.py:{variant}",
                             converter="vmamba_v2", options={"num_classes": 2}, entries=entries, sd=sd,
                             input_shape=SHAPE, input_seed=SEED, logits=sub, max_abs_diff=diff,
                             notes=f"release file {RELEASES[variant]}; 'logits' = the 4 encoder stage outputs, every "
                                   f"{CH_STRIDE}th channel, flattened and concatenated")
        rec["feature_shapes"] = [list(f.shape) for f in feats]
        rec["channel_stride"] = CH_STRIDE
        path = ROOT / "tests/models/fixtures/pretrained/msvmunet" / f"vmamba_v2_{variant}.json"
        synth.save_fixture(path, rec)
        print("wrote", path.relative_to(ROOT))
