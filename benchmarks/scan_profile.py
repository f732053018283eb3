"""Where the time of one selective-scan call goes on the GPU: eager vs CUDA-graph times per tile configuration,
and the torch profiler's per-kernel CUDA times (host launch overhead = eager minus graph).

Usage (CUDA machine): python benchmarks/scan_profile.py --shapes 3,4 --configs '{"SEG1": 0}' '{"SEG1": 128}'
"""

from __future__ import annotations

import argparse
import json

import torch

from scan_gpu import ANCHORS, calls, cuda_time, graph_time, make_inputs


def host_profile(configs: list[str], n_calls: int = 300) -> None:
    """Host (Python + launch) time of one fwd and one fwd+bwd call on a problem whose GPU time is negligible."""
    import cProfile
    import pstats
    import time

    from mambaseg.ops import selective_scan_triton as sst

    inp = make_inputs(1, 4, 8, 64, 1, seed=0)
    gy = torch.randn(1, 32, 64, device="cuda")
    f, fb = calls("triton", inp, gy)  # the tile configuration is read on every call
    for cfg in configs:
        sst._CONFIG_OVERRIDE.clear()
        sst._CONFIG_OVERRIDE.update(json.loads(cfg))
        for name, call in (("fwd", f), ("fwdbwd", fb)):
            for _ in range(20):
                call()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(n_calls):
                call()
            torch.cuda.synchronize()
            print(f"host {cfg} {name}: {(time.perf_counter() - t0) / n_calls * 1e6:.1f} us per call", flush=True)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n_calls):
            fb()
        prof.disable()
        torch.cuda.synchronize()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    sst._CONFIG_OVERRIDE.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="3,4", help="anchor indices, or batch:k:d:L:N tuples")
    ap.add_argument("--configs", nargs="+", default=['{"SEG1": 0}', '{"SEG1": 128}'])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--host", action="store_true",
                    help="host overhead: wall time per call on a tiny problem (GPU time negligible) + cProfile")
    args = ap.parse_args()
    if args.host:
        host_profile(args.configs)
        return
    from mambaseg.ops import selective_scan_triton as sst

    for i in args.shapes.split(","):
        if ":" in i:
            b, k, d, seqlen, n = (int(v) for v in i.split(":"))
            off_f = off_fb = float("nan")
        else:
            b, k, d, seqlen, n, off_f, off_fb = ANCHORS[int(i)]
        inp = make_inputs(b, k, d, seqlen, n, seed=0)
        gy = torch.randn(b, k * d, seqlen, device="cuda")
        f, fb = calls("triton", inp, gy)
        for cfg in args.configs:
            sst._CONFIG_OVERRIDE.clear()
            sst._CONFIG_OVERRIDE.update(json.loads(cfg))
            t = {"fwd": cuda_time(f, 5, args.reps), "fwdbwd": cuda_time(fb, 5, args.reps),
                 "fwd_graph": graph_time(f, args.reps), "fwdbwd_graph": graph_time(fb, args.reps)}
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                                    torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    fb()
                torch.cuda.synchronize()
            print(f"shape {i} ({b},{k},{d},{seqlen},{n}) official {off_f}/{off_fb} cfg {cfg}: "
                  + " ".join(f"{key} {v:.3f}" for key, v in t.items() if v is not None), flush=True)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=50),
                  flush=True)
        sst._CONFIG_OVERRIDE.clear()


if __name__ == "__main__":
    main()
