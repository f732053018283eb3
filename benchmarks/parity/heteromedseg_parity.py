"""Parity: official HeteroMedSeg (Yuyan-Bin/Synergistic-Network BRAUnet) vs ``heteromedseg`` after
``heteromedseg_official`` conversion, and the official ``BRAUnet.load_from`` of a BiFormer-Base checkpoint
(rayleizhu/BiFormer) vs the ``biformer`` converter loaded on top of the same weights.

    git clone <Synergistic-Network> /tmp/official/hms && git -C /tmp/official/hms checkout 866f8dc -- \
        networks/bra.py networks/bra_block.py networks/bra_unet.py
    PYTHONPATH=$PWD/src python benchmarks/parity/heteromedseg_parity.py --repo /tmp/official/hms \
        --biformer-repo /tmp/official/BiFormer [--write]

Environment fixes (no model code changed): the HEAD versions of ``networks/bra.py``, ``bra_block.py`` and
``bra_unet.py`` do not import (syntax errors, deleted names), so their first-commit versions are used; the Triton
``mamba_chunk_scan_combined`` is replaced by a sequential float32 causal SSD; ``bra_unet.py`` rebinds
``pathlib.PosixPath`` to ``WindowsPath`` at import, which is undone right after the import; ``torch.load`` is
redirected to the synthesized BiFormer checkpoint while ``load_from`` runs (its path is hard-coded).
Input 224 x 224 with n_win 7: the released Synapse configuration.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import types

import torch

from _official_env import ROOT, compare, fill_official, fixture_record, parse_args, ref_ssd_causal, state_entries, synth

args = parse_args("/tmp/official/hms", [("--biformer-repo", {"default": "/tmp/official/BiFormer"})])


def _chunk_scan(x, dt, A, B, C, chunk_size=None, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
                dt_softplus=False, **kw):
    if initial_states is not None or seq_idx is not None:
        raise NotImplementedError("not used by HeteroMedSeg")
    return ref_ssd_causal(x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, z=z, **kw)


for name in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton", "mamba_ssm.ops.triton.ssd_combined"):
    sys.modules[name] = types.ModuleType(name)
sys.modules["mamba_ssm.ops.triton.ssd_combined"].mamba_chunk_scan_combined = _chunk_scan

_posix = pathlib.PosixPath
from networks.bra_unet import BRAUnet  # noqa: E402  (official)

pathlib.PosixPath = _posix

sys.path.insert(0, args.biformer_repo)
from models.biformer import biformer_base  # noqa: E402  (official BiFormer)

import mambaseg  # noqa: E402
from mambaseg.models._convert.heteromedseg import convert_biformer, convert_heteromedseg_official  # noqa: E402
from mambaseg.models._pretrained import load_weights  # noqa: E402


def _head(repo: str) -> str:
    return subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


IMG, NWIN, NCLS, SEED, STRIDE = 224, 7, 2, 77, (4, 4)
SHAPE = [1, 3, IMG, IMG]
commit = _head(args.repo)
changed = subprocess.run(["git", "-C", args.repo, "status", "--short", "networks"], capture_output=True,
                         text=True).stdout.split()
print("official commit", commit, "locally replaced files:", changed[1::2])

torch.manual_seed(0)
official = BRAUnet(img_size=IMG, in_chans=3, num_classes=NCLS, n_win=NWIN).eval()
entries, sd = fill_official(official)
x = synth.seeded_input(SHAPE, SEED)
with torch.no_grad():
    ref = official(x)

conv = convert_heteromedseg_official(dict(sd))
ours = mambaseg.create_model(conv.model_name, **conv.model_kwargs).eval()
rep = load_weights(ours, conv.state_dict, strict=True, dropped=conv.dropped, notes=conv.notes)
print(rep.summary().splitlines()[:8])
with torch.no_grad():
    out = ours(x)
diff = compare("heteromedseg_official (224, n_win 7)", out, ref)

# BiFormer-Base through the official load_from, on top of the same weights
torch.manual_seed(0)
bif = biformer_base()
bif_entries = state_entries(bif)
bif_sd = synth.synth_state_dict(bif_entries, base_seed=1)
_real_load = torch.load
torch.load = lambda *a, **k: {"model": dict(bif_sd)}
try:
    official.load_from()
finally:
    torch.load = _real_load
with torch.no_grad():
    ref_bif = official(x)
bconv = convert_biformer(dict(bif_sd), num_classes=NCLS)
brep = load_weights(ours, bconv.state_dict, strict=True, partial=True, expected_missing=bconv.expected_missing,
                    dropped=bconv.dropped)
print(f"biformer: loaded {len(brep.loaded)}, dropped {len(bconv.dropped)}")
with torch.no_grad():
    out_bif = ours(x)
diff_bif = compare("biformer_base via load_from", out_bif, ref_bif)
print("logits moved by the BiFormer load:", (ref_bif - ref).abs().max().item())

if args.write:
    src = f"github.com/Yuyan-Bin/Synergistic-Network@{commit} (networks/bra.py, bra_block.py, bra_unet.py at 866f8dc)"
    rec = fixture_record(source=src, converter="heteromedseg_official", options={}, entries=entries, sd=sd,
                         input_shape=SHAPE, input_seed=SEED, logits=ref, max_abs_diff=diff, stride=STRIDE,
                         notes=f"official BRAUnet(img_size={IMG}, in_chans=3, num_classes={NCLS}, n_win={NWIN}); "
                               "logits stored every 4th row and column, the checksum covers all")
    synth.save_fixture(ROOT / "tests/models/fixtures/pretrained/heteromedseg/heteromedseg_official.json", rec)
    rec = fixture_record(source=f"github.com/rayleizhu/BiFormer@{_head(args.biformer_repo)} biformer_base",
                         converter="biformer", options={"num_classes": NCLS}, entries=bif_entries, sd=bif_sd,
                         input_shape=SHAPE, input_seed=SEED, logits=ref_bif, max_abs_diff=diff_bif, stride=STRIDE,
                         notes="logits of the official BRAUnet of heteromedseg_official.json after its load_from() "
                               "of this checkpoint; base_seed 1")
    rec["base_seed"] = 1
    synth.save_fixture(ROOT / "tests/models/fixtures/pretrained/heteromedseg/biformer_base.json", rec)
    print("wrote fixtures")
