"""A finished search leaves the found network as a normal, model-sized checkpoint (``OUT/checkpoints/best.pt``) and
removes the supernet's checkpoints unless ``--keep-supernet``; the network's weights are the supernet's on that path."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mambaseg.cli import app

KW = {"dims": 8, "depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1], "d_state": 4, "drop_path_rate": 0.0}
TINY_SET = "model.kwargs={dims: 8, depths: [1, 1, 1, 1], depths_decoder: [1, 1, 1, 1], d_state: 4, drop_path_rate: 0.0}"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".ckpt", ".tar")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mambaseg.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", n_train=12, n_val=4, size=(40, 40), seed=1)


def _search(out, synth, extra=()):
    return CliRunner().invoke(app, [
        "search", "--data", str(synth), "--supernet-epochs", "2", "--generations", "2", "--population", "4",
        "--image-size", "32", "--batch-size", "4", "--out", str(out), "--device", "cpu", "--num-workers", "0",
        "--seed", "11", "--no-progress", "--set", TINY_SET, *extra])


def _found_model(out):
    """The network arch.json describes, built from scratch (its parameter bytes are what the files may hold)."""
    from mambaseg.models import create_model

    arch = json.loads((out / "arch.json").read_text())
    return arch, create_model("slicemamba", num_classes=1, in_chans=3, arch=arch["arch"], **arch["model_kwargs"])


def test_finished_search_leaves_model_sized_checkpoints(tmp_path, synth):
    from mambaseg.checkpoint import build_model, load_checkpoint

    out = tmp_path / "OUT"
    r = _search(out, synth)
    assert r.exit_code == 0, r.output
    arch, model = _found_model(out)
    assert arch["finished"] and arch["supernet"]["files_removed"] and arch["checkpoint"] == "checkpoints/best.pt"
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    files = [p for p in out.rglob("*") if p.is_file() and p.name.endswith(CHECKPOINT_SUFFIXES)]
    assert [p.relative_to(out).as_posix() for p in files] == ["checkpoints/best.pt"]
    total = sum(p.stat().st_size for p in files)
    assert param_bytes <= total <= 1.3 * param_bytes, (total, param_bytes)
    assert not (out / "supernet" / "last.pt").exists() and not (out / "supernet" / "best.pt").exists()
    assert (out / "supernet" / "train.log").is_file()  # the supernet run's log stays
    assert "removed (search finished" in r.output and "checkpoints" in r.output

    # a normal checkpoint: model spec of `train --model slicemamba --arch`, no training state, loads strictly
    ck = load_checkpoint(out / "checkpoints" / "best.pt")
    assert ck["model"]["name"] == "slicemamba" and ck["model"]["kwargs"]["arch"] == arch["arch"]
    assert not {"optimizer", "scheduler", "scaler", "rng", "history"} & set(ck)
    assert ck["normalization"] is not None and ck["image_size"] == [32, 32]
    assert ck["search"]["arch"] == arch["arch"] and ck["search"]["fitness"] == arch["fitness"]
    net = build_model(ck)
    assert set(net.state_dict()) == set(model.state_dict())

    # through the CLI's normal paths: evaluate, predict, --init-from
    ev = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(out / "checkpoints" / "best.pt"), "--data",
                                  str(synth), "--device", "cpu", "--json", "--out", str(tmp_path / "ev")])
    assert ev.exit_code == 0, ev.output
    assert 0.0 <= json.loads((tmp_path / "ev" / "metrics.json").read_text())["dice"] <= 1.0
    pr = CliRunner().invoke(app, ["predict", "--checkpoint", str(out / "checkpoints" / "best.pt"), "--input",
                                  str(synth / "val" / "images"), "--out", str(tmp_path / "pred"), "--device", "cpu",
                                  "--no-overlays"])
    assert pr.exit_code == 0, pr.output
    assert len(list((tmp_path / "pred" / "masks").iterdir())) == 4
    from mambaseg import init_from

    report = init_from(model, out / "checkpoints" / "best.pt")
    assert not report.missing and not report.unexpected and not report.mismatched
    assert all(torch.equal(model.state_dict()[k], ck["state_dict"][k]) for k in ck["state_dict"])


def test_subnet_logits_equal_the_supernet_on_that_path_and_keep_supernet_keeps_its_files(tmp_path, synth):
    from mambaseg.checkpoint import build_model, load_checkpoint
    from mambaseg.nas.supernet import SliceMambaSupernet

    out = tmp_path / "OUT"
    r = _search(out, synth, ["--keep-supernet"])
    assert r.exit_code == 0, r.output
    arch = json.loads((out / "arch.json").read_text())
    assert arch["finished"] and not arch["supernet"]["files_removed"]
    assert (out / "supernet" / "last.pt").is_file() and (out / "supernet" / "best.pt").is_file()
    assert "kept (--keep-supernet)" in r.output

    sn_ck = load_checkpoint(out / "supernet" / "best.pt")
    supernet = SliceMambaSupernet(num_classes=1, in_chans=3, **KW)
    supernet.load_state_dict(sn_ck["state_dict"])
    supernet.eval().set_arch(arch["arch"])
    sub_ck = load_checkpoint(out / "checkpoints" / "best.pt")
    subnet = build_model(sub_ck)
    assert not subnet.training
    assert sub_ck["normalization"] == sn_ck["normalization"] and sub_ck["label_map"] == sn_ck["label_map"]
    assert sub_ck["epoch"] == sn_ck["epoch"]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = supernet(x), subnet(x)
    assert supernet.last_arch == tuple(arch["arch"])
    torch.testing.assert_close(got, want, rtol=0.0, atol=1e-6)
    # another path of the supernet gives other logits: the comparison can tell paths apart
    other = [(g + 1) % 4 for g in arch["arch"]]
    with torch.no_grad(), supernet.use_arch(other):
        assert (supernet(x) - want).abs().max() > 1e-4


def test_interrupted_search_keeps_the_supernet_to_resume(tmp_path, synth):
    out = tmp_path / "OUT"
    r = _search(out, synth, ["--supernet-time-limit", "0"])  # stops after the first of two supernet epochs
    assert r.exit_code == 0, r.output
    arch = json.loads((out / "arch.json").read_text())
    assert not arch["finished"] and arch["supernet"]["stopped_early"] and not arch["supernet"]["files_removed"]
    assert (out / "supernet" / "last.pt").is_file() and (out / "supernet" / "best.pt").is_file()
    assert (out / "checkpoints" / "best.pt").is_file()  # the network found so far is written all the same
    assert "search not finished" in r.output
    r2 = _search(out, synth)  # resumes the second epoch, finishes, then removes the supernet's checkpoints
    assert r2.exit_code == 0, r2.output
    assert "resuming after epoch 1/2" in r2.output
    arch2 = json.loads((out / "arch.json").read_text())
    assert arch2["finished"] and arch2["supernet"]["epochs"] == 2 and arch2["supernet"]["files_removed"]
    assert not (out / "supernet" / "last.pt").exists() and not (out / "supernet" / "best.pt").exists()
