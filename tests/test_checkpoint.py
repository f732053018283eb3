"""The scan backend is a runtime choice: never in a checkpoint's model description, any backend at load time."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from typer.testing import CliRunner

import mambaseg
from mambaseg.checkpoint import build_model, load_checkpoint, save_checkpoint
from mambaseg.cli import app
from mambaseg.ops import use_backend


def _contains_key(obj, key):
    if isinstance(obj, dict):
        return key in obj or any(_contains_key(v, key) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_contains_key(v, key) for v in obj)
    return False


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A vmunet_tiny run trained for one epoch with ``--set train.scan_backend=torch``."""
    from mambaseg.data import make_synthetic_dataset

    tmp = tmp_path_factory.mktemp("scanbackend")
    data = make_synthetic_dataset(tmp / "data", n_train=4, n_val=2, size=(32, 32), seed=3)
    run = tmp / "run"
    r = CliRunner().invoke(app, ["train", "--model", "vmunet_tiny", "--data", str(data), "--epochs", "1",
                                 "--image-size", "32", "--batch-size", "2", "--out", str(run), "--device", "cpu",
                                 "--no-progress", "--set", "train.scan_backend=torch"])
    assert r.exit_code == 0, r.output
    return run


def test_trained_checkpoint_stores_no_backend(trained):
    for name in ("best.pt", "last.pt"):
        ck = load_checkpoint(trained / "checkpoints" / name)
        assert not _contains_key(ck["model"], "backend"), ck["model"]
        assert ck["config"]["train"]["scan_backend"] == "torch"  # the run's setting is in its config, not the model
    meta = json.loads(__import__("safetensors").safe_open(
        str(trained / "checkpoints" / "best.safetensors"), framework="pt").metadata()["mambaseg"])
    assert not _contains_key(meta["model"], "backend")


def test_loaded_model_follows_use_backend(trained):
    ck = load_checkpoint(trained / "checkpoints" / "best.pt")
    model = build_model(ck)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        with use_backend("torch"):
            y_torch = model(x)
        with use_backend("ref"):
            y_ref = model(x)
    torch.testing.assert_close(y_ref, y_torch, rtol=1e-5, atol=1e-5)


def test_old_checkpoint_with_backend_loads_with_one_warning(trained, tmp_path):
    ck = load_checkpoint(trained / "checkpoints" / "best.pt")
    ck["model"]["kwargs"]["backend"] = "triton"  # as written by mambaseg 0.1 for a run with backend=triton
    old = save_checkpoint(tmp_path / "old.pt", ck)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_model(load_checkpoint(old))
    msgs = [str(w.message) for w in caught if "backend" in str(w.message)]
    assert len(msgs) == 1 and "'triton'" in msgs[0] and "ignored" in msgs[0]
    with torch.no_grad():
        y = model(torch.randn(1, 3, 32, 32))  # runs on CPU although the stored backend was a GPU one
    assert torch.isfinite(y).all()
    with pytest.warns(UserWarning, match="records scan backend"):
        pred = mambaseg.load(old, device="cpu")
    assert pred.predict(torch.rand(3, 40, 40)).shape == (40, 40)


def test_create_model_rejects_backend():
    with pytest.raises(TypeError, match="runtime choice"):
        mambaseg.create_model("vmunet_tiny", backend="torch")


def test_train_init_from_a_checkpoint_reports_and_keeps_the_weights(trained, tmp_path):
    """``mambaseg train --init-from`` starts from another run's weights and prints the load report."""
    from mambaseg.data import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, size=(32, 32), seed=4)
    src = trained / "checkpoints" / "best.pt"
    r = CliRunner().invoke(app, ["train", "--model", "vmunet_tiny", "--data", str(data), "--epochs", "1",
                                 "--max-steps", "1", "--image-size", "32", "--batch-size", "2",
                                 "--out", str(tmp_path / "ft"), "--device", "cpu", "--no-progress",
                                 "--set", "optim.lr=1e-12", "--init-from", str(src)])
    assert r.exit_code == 0, r.output
    assert "init from" in r.output and "loaded" in r.output
    before = load_checkpoint(src)["state_dict"]
    after = load_checkpoint(tmp_path / "ft" / "checkpoints" / "last.pt")["state_dict"]
    # one step at a negligible learning rate: every weight is the source's (up to that step)
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-6) for k in before)
    cfg = (tmp_path / "ft" / "config.yaml").read_text()
    assert "init_from" in cfg and str(src) in cfg


def test_train_init_from_another_network_is_refused(tmp_path):
    """A checkpoint of another network fills next to nothing: ``--init-from`` refuses it instead of training from
    a fresh initialisation under a fine-tuning label."""
    from mambaseg.data import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, size=(32, 32), seed=4)
    other = mambaseg.create_model("slicemamba_tiny", num_classes=1)
    src = save_checkpoint(tmp_path / "slice.pt", {"model": other.mambaseg_spec, "state_dict": other.state_dict()})
    r = CliRunner().invoke(app, ["train", "--model", "vmunet_tiny", "--data", str(data), "--epochs", "1",
                                 "--max-steps", "1", "--image-size", "32", "--batch-size", "2",
                                 "--out", str(tmp_path / "ft"), "--device", "cpu", "--no-progress",
                                 "--init-from", str(src)])
    assert r.exit_code != 0, r.output
    text = " ".join(r.output.split())
    assert str(src) in text and "not weights of this network" in text and "Traceback" not in text
    assert not (tmp_path / "ft" / "checkpoints" / "last.pt").exists()
