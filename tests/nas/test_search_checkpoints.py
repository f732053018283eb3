"""What a search's supernet checkpoints hold, measured: ``best.pt`` = the supernet's weights (each parameter once, no
optimizer state), ``last.pt`` = the weights + the optimizer state an exact resume needs; and a CPU run holds no second
copy of the weights or optimizer state in memory to write them."""

from __future__ import annotations

import gc
import os

import pytest
import torch
from typer.testing import CliRunner

from mambaseg.cli import app

KW = {"dims": 8, "depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1], "d_state": 4, "drop_path_rate": 0.0}
TINY_SET = "model.kwargs={dims: 8, depths: [1, 1, 1, 1], depths_decoder: [1, 1, 1, 1], d_state: 4, drop_path_rate: 0.0}"
PER_TENSOR = 512  # bytes of zip record and pickle entry a torch.save file spends per tensor (about 350 measured)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mambaseg.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", n_train=12, n_val=4, size=(40, 40), seed=1)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _nbytes(obj) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(obj))


def test_search_checkpoints_hold_the_weights_once_and_only_the_resume_state(tmp_path, synth):
    from mambaseg.nas.supernet import SliceMambaSupernet

    out = tmp_path / "OUT"
    r = CliRunner().invoke(app, [
        "search", "--data", str(synth), "--supernet-epochs", "3", "--generations", "1", "--population", "2",
        "--image-size", "32", "--batch-size", "4", "--out", str(out), "--device", "cpu", "--num-workers", "0",
        "--seed", "3", "--no-progress", "--keep-supernet", "--set", TINY_SET])
    assert r.exit_code == 0, r.output
    ref = SliceMambaSupernet(num_classes=1, in_chans=3, **KW)
    params = dict(ref.named_parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in params.values())  # the supernet's parameter bytes
    assert not list(ref.buffers())  # nothing recomputable to leave out: every state-dict entry is a parameter

    best_pt, last_pt = out / "supernet" / "best.pt", out / "supernet" / "last.pt"
    best = torch.load(best_pt, map_location="cpu", weights_only=True)
    last = torch.load(last_pt, map_location="cpu", weights_only=True)
    for ck in (best, last):
        sd = ck["state_dict"]
        assert set(sd) == set(params)
        assert all(sd[k].shape == params[k].shape and sd[k].dtype == torch.float32 for k in sd)
        assert _nbytes(sd) == weight_bytes
        # no view into a larger buffer: the file stores each tensor's own bytes
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in sd.values())
    # best.pt: weights only
    assert not {"optimizer", "scheduler", "scaler", "rng", "hooks", "ema", "history"} & set(best)
    n_best = len(list(_tensors(best)))
    assert os.path.getsize(best_pt) <= weight_bytes + PER_TENSOR * n_best + 64 * 1024, (
        os.path.getsize(best_pt), weight_bytes)
    # last.pt: + AdamW's two moments (and step) of the parameters that have been on a path, nothing else big
    order = [n for n, _ in ref.named_parameters()]
    state = last["optimizer"]["state"]
    assert 0 < len(state) <= len(order)
    for idx, s in state.items():
        p = params[order[int(idx)]]
        assert set(s) == {"step", "exp_avg", "exp_avg_sq"}
        assert s["exp_avg"].shape == s["exp_avg_sq"].shape == p.shape and s["step"].numel() == 1
    opt_bytes = _nbytes(last["optimizer"])
    assert opt_bytes <= 2 * weight_bytes + 8 * len(state)
    other = _nbytes({k: v for k, v in last.items() if k not in ("state_dict", "optimizer")})
    assert other <= 64 * 1024  # RNG states and the like
    n_last = len(list(_tensors(last)))
    assert os.path.getsize(last_pt) <= weight_bytes + opt_bytes + other + PER_TENSOR * n_last + 64 * 1024, (
        os.path.getsize(last_pt), weight_bytes, opt_bytes)


def _live_storage_bytes() -> tuple[int, int]:
    """(bytes of every tensor storage reachable from Python, bytes of the parameters, their gradients and the
    optimizer states among them); each storage counted once."""
    live: dict[int, int] = {}
    owned: set[int] = set()

    def key(t: torch.Tensor) -> int:
        s = t.untyped_storage()
        live.setdefault(s.data_ptr(), s.nbytes())
        return s.data_ptr()

    for o in gc.get_objects():
        if isinstance(o, torch.Tensor):
            if o.device.type != "cpu" or o.untyped_storage().nbytes() == 0:
                continue
            k = key(o)
            if isinstance(o, torch.nn.Parameter):
                owned.add(k)
                if o.grad is not None:
                    owned.add(key(o.grad))
        elif isinstance(o, torch.optim.Optimizer):
            owned.update(key(t) for t in _tensors(list(o.state.values())) if t.untyped_storage().nbytes())
    return sum(live.values()), sum(live[k] for k in owned)


def test_cpu_checkpoints_are_written_without_a_second_copy_of_the_state(tmp_path, synth, monkeypatch):
    from mambaseg.configs import RunConfig, apply_overrides
    from mambaseg.engine import open_data
    from mambaseg.nas.runner import SupernetHooks, train_supernet

    # measured while every checkpoint is being written: what the process holds beyond the parameters, their
    # gradients and the optimizer state (a snapshot would add the weights, and for last.pt the moments, again)
    seen: list[tuple[str, int, int]] = []
    real_save = torch.save

    def measuring_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "state_dict" in obj:
            gc.collect()  # reachable tensors only: garbage awaiting the collector is no design choice
            total, owned = _live_storage_bytes()
            seen.append(("optimizer" in obj, total - owned - before, _nbytes(obj["state_dict"])))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", measuring_save)
    cfg = apply_overrides(RunConfig(), {
        "data.path": str(synth), "data.image_size": [32, 32], "data.num_workers": 0,
        "train.batch_size": 4, "train.device": "cpu", "train.seed": 5, "loss.name": "bce_dice",
    })
    train_ids = list(open_data(synth, apply_overrides(cfg, {"data.augment": False}), splits=("train",)).train.ids)[:8]
    gc.collect()
    before = _live_storage_bytes()[0]  # tensors other tests left alive
    res = train_supernet(cfg, tmp_path / "sn", SupernetHooks(3, train_ids, KW), 2, progress=False, log=print)
    assert res["epochs"] == 2
    assert {s[0] for s in seen} == {True, False}  # both last.pt and best.pt writes were measured
    for is_last, extra, weights in seen:
        # kept validation inputs, a batch, RNG states: small beside a copy of the weights
        assert extra < 0.25 * weights, ("last.pt" if is_last else "best.pt", extra, weights)
