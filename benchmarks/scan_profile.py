"""Where the time of one selective-scan call goes on the GPU: eager vs CUDA-graph times per tile configuration,
and the torch profiler's per-kernel CUDA times (host launch overhead = eager minus graph).

Usage (CUDA machine): python benchmarks/scan_profile.py --shapes 3,4 --configs '{"SEG1": 0}' '{"SEG1": 128}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from _common import environment
from scan_gpu import ANCHORS, GRAD_KEYS, _fn, calls, check, cuda_time, graph_time, make_inputs


def _problem(spec: str | Sequence[int], seed: int) -> tuple[tuple[int, ...], dict[str, Any], torch.Tensor]:
    """(batch, k, d, L, N), the scan inputs (``make_inputs`` with ``seed``) and an output gradient of a problem
    given as a ``batch:k:d:L:N`` string or as those five numbers."""
    dims = tuple(int(v) for v in spec.split(":")) if isinstance(spec, str) else tuple(spec)
    b, k, d, seqlen, n = dims
    inp = make_inputs(b, k, d, seqlen, n, seed=seed)
    gy = torch.randn(b, k * d, seqlen, device="cuda")
    return dims, inp, gy


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

    from mambaseg.ops import selective_scan_triton as sst

    _, inp, gy = _problem(shape, seed=0)
    f, fb = calls("triton", inp, gy)  # the tile configuration is read on every call
    leaves = {key: inp[key].detach().requires_grad_(True) for key in GRAD_KEYS}
    pre = tuple(torch.zeros_like(inp[key]) for key in GRAD_KEYS[1:])

    def trivial() -> None:
        y = _Trivial.apply(*(leaves[key] for key in GRAD_KEYS), pre)
        torch.autograd.grad(y, [leaves[key] for key in GRAD_KEYS], gy)

    fn = _fn("triton")

    def fwd_grad() -> None:
        fn({**inp, **leaves})

    report: dict = {"shape": shape, "n_calls": n_calls}
    report["trivial_function_fwdbwd_us"] = _wall_us(trivial, n_calls)
    print(f"host trivial autograd Function (7 inputs) fwd+bwd: {report['trivial_function_fwdbwd_us']:.1f} us",
          flush=True)
    real_fire = sst._fire
    for cfg in configs:
        with sst.tile_override(json.loads(cfg)):
            row = {}
            for name, call in (("fwd", f), ("fwd_with_grad", fwd_grad), ("fwdbwd", fb)):
                row[name] = _wall_us(call, n_calls)
            try:
                sst._fire = lambda *a, **kw: None  # the same calls without any kernel launch
                for name, call in (("fwd", f), ("fwdbwd", fb)):
                    row[name + "_no_launch"] = _wall_us(call, n_calls)
            finally:
                sst._fire = real_fire
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
    if out:
        Path(out).write_text(json.dumps(report, indent=1))


def check_shapes(shapes: str, out: str | None, config: str = "{}") -> None:
    """Triton vs the torch backend (full batch) and vs float64 (batch slice 1), forward and every gradient, on
    batch:k:d:L:N shapes (small batches take the N = 1 segment-parallel kernels), under a tile configuration."""
    from mambaseg.ops import selective_scan_triton as sst

    res = {"what": check_shapes.__doc__, **environment(), "config": json.loads(config), "rel_err": {}}
    with sst.tile_override(json.loads(config)):
        for spec in shapes.split(","):
            _, inp, gy = _problem(spec, seed=1)
            r = check(inp, gy, 1)
            res["rel_err"][spec] = r
            print(f"check {spec}: y {r['rel_err']:.2e} grads {r['rel_err_grads']:.2e} "
                  f"y_fp64 {r['rel_err_fp64']:.2e} grads_fp64 {r['rel_err_grads_fp64']:.2e}", flush=True)
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
            spec, off_f, off_fb = i, float("nan"), float("nan")
        else:
            *spec, off_f, off_fb = ANCHORS[int(i)]
        (b, k, d, seqlen, n), inp, gy = _problem(spec, seed=0)
        f, fb = calls("triton", inp, gy)
        for cfg in args.configs:
            with sst.tile_override(json.loads(cfg)):
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


if __name__ == "__main__":
    main()
