"""Where the time of one selective-scan call goes on the GPU: eager vs CUDA-graph times per tile configuration,
and the torch profiler's per-kernel CUDA times (host launch overhead = eager minus graph).

Usage (CUDA machine): python benchmarks/scan_profile.py --shapes 3,4 --configs '{"SEG1": 0}' '{"SEG1": 128}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from scan_gpu import ANCHORS, calls, cuda_time, graph_time, make_inputs


class _Trivial(torch.autograd.Function):
    """Baseline for the autograd engine's own cost: 7 inputs, one output, gradients preallocated."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, bias, grads):
        ctx.grads = grads
        return u.view_as(u)

    @staticmethod
    def backward(ctx, dy):
        return (dy, *ctx.grads, None)


def _wall_us(call, n_calls: int) -> float:
    import time

    for _ in range(20):
        call()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n_calls):
        call()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n_calls * 1e6


def host_profile(configs: list[str], n_calls: int = 300, shape: str = "1:4:8:64:1", out: str | None = None) -> None:
    """Host (Python + launch) time of fwd and fwd+bwd calls on a problem whose GPU time is negligible, split into
    the autograd engine's floor (a trivial Function with the same inputs), the wrapper without kernel launches, and
    the launches; then cProfile and the torch profiler's CPU op table of fwd+bwd."""
    import cProfile
    import io
    import pstats

    from scan_gpu import GRAD_KEYS

    from mambaseg.ops import selective_scan_triton as sst

    b, k, d, seqlen, n = (int(v) for v in shape.split(":"))
    inp = make_inputs(b, k, d, seqlen, n, seed=0)
    gy = torch.randn(b, k * d, seqlen, device="cuda")
    f, fb = calls("triton", inp, gy)  # the tile configuration is read on every call
    leaves = {key: inp[key].detach().requires_grad_(True) for key in GRAD_KEYS}
    pre = tuple(torch.zeros_like(inp[key]) for key in GRAD_KEYS[1:])

    def trivial() -> None:
        y = _Trivial.apply(*(leaves[key] for key in GRAD_KEYS), pre)
        torch.autograd.grad(y, [leaves[key] for key in GRAD_KEYS], gy)

    def fwd_grad() -> None:
        f_in = {**inp, **leaves}
        from mambaseg.ops import selective_scan

        selective_scan(f_in["u"], f_in["delta"], f_in["A"], f_in["B"], f_in["C"], f_in["D"],
                       delta_bias=f_in["delta_bias"], delta_softplus=True, backend="triton")

    report: dict = {"shape": shape, "n_calls": n_calls}
    report["trivial_function_fwdbwd_us"] = _wall_us(trivial, n_calls)
    print(f"host trivial autograd Function (7 inputs) fwd+bwd: {report['trivial_function_fwdbwd_us']:.1f} us",
          flush=True)
    real_launch = sst._launch
    for cfg in configs:
        sst._CONFIG_OVERRIDE.clear()
        sst._CONFIG_OVERRIDE.update(json.loads(cfg))
        row = {}
        for name, call in (("fwd", f), ("fwd_with_grad", fwd_grad), ("fwdbwd", fb)):
            row[name] = _wall_us(call, n_calls)
        try:
            sst._launch = lambda *a, **kw: None  # the same calls without any kernel launch
            for name, call in (("fwd", f), ("fwdbwd", fb)):
                row[name + "_no_launch"] = _wall_us(call, n_calls)
        finally:
            sst._launch = real_launch
        report[cfg] = row
        print(f"host {cfg}: " + " ".join(f"{key} {v:.1f}us" for key, v in row.items()), flush=True)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n_calls):
            fb()
        prof.disable()
        torch.cuda.synchronize()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        print(buf.getvalue(), flush=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tprof:
            for _ in range(50):
                fb()
        print(tprof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60),
              flush=True)
    sst._CONFIG_OVERRIDE.clear()
    if out:
        Path(out).write_text(json.dumps(report, indent=1))


def check_shapes(shapes: str, out: str | None, config: str = "{}") -> None:
    """Triton vs the torch backend (full batch) and vs float64 (batch slice 1), forward and every gradient, on
    batch:k:d:L:N shapes (small batches take the N = 1 segment-parallel kernels), under a tile configuration."""
    from scan_gpu import check

    from _common import environment
    from mambaseg.ops import selective_scan_triton as sst

    sst._CONFIG_OVERRIDE.clear()
    sst._CONFIG_OVERRIDE.update(json.loads(config))
    res = {"what": check_shapes.__doc__, **environment(), "config": json.loads(config), "rel_err": {}}
    for spec in shapes.split(","):
        b, k, d, seqlen, n = (int(v) for v in spec.split(":"))
        inp = make_inputs(b, k, d, seqlen, n, seed=1)
        gy = torch.randn(b, k * d, seqlen, device="cuda")
        r = check(inp, gy, 1)
        res["rel_err"][spec] = r
        print(f"check {spec}: y {r['rel_err']:.2e} grads {r['rel_err_grads']:.2e} "
              f"y_fp64 {r['rel_err_fp64']:.2e} grads_fp64 {r['rel_err_grads_fp64']:.2e}", flush=True)
    sst._CONFIG_OVERRIDE.clear()
    if out:
        Path(out).write_text(json.dumps(res, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="3,4", help="anchor indices, or batch:k:d:L:N tuples")
    ap.add_argument("--configs", nargs="+", default=['{"SEG1": 0}', '{"SEG1": 128}'])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--host", action="store_true",
                    help="host overhead: wall time per call on a tiny problem (GPU time negligible) + cProfile")
    ap.add_argument("--host-shape", default="1:4:8:64:1", help="batch:k:d:L:N of the --host problem")
    ap.add_argument("--host-out", default=None, help="write the --host wall times (JSON) here")
    ap.add_argument("--check", default=None, help="batch:k:d:L:N shapes (comma-separated) to check numerically")
    ap.add_argument("--check-out", default=None, help="write the --check errors (JSON) here")
    ap.add_argument("--check-config", default="{}", help="tile configuration (JSON) for --check")
    args = ap.parse_args()
    if args.check:
        check_shapes(args.check, args.check_out, args.check_config)
        return
    if args.host:
        host_profile(args.configs, shape=args.host_shape, out=args.host_out)
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
            try:
                t = {"fwd": cuda_time(f, 5, args.reps), "fwdbwd": cuda_time(fb, 5, args.reps),
                     "fwd_graph": graph_time(f, args.reps), "fwdbwd_graph": graph_time(fb, args.reps)}
            except Exception as exc:  # a tile configuration that does not compile (registers, shared memory)
                print(f"shape {i} cfg {cfg} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                continue
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
