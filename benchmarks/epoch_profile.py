"""Where one epoch of a real training run spends its time: kernels by GPU time and host operations by CPU time.

Runs ``mambaseg train`` in this process (the recipe, the data, ``--epochs``, any ``--set``) and wraps epoch
``--epoch`` (training steps with CUDA graphs as the run records them, validation, checkpoint) in ``torch.profiler``
through the trainer's epoch callbacks: the profiler starts when epoch ``--epoch - 1`` has ended and stops when
``--epoch`` has. Unlike ``step_profile.py`` (a bare forward/backward/optimizer step of the model) this sees what the
trainer adds around the step. Prints the epoch's wall time, the summed kernel time, the kernel launches, the top
kernels and the top host operations, and writes ``benchmarks/results/epoch_profile_<recipe>_<device>.json``.

Usage (GPU machine; caches from ``mambaseg cache``)::

    PYTHONPATH=src python benchmarks/epoch_profile.py --recipe dermomamba_ph2 --data .gpucache/ph2_192x256.npz
    PYTHONPATH=src python benchmarks/epoch_profile.py --recipe vmunet_ph2 --data .gpucache/ph2_256.npz --epochs 6
    # CPU check: small images, results to a temporary file
    PYTHONPATH=src python benchmarks/epoch_profile.py --recipe vmunet_ph2 --data .gpucache/ph2_256.npz \\
        --epochs 2 --epoch 2 --set train.device=cpu --set data.image_size=[64,64] --out /tmp/epoch_profile.json
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common import RESULTS, device_tag, environment, write_json


def _table(events: Any, on_device: bool, top: int | None, annotations: bool = False) -> list[dict[str, Any]]:
    """Summed time (ms) and count per event name, largest first (``top`` rows, None = all): device kernels
    (``on_device``) or host operations (self time). On the device, ``record_function`` ranges (e.g.
    ``Optimizer.step#Adam.step``) span kernels that are counted on their own, so they are kept apart: kernels only,
    or (``annotations``) the ranges only."""
    acc: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for ev in events:
        is_device = ev.device_type != torch.autograd.DeviceType.CPU
        if is_device != on_device or (on_device and bool(getattr(ev, "is_user_annotation", False)) != annotations):
            continue
        ms = (ev.device_time_total if on_device else ev.self_cpu_time_total) / 1e3
        acc[ev.name[:100]][0] += ms
        acc[ev.name[:100]][1] += 1
    rows = sorted(acc.items(), key=lambda kv: -kv[1][0])
    return [{"name": n, "ms": round(ms, 3), "count": int(c)} for n, (ms, c) in rows[:top]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=5, help="epochs the run trains (the profiled one included)")
    ap.add_argument("--epoch", type=int, default=None, help="the epoch to profile (default: the last one)")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="config override (repeatable)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/...)")
    args = ap.parse_args()
    epoch = args.epoch or args.epochs
    if not 2 <= epoch <= args.epochs:
        ap.error(f"--epoch must be in [2, --epochs={args.epochs}] (the profiler starts after the previous epoch)")

    from torch.profiler import ProfilerActivity, profile

    from mambaseg.cli.train import build_config
    from mambaseg.engine import train

    cuda = torch.cuda.is_available() and "train.device=cpu" not in args.overrides
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    state: dict[str, Any] = {}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def callback(st: dict[str, Any]) -> bool:
        if st["epoch"] == epoch - 1:
            sync()
            state["prof"] = profile(activities=activities)
            state["prof"].__enter__()
            state["t0"] = time.perf_counter()
        elif st["epoch"] == epoch:
            sync()
            state["wall_ms"] = (time.perf_counter() - state["t0"]) * 1e3
            state["prof"].__exit__(None, None, None)
            state["record"] = dict(st["history"][-1])
        return False

    with tempfile.TemporaryDirectory(prefix="epoch_profile_") as tmp:
        cfg = build_config(recipe=args.recipe, data=args.data, out=str(Path(tmp) / "run"), epochs=args.epochs,
                           overrides=args.overrides)
        train(cfg, callbacks=[callback], show_progress=False)
    events = state["prof"].events()
    all_kernels = _table(events, True, None) if cuda else []
    kernels = all_kernels[:args.top]
    ranges = _table(events, True, args.top, annotations=True) if cuda else []
    host = _table(events, False, args.top)
    kernel_ms = sum(r["ms"] for r in all_kernels) if cuda else None
    launches = sum(r["count"] for r in all_kernels) if cuda else None
    rec = state["record"]
    print(f"{args.recipe}, epoch {epoch}: {state['wall_ms']:.1f} ms wall under the profiler"
          + (f", {kernel_ms:.1f} ms summed device time, {launches} kernels" if cuda else "")
          + f"; the run's own record: step {rec.get('time_step', 0):.3f} s, val {rec.get('time_val', 0):.3f} s, "
            f"data {rec.get('time_data', 0):.3f} s, checkpoint {rec.get('time_ckpt', 0):.3f} s")
    for title, rows in (("device kernels", kernels), ("host operations (self time)", host)):
        if rows:
            print(f"{title}:")
            for r in rows:
                print(f"  {r['ms']:9.2f} ms {r['count']:7d}  {r['name']}")
    name = f"epoch_profile_{args.recipe}_{device_tag() if cuda else 'cpu'}.json"
    path = write_json(args.out or RESULTS / name, {
        **environment(),
        "benchmark": "epoch_profile",
        "recipe": args.recipe, "data": args.data, "overrides": args.overrides, "epochs": args.epochs,
        "profiled_epoch": epoch,
        "what": "one epoch of mambaseg train under torch.profiler (started after the previous epoch, stopped after "
                "this one); device times are summed kernel times (record_function ranges, which span kernels counted "
                "on their own, are listed apart in top_device_ranges), host times are self CPU times",
        "wall_ms_under_profiler": round(state["wall_ms"], 2),
        "device_kernel_ms": None if kernel_ms is None else round(kernel_ms, 2),
        "device_kernels": launches,
        "epoch_record": {k: v for k, v in rec.items() if k.startswith("time") or k in ("epoch", "step")},
        "top_device_kernels": kernels,
        "top_device_ranges": ranges,
        "top_host_ops": host,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
