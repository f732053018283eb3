"""Where one training step of a recipe's model spends its GPU time: top kernels and the selective-scan calls.

Builds the recipe's model, loss, optimizer and batch size at its image size, runs ``--warmup`` steps, then profiles
``--steps`` steps with ``torch.profiler`` (CUDA activity) and prints the kernels by total time, the number of kernel
launches per step, and every selective-scan call's problem shape (B, channels, L, N). Writes
``benchmarks/results/step_profile_<recipe>_<device>.json``.

Usage (on a CUDA machine)::

    PYTHONUNBUFFERED=1 python benchmarks/step_profile.py --recipe dermomamba_ph2
    python benchmarks/step_profile.py --recipe vmunet_ph2 --amp bf16
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

from _common import RESULTS, device_tag, environment, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="dermomamba_ph2")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--amp", default=None, help="bf16 or off (default: the recipe's train.amp resolved on CUDA)")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    import mambaseg
    import mambaseg.layers.ss2d as ss2d_mod
    from mambaseg.configs import load_recipe
    from mambaseg.engine import build_optimizer
    from mambaseg.losses import create_loss
    from mambaseg.runtime import autocast_for, resolve_amp

    cfg = load_recipe(args.recipe)
    dev = torch.device("cuda")
    amp_dtype, _ = resolve_amp(args.amp or cfg.train.amp, dev)
    h, w = (int(s) for s in cfg.data.image_size)
    model = mambaseg.create_model(cfg.model.name, num_classes=1, in_chans=3, image_size=(h, w),
                                  **(cfg.model.kwargs or {})).to(dev)
    loss_fn = create_loss(cfg.loss.name, **(cfg.loss.kwargs or {}))
    if isinstance(loss_fn, torch.nn.Module):
        loss_fn = loss_fn.to(dev)
    opt = build_optimizer(model, cfg.optim)
    bs = int(cfg.train.batch_size)
    x = torch.rand(bs, 3, h, w, device=dev)
    y = (torch.rand(bs, h, w, device=dev) > 0.7).long()

    shapes: collections.Counter = collections.Counter()
    real = ss2d_mod.selective_scan  # the layers call the scan dispatcher through this name

    def recording(u, delta, A, B, C, *a, **k):
        shapes[(tuple(u.shape), int(A.shape[-1]), str(u.dtype))] += 1
        return real(u, delta, A, B, C, *a, **k)

    def step() -> None:
        with autocast_for(dev, amp_dtype):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - t0) / args.steps * 1e3

    ss2d_mod.selective_scan = recording
    step()
    ss2d_mod.selective_scan = real
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[ev.name[:90]]
            k[0] += ev.device_time_total / 1e3 if hasattr(ev, "device_time_total") else ev.cuda_time_total / 1e3
            k[1] += 1
    total_gpu = sum(v[0] for v in kernels.values()) / args.steps
    launches = sum(v[1] for v in kernels.values()) / args.steps
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[: args.top]
    print(f"{args.recipe}: {cfg.model.name} batch {bs} at {h}x{w}, amp {amp_dtype}: step {step_ms:.1f} ms wall, "
          f"{total_gpu:.1f} ms GPU kernels, {launches:.0f} kernel launches per step")
    print(f"{'kernel':90s} {'ms/step':>8s} {'calls/step':>10s}")
    rows = []
    for name, (ms, n) in top:
        print(f"{name:90s} {ms / args.steps:8.2f} {n / args.steps:10.1f}")
        rows.append({"kernel": name, "ms_per_step": round(ms / args.steps, 3), "calls_per_step": n / args.steps})
    print("selective-scan calls per forward (u shape, N, dtype): count")
    for (shape, n, dt), c in sorted(shapes.items()):
        print(f"  {shape} N={n} {dt}: {c}")
    write_json(RESULTS / f"step_profile_{args.recipe}_{device_tag()}.json", {
        "command": "python benchmarks/step_profile.py --recipe " + args.recipe,
        "environment": environment(),
        "recipe": args.recipe, "model": cfg.model.name, "batch": bs, "image_size": [h, w], "amp": str(amp_dtype),
        "step_ms_wall": round(step_ms, 2), "gpu_kernel_ms_per_step": round(total_gpu, 2),
        "kernel_launches_per_step": launches, "top_kernels": rows,
        "scan_calls_per_forward": [{"u_shape": list(s), "N": n, "dtype": d, "count": c}
                                   for (s, n, d), c in sorted(shapes.items())],
    })


if __name__ == "__main__":
    main()
