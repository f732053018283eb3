"""Checkpoints: weights-only round trip, atomic writes, clear errors, safetensors export, model rebuild."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mambaseg
from mambaseg import checkpoint as ckmod
from mambaseg.engine import (
    CheckpointError,
    build_model,
    export_safetensors,
    load_checkpoint,
    save_checkpoint,
)


def _payload(model):
    return {
        "model": dict(model.mambaseg_spec),
        "state_dict": model.state_dict(),
        "normalization": {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]},
        "label_map": {"background": 0, "foreground": 255},
        "image_size": [32, 32],
        "config": {"train": {"epochs": 2, "grad_clip": None}},
        "epoch": 2,
        "step": np.int64(17),
        "metrics": {"dice": np.float64(0.5), "pooled": {"per_class": {"dsc": [0.5]}}},
        "rng": {"torch": torch.get_rng_state()},
        "extra": (1, 2.5, "x"),
    }


@pytest.fixture(scope="module")
def tiny():
    return mambaseg.create_model("vmunet_tiny", dims=8, d_state=2)


def test_round_trip_weights_only(tiny, tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _payload(tiny))
    raw = torch.load(path, weights_only=True)  # loads without unpickling any code
    assert raw["format"] == ckmod.CHECKPOINT_FORMAT and raw["library_version"] == mambaseg.__version__
    assert raw["step"] == 17 and isinstance(raw["step"], int)
    assert raw["metrics"]["dice"] == 0.5 and raw["extra"] == (1, 2.5, "x")
    ck = load_checkpoint(path)
    for k, v in tiny.state_dict().items():
        assert torch.equal(ck["state_dict"][k], v)
    model = build_model(ck)
    assert type(model).__name__ == type(tiny).__name__ and not model.training
    x = torch.randn(1, 3, 32, 32)
    tiny.eval()
    with torch.no_grad():
        assert torch.equal(model(x), tiny(x))


def test_atomic_write_keeps_previous_file_on_failure(tiny, tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {**_payload(tiny), "epoch": 1})
    before = path.read_bytes()

    def exploding_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(ckmod.torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {**_payload(tiny), "epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a checkpoint .not a torch checkpoint archive"):
        load_checkpoint(bad)
    cut = tmp_path / "cut.pt"  # a torch archive cut short: torch's reason, as "corrupt, truncated"
    torch.save({"x": torch.zeros(1000)}, cut)
    cut.write_bytes(cut.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a mambaseg checkpoint"):
        load_checkpoint(foreign)


def test_objects_are_refused():
    with pytest.raises(TypeError, match=r"checkpoint\.x"):
        ckmod.to_primitive({"x": object()})


def test_safetensors_export(tiny, tmp_path):
    ck = load_checkpoint(save_checkpoint(tmp_path / "c.pt", _payload(tiny)))
    st = export_safetensors(tmp_path / "best.safetensors", ck)
    back = load_checkpoint(st)
    assert back["model"]["name"] == "vmunet_tiny" and back["image_size"] == [32, 32]
    assert back["normalization"] == ck["normalization"] and back["label_map"] == ck["label_map"]
    for k, v in ck["state_dict"].items():
        assert torch.equal(back["state_dict"][k], v)
    build_model(back)


def test_unknown_model_in_checkpoint(tiny, tmp_path):
    p = _payload(tiny)
    p["model"] = {**p["model"], "name": "not_a_model"}
    with pytest.raises(CheckpointError, match="not_a_model"):
        build_model(load_checkpoint(save_checkpoint(tmp_path / "c.pt", p)))
