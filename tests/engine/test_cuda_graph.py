"""train.cuda_graph: when the training step is recorded, and (on a CUDA machine) that a replayed step computes what
the eager step computes for every registered model."""

from __future__ import annotations

import pytest
import torch

import mambaseg
from mambaseg.engine import train
from mambaseg.engine.cuda_graph import graphs_wanted

from engine_helpers import tiny_config

CUDA = torch.cuda.is_available()


def test_auto_records_only_on_one_cuda_device_with_static_steps():
    cuda = torch.device("cuda", 0)
    assert graphs_wanted(None, cuda, distributed=False, compiled=False, static_steps=True) == (True, "")
    on, why = graphs_wanted(None, torch.device("cpu"), distributed=False, compiled=False, static_steps=True)
    assert not on and "not CUDA" in why
    for kw, reason in (({"distributed": True}, "DDP"), ({"compiled": True}, "compile"),
                       ({"static_steps": False}, "hooks")):
        args = {"distributed": False, "compiled": False, "static_steps": True, **kw}
        on, why = graphs_wanted(None, cuda, **args)
        assert not on and reason in why
        with pytest.raises(ValueError, match="train.cuda_graph=true cannot be honoured.*" + reason):
            graphs_wanted(True, cuda, **args)
    assert graphs_wanted(False, cuda, distributed=False, compiled=False, static_steps=True)[0] is False


def test_required_graphs_on_a_cpu_run_are_refused_before_training(tiny_model, synthetic_data, tmp_path):
    cfg = tiny_config(synthetic_data, tmp_path / "run", **{"train.cuda_graph": True, "train.device": "cpu"})
    with pytest.raises(ValueError, match="train.cuda_graph=true cannot be honoured: device cpu is not CUDA"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def _no_randomness(model: torch.nn.Module) -> None:
    """Dropout and drop-path off, so a replayed step and an eager one see the same function."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) or type(m).__name__ == "DropPath":
            m.p = 0.0


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (CUDA graphs)")
@pytest.mark.parametrize("backend", ["torch", None])
@pytest.mark.parametrize("name", mambaseg.list_models())
def test_replayed_training_step_equals_the_eager_step(name, backend, monkeypatch):
    """A replay must be one of the eager steps: a replay that reads stale inputs or parameters is off by order 1.

    What "one of the eager steps" allows, per gradient tensor (norms, not elements): its own tolerance relative to
    the tensor (``torch`` backend 1e-3; ``None``, Triton on CUDA, 2e-2: its backward adds some gradients atomically in
    no fixed order), 20x the difference between two eager steps, and 1e-5 of the whole gradient's norm. The last is for
    gradients that cancel to rounding: a conv bias ahead of a batch norm has a true gradient of zero, so its computed
    value is rounding noise of order 1e-6 of the model's gradient and a replay may give other noise. The first is for
    the GPU's own choices: cuDNN and cuBLAS may pick another algorithm inside a capture than eagerly (with TF32 on, the
    torch backend's first-conv weight gradients differed by ~4e-3 in single elements on an H100, torch 2.11; the test
    runs in full fp32). The whole gradient vector must agree within 1e-3 relative plus 20x the eager noise."""
    from mambaseg.engine.cuda_graph import GraphedTraining
    from mambaseg.runtime import scan_backend

    # TF32 convolutions and matmuls (cuDNN's default) round products to 10 mantissa bits, so a different algorithm
    # inside the capture would differ by ~1e-3: compared in full fp32, the only differences left are summation order
    for flag in (torch.backends.cudnn, torch.backends.cuda.matmul):
        monkeypatch.setattr(flag, "allow_tf32", False)
    torch.manual_seed(0)
    probe = mambaseg.create_model(name, num_classes=2)
    size = max(64, 2 * int(getattr(probe, "stride", 32)))
    if getattr(probe, "fixed_size", None) is not None:
        probe = mambaseg.create_model(name, num_classes=2, img_size=(size, size))
    model = probe.cuda().train()
    _no_randomness(model)
    x = torch.randn(2, model.in_chans if hasattr(model, "in_chans") else 3, size, size, device="cuda")
    with scan_backend(backend):
        target = torch.randn_like(model(x).float())
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def grads(fn):
        model.zero_grad(set_to_none=True)
        out = fn(x)
        loss = ((out.float() - target) ** 2).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    def rel(a, b):
        return float((a - b).double().norm() / b.double().norm().clamp_min(1e-30))

    def flat(g):
        return torch.cat([v.double().flatten() for v in g.values()])

    with scan_backend(backend):
        graphed = GraphedTraining(model, x, None)
        after_recording = model.state_dict()
        for k, v in before.items():  # recording leaves the model as it was
            assert torch.equal(after_recording[k], v), k
        loss_e, g_e = grads(model)
        model.load_state_dict(before)
        _, g_e2 = grads(model)
        for _ in range(2):  # replays are repeatable
            model.load_state_dict(before)
            loss_g, g_g = grads(graphed)
            assert graphed.replays > 0
            assert g_g.keys() == g_e.keys()
            torch.testing.assert_close(loss_g, loss_e, rtol=1e-5 if backend == "torch" else 1e-4, atol=1e-6)
            noise = rel(flat(g_e2), flat(g_e))
            assert rel(flat(g_g), flat(g_e)) <= 1e-3 + 20 * noise, f"{name}: replayed gradients (all tensors)"
            whole = float(flat(g_e).norm())
            tol = 1e-3 if backend == "torch" else 2e-2
            for k in g_e:
                diff = float((g_g[k] - g_e[k]).double().norm())
                allowed = max(tol * float(g_e[k].double().norm()), 20 * float((g_e2[k] - g_e[k]).double().norm()),
                              1e-5 * whole)
                assert diff <= allowed, f"{name} {k}: replayed gradient off by {diff:.3e} (allowed {allowed:.3e})"
        # another batch size runs eagerly through the same parameters
        small = x[:1]
        eager_before = graphed.eager_steps
        graphed(small)
        assert graphed.eager_steps == eager_before + 1
