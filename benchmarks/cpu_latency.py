"""CPU inference latency of a model at 1x3xHxW (median of N runs after a warm-up), default VM-UNet at 256.

Usage: python benchmarks/cpu_latency.py [--model vmunet] [--size 256] [--repeats 5]
Writes benchmarks/results/cpu_latency_<model>.json and prints the numbers, including the share of time spent in
the selective scan (measured with the torch profiler's record_function ranges).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mambaseg
from _common import environment, write_json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vmunet")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = mambaseg.create_model(args.model, num_classes=1).eval()
    x = torch.randn(1, 3, args.size, args.size)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    # time spent in the scan alone: wrap the op and re-run once
    import mambaseg.layers.ss2d as ss2d_mod

    orig = ss2d_mod.selective_scan
    scan_time = [0.0]

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = orig(*a, **k)
        scan_time[0] += time.perf_counter() - t0
        return out

    ss2d_mod.selective_scan = timed
    try:
        with torch.inference_mode():
            t0 = time.perf_counter()
            model(x)
            total = time.perf_counter() - t0
    finally:
        ss2d_mod.selective_scan = orig
    res = {
        "benchmark": "cpu_latency",
        "model": args.model,
        "input": [1, 3, args.size, args.size],
        "median_s": statistics.median(times),
        "min_s": min(times),
        "runs_s": times,
        "scan_share": scan_time[0] / total,
        **environment(),
    }
    print(res)
    print(f"wrote {write_json(f'cpu_latency_{args.model}.json', res)}")


if __name__ == "__main__":
    main()
