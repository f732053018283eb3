"""End-to-end VM-UNet training / inference speed on one GPU.

VM-UNet ISIC configuration (``create_model("vmunet")``), batch 32, 3x256x256 inputs, AdamW, BCE+Dice
loss; fp32 and bf16 autocast. Each timed training step is forward + loss + backward + optimizer step;
an inference step is a forward pass under ``torch.inference_mode``. Times come from CUDA events around
each step; img/s = batch / median step time over ``--steps`` steps after ``--warmup`` steps. Peak memory is
``torch.cuda.max_memory_allocated`` over the training steps. Writes
``benchmarks/results/train_speed_<device>.json``.

Usage (on a CUDA machine)::

    PYTHONUNBUFFERED=1 python benchmarks/train_speed.py
    python benchmarks/train_speed.py --model vmunet_code_default --precisions bf16 --backend triton
    python benchmarks/train_speed.py --precisions bf16 --compile     # torch.compile (train.compile)

The official VM-UNet code with the compiled ``selective_scan_cuda`` kernel reaches 134.9 (fp32) and 166.8
(bf16) train img/s and 481.6 / 535.3 infer img/s on an H100, peak 15.38 / 12.13 GiB
(``spec/performance-anchors.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from _common import RESULTS, cuda_event_times, device_tag, environment, write_json

OFFICIAL = {  # model -> precision -> (train img/s, infer img/s, train peak GiB), H100, official code + CUDA kernel
    "vmunet": {"fp32": (134.9, 481.6, 15.38), "bf16": (166.8, 535.3, 12.13)},
    "vmunet_code_default": {"fp32": (84.2, 300.9, 25.17), "bf16": (104.0, 339.6, 19.66)},
}


def bench(model_name: str, precision: str, batch: int, size: int, warmup: int, steps: int, backend: str | None,
          compile_model: bool = False) -> dict[str, Any]:
    import mambaseg
    from mambaseg.losses.bce_dice import BceDiceLoss
    from mambaseg.ops import use_backend

    torch.manual_seed(0)
    model = mambaseg.create_model(model_name, num_classes=1, in_chans=3).cuda()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    crit = BceDiceLoss()
    x = torch.randn(batch, 3, size, size, device="cuda")
    y = (torch.rand(batch, size, size, device="cuda") > 0.5).long()
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )
    net = torch.compile(model) if compile_model else model  # compiled during the warm-up steps

    def train_step() -> None:
        with amp:
            loss = crit(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer_step() -> None:
        with torch.inference_mode(), amp:
            net(x)

    with use_backend(backend):
        model.train()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        train_step()  # the first step (it compiles with --compile) is timed on its own
        torch.cuda.synchronize()
        first_train_s = time.perf_counter() - t0
        tr = cuda_event_times(train_step, warmup, steps)
        peak = torch.cuda.max_memory_allocated() / 2**30
        model.eval()
        t0 = time.perf_counter()
        infer_step()
        torch.cuda.synchronize()
        first_infer_s = time.perf_counter() - t0
        inf = cuda_event_times(infer_step, warmup, steps)
    tr_ms, inf_ms = statistics.median(tr), statistics.median(inf)
    off = OFFICIAL.get(model_name, {}).get(precision)
    row = {
        "model": model_name,
        "params_m": round(n_params / 1e6, 2),
        "precision": precision,
        "batch": batch,
        "img_size": size,
        "scan_backend": backend or "auto",
        "compiled": compile_model,
        "first_train_step_s": round(first_train_s, 1),
        "first_infer_step_s": round(first_infer_s, 1),
        "train_step_ms": round(tr_ms, 2),
        "train_img_s": round(batch / tr_ms * 1e3, 1),
        "infer_step_ms": round(inf_ms, 2),
        "infer_img_s": round(batch / inf_ms * 1e3, 1),
        "train_peak_gib": round(peak, 2),
    }
    if off:
        row.update(official_train_img_s=off[0], official_infer_img_s=off[1], official_train_peak_gib=off[2])
    model = net = opt = None  # free the GPU memory before the next precision
    torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vmunet")
    ap.add_argument("--precisions", default="bf16,fp32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--backend", default="triton", help="scan backend (triton, torch, mamba_ssm, or auto)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (the train.compile option)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("train_speed.py needs a CUDA device", file=sys.stderr)
        return 2

    backend = None if args.backend == "auto" else args.backend
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    for prec in precisions:
        if prec not in ("fp32", "bf16"):
            raise SystemExit(f"--precisions: expected fp32 and/or bf16, got {prec!r}")
    rows: list[dict[str, Any]] = []
    result = {
        **environment(),
        "timing": f"CUDA events per step, median of {args.steps} after {args.warmup} warm-up steps",
        "rows": rows,
    }
    out = Path(args.out) if args.out else RESULTS / f"train_speed_{device_tag()}.json"
    for prec in precisions:
        row = bench(args.model, prec, args.batch, args.size, args.warmup, args.steps, backend, args.compile)
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_json(out, result, indent=1)  # after every row, so partial runs keep their numbers
    print(f"wrote {out}")
    print("\n| model | precision | compiled | train img/s | infer img/s | peak GiB | official train / infer / peak |")
    for r in rows:
        print(
            f"| {r['model']} | {r['precision']} | {r['compiled']} | {r['train_img_s']} | {r['infer_img_s']} | "
            f"{r['train_peak_gib']} | "
            f"{r.get('official_train_img_s')} / {r.get('official_infer_img_s')} / {r.get('official_train_peak_gib')} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
