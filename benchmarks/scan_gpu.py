"""Selective-scan GPU benchmark: Triton vs the chunked PyTorch backend on the anchor shapes.

Times forward (no autograd) and forward+backward with CUDA events (median of ``--reps`` runs after
``--warmup`` runs), on random non-zero inputs shaped as SS2D calls the scan, checks Triton against the
torch backend (fp32) and against a float64 evaluation of the torch backend on a slice of the batch,
and writes ``benchmarks/results/scan_gpu_<device>.json``.

Usage (on a CUDA machine)::

    PYTHONUNBUFFERED=1 python benchmarks/scan_gpu.py                 # full table, writes the JSON
    python benchmarks/scan_gpu.py --sweep --no-torch --shapes 0,3    # try tile configurations
    # DermoMamba's calls (batch 4, 192x256, bf16): the plan's kernels and, in the same process, the
    # channel-per-lane kernels alone (the N >= 2 segment-parallel ones switched off)
    python benchmarks/scan_gpu.py --shapes 5,6,7,8,9,10 --dtype bf16 --no-torch --old-kernels-too \\
        --out benchmarks/results/scan_gpu_h100_dermomamba.json

Anchor shapes (batch, K, d_inner, L, N) and the official CUDA kernel's times on an H100 are in
``spec/performance-anchors.md``; shapes 5-10 are DermoMamba's (no official times).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from _common import RESULTS, cuda_event_times, device_tag, environment, write_json

ANCHORS = [
    # batch, K, d_inner, L, N, official fwd ms, official fwd+bwd ms
    (32, 4, 192, 4096, 16, 3.49, 12.05),
    (32, 4, 384, 1024, 16, 1.62, 5.88),
    (32, 4, 768, 256, 16, 0.68, 2.91),
    (24, 4, 96, 3136, 1, 0.234, 0.77),
    (24, 4, 192, 784, 1, 0.127, 0.418),
    # DermoMamba training, batch 4, 192x256 input: the scans of one forward pass with few (batch, channel) rows
    # (no official times); 5-8 and 10 take the N >= 2 segment-parallel kernels, 9 the channel-per-lane ones
    (4, 4, 8, 49152, 16, None, None),  # stage 1 (3 calls per forward)
    (4, 4, 16, 12288, 16, None, None),  # stage 2 (3 calls)
    (4, 4, 32, 3072, 16, None, None),  # stage 3 (3 calls)
    (4, 4, 64, 768, 16, None, None),  # stage 4 (3 calls)
    (4, 4, 128, 192, 16, None, None),  # stage 5 (3 calls)
    (4, 4, 12, 512, 16, None, None),  # bottleneck sweep (1 call)
]


def make_inputs(batch: int, k: int, d: int, seqlen: int, n: int, dtype=torch.float32, seed: int = 0) -> dict[str, Any]:
    """Random SS2D-like scan inputs on the GPU (never zeros): dt bias in softplus range [1e-3, 0.1], A = -(1..N)."""
    dev = DEVICE
    g = torch.Generator(device=dev).manual_seed(seed)
    kd = k * d
    u = torch.randn(batch, kd, seqlen, device=dev, generator=g).to(dtype)
    delta = (0.5 * torch.randn(batch, kd, seqlen, device=dev, generator=g)).to(dtype)
    dt0 = torch.exp(torch.rand(kd, device=dev, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    delta_bias = dt0 + torch.log(-torch.expm1(-dt0))
    A = -torch.arange(1, n + 1, device=dev, dtype=torch.float32).repeat(kd, 1) * (
        1 + 0.1 * torch.rand(kd, n, device=dev, generator=g)
    )
    Bs = torch.randn(batch, k, n, seqlen, device=dev, generator=g).to(dtype)
    Cs = torch.randn(batch, k, n, seqlen, device=dev, generator=g).to(dtype)
    D = torch.randn(kd, device=dev, generator=g)
    return dict(u=u, delta=delta, A=A, B=Bs, C=Cs, D=D, delta_bias=delta_bias)


def _fn(backend: str) -> Callable:
    from mambaseg.ops import selective_scan

    def run(inp: dict[str, Any]) -> torch.Tensor:
        return selective_scan(
            inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"],
            delta_bias=inp["delta_bias"], delta_softplus=True, backend=backend,
        )  # fmt: skip

    return run


def cuda_time(fn: Callable[[], Any], warmup: int, reps: int) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs (CUDA events), after ``warmup`` runs."""
    return statistics.median(cuda_event_times(fn, warmup, reps))


DEVICE = "cuda"
def graph_time(fn: Callable[[], Any], reps: int) -> float | None:
    """Median milliseconds of one replay of a CUDA graph capturing ``fn`` (GPU time without host launch
    overhead); None if the capture fails."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return cuda_time(graph.replay, 3, reps)
    except Exception as exc:  # capture is best effort: report why and go on
        print(f"CUDA graph capture failed: {type(exc).__name__}: {exc}", flush=True)
        return None


GRAD_KEYS = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def fwd_bwd(fn: Callable, inp: dict[str, Any], gy: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = {key: inp[key].detach().requires_grad_(True) for key in GRAD_KEYS}
    y = fn({**inp, **leaves})
    grads = torch.autograd.grad(y, [leaves[k_] for k_ in GRAD_KEYS], gy)
    return y.detach(), list(grads)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def calls(backend: str, inp: dict[str, Any], gy: torch.Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    """The two timed calls of a backend: forward without autograd, and forward + backward of every input."""
    fn = _fn(backend)

    def f() -> None:
        with torch.no_grad():
            fn(inp)

    def fb() -> None:
        fwd_bwd(fn, inp, gy)

    return f, fb


def time_backend(backend: str, inp: dict[str, Any], gy: torch.Tensor, warmup: int, reps: int) -> tuple[float, float]:
    f, fb = calls(backend, inp, gy)
    return cuda_time(f, warmup, reps), cuda_time(fb, warmup, reps)


def graph_times(backend: str, inp: dict[str, Any], gy: torch.Tensor, reps: int) -> tuple[float | None, float | None]:
    f, fb = calls(backend, inp, gy)
    return graph_time(f, reps), graph_time(fb, reps)


def check(inp: dict[str, Any], gy: torch.Tensor, fp64_batch: int) -> dict[str, float]:
    """Relative L2 errors of Triton vs torch (fp32, full batch) and vs torch in float64 (first ``fp64_batch``)."""
    yt, gt = fwd_bwd(_fn("triton"), inp, gy)
    out: dict[str, float] = {}
    yr, gr = fwd_bwd(_fn("torch"), inp, gy)
    out["rel_err"] = rel(yt, yr)
    out["rel_err_grads"] = max(rel(a, b) for a, b in zip(gt, gr))
    del yr, gr
    nb = fp64_batch
    sub = {key: (v[:nb] if key in ("u", "delta", "B", "C") else v) for key, v in inp.items()}
    sub64 = {key: v.double() for key, v in sub.items()}
    yt_s, gt_s = fwd_bwd(_fn("triton"), sub, gy[:nb])
    y64, g64 = fwd_bwd(_fn("torch"), sub64, gy[:nb].double())
    out["rel_err_fp64"] = rel(yt_s, y64)
    out["rel_err_grads_fp64"] = max(rel(a, b) for a, b in zip(gt_s, g64))
    out["rel_err_grads_fp64_each"] = {key: rel(a, b) for key, a, b in zip(GRAD_KEYS, gt_s, g64)}
    return out


def _uses_segn(inp: dict[str, Any]) -> bool:
    """Whether the Triton plan of this problem (with gradients) takes the N >= 2 segment-parallel kernels."""
    from mambaseg.ops import selective_scan_triton as sst

    plan = sst._Plan(inp["u"], inp["A"], inp["B"], inp["C"], inp["D"], inp["delta_bias"], True, inp["u"].dtype, True)
    return bool(plan.segn)


def sweep(shapes: list[int], warmup: int, reps: int) -> list[dict[str, Any]]:
    """Time a grid of tile configurations per shape (fwd, and fwd+bwd) and print the best."""
    from mambaseg.ops import selective_scan_triton as sst

    rows = []
    for i in shapes:
        b, k, d, seqlen, n, _, _ = ANCHORS[i]
        inp = make_inputs(b, k, d, seqlen, n)
        gy = torch.randn(b, k * d, seqlen, device="cuda")
        base = dict(sst.pick_config(d, seqlen, n))
        if n == 1:  # the channel-per-lane kernels with their table tiles, then the segment-parallel grid
            n1 = [{"SEG1": 0}] + [{"SEG1": seg, "BLOCK_D1": bd, "num_warps1": nw}
                                  for seg in (64, 128, 256) for bd in (8, 16) for nw in (4, 8)]
            cands_by_mode = {"fwd": n1, "fwdbwd": n1}
        else:
            if n > 4:
                fwd_c = [(16, 1, 8), (8, 1, 16), (32, 1, 4)]
                bwd_c = [(8, 1, 8), (4, 1, 16), (16, 1, 4)]
            else:
                fwd_c = [(bd, 1, bl) for bd in (1, 2, 4, 8) for bl in (32, 64, 128, 256)]
                bwd_c = [(bd, 1, bl) for bd in (1, 2, 4) for bl in (16, 32, 64, 128)]
            cands_by_mode = {
                mode: [{"num_warps": nw, "BLOCK_L_FWD": bl, "BLOCK_L_BWD": bl, "SEG1": 0, block_d: bd}
                       for bd, nw, bl in cands]
                for mode, block_d, cands in (("fwd", "BLOCK_D_FWD", fwd_c), ("fwdbwd", "BLOCK_D_BWD", bwd_c))
            }
        f, fb = calls("triton", inp, gy)  # the tile configuration is read on every call
        for mode, cands in cands_by_mode.items():
            for cand in cands:
                with sst.tile_override(cand):
                    try:
                        ms = cuda_time(f if mode == "fwd" else fb, warmup, reps)
                    except Exception as exc:  # compilation failures (e.g. out of registers / shared memory)
                        print(f"shape {i} {mode} {cand} failed: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
                        continue
                rows.append({"shape": i, "mode": mode, **cand, "ms": ms})
                print(f"shape {i} {mode} {cand} {ms:.3f} ms", flush=True)
        mine = [r for r in rows if r["shape"] == i]
        if mine:
            bf = min((r for r in mine if r["mode"] == "fwd"), key=lambda r: r["ms"], default=None)
            bb = min((r for r in mine if r["mode"] == "fwdbwd"), key=lambda r: r["ms"], default=None)
            print(f"shape {i} default {base}\n  best fwd {bf}\n  best fwd+bwd {bb}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="0,1,2,3,4", help="comma-separated indices into the anchor table")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--no-torch", action="store_true", help="skip timing the torch backend")
    ap.add_argument("--fp64-batch", type=int, default=2, help="batch slice checked against float64")
    ap.add_argument("--sweep", action="store_true", help="time tile configurations instead of the table")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="dtype of u, delta, B, C")
    ap.add_argument("--old-kernels-too", action="store_true",
                    help="also time the Triton scan with the N >= 2 segment-parallel kernels switched off "
                         "(SEGN_MAX_ROWS=0: the channel-per-lane kernels), in the same process")
    ap.add_argument("--out", default=None, help="output JSON (default benchmarks/results/scan_gpu_<device>.json)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("scan_gpu.py needs a CUDA device", file=sys.stderr)
        return 2

    shapes = [int(s) for s in args.shapes.split(",") if s.strip()]
    if args.sweep:
        rows = sweep(shapes, args.warmup, args.reps)
        if args.out:
            write_json(Path(args.out), rows, indent=1)
        return 0

    out = Path(args.out) if args.out else RESULTS / f"scan_gpu_{device_tag()}.json"
    result = {
        **environment(),
        "timing": (
            f"CUDA events, median of {args.reps} after {args.warmup} warm-up runs, one eager call per timing "
            "(host launch overhead included); *_graph_ms: replays of a CUDA graph of the same call; inputs "
            f"{args.dtype}; triton_old_*: the same with the N >= 2 segment-parallel kernels switched off"
        ),
        "rows": [],
    }
    rows = result["rows"]
    for i in shapes:
        b, k, d, seqlen, n, off_f, off_fb = ANCHORS[i]
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        inp = make_inputs(b, k, d, seqlen, n, dtype=dtype, seed=i)
        gy = torch.randn(b, k * d, seqlen, device="cuda", dtype=dtype)
        errs = check(inp, gy, args.fp64_batch)
        tf, tfb = time_backend("triton", inp, gy, args.warmup, args.reps)
        gf, gfb = graph_times("triton", inp, gy, args.reps)
        old = {}
        if args.old_kernels_too:
            from mambaseg.ops import selective_scan_triton as sst

            with sst.tile_override({"SEGN_MAX_ROWS": 0}):
                of, ofb = time_backend("triton", inp, gy, args.warmup, args.reps)
                ogf, ogfb = graph_times("triton", inp, gy, args.reps)
                yo, go = fwd_bwd(_fn("triton"), inp, gy)
            yn, gn = fwd_bwd(_fn("triton"), inp, gy)
            old = {
                "triton_old_fwd_ms": round(of, 4), "triton_old_fwdbwd_ms": round(ofb, 4),
                "triton_old_fwd_graph_ms": None if ogf is None else round(ogf, 4),
                "triton_old_fwdbwd_graph_ms": None if ogfb is None else round(ogfb, 4),
                "rel_diff_vs_old": max(rel(yn.float(), yo.float()),
                                       *(rel(a.float(), c.float()) for a, c in zip(gn, go))),
            }  # fmt: skip
            del yo, go, yn, gn
        if args.no_torch:
            pf = pfb = None
        else:
            pf, pfb = time_backend("torch", inp, gy, 2, args.reps)
        row = {
            "batch": b, "k": k, "d_inner": d, "seqlen": seqlen, "d_state": n,
            "triton_fwd_ms": round(tf, 4), "triton_fwdbwd_ms": round(tfb, 4),
            "triton_fwd_graph_ms": None if gf is None else round(gf, 4),
            "triton_fwdbwd_graph_ms": None if gfb is None else round(gfb, 4),
            "torch_fwd_ms": None if pf is None else round(pf, 3), "torch_fwdbwd_ms": None if pfb is None else round(pfb, 3),
            "rel_err": errs["rel_err"], "rel_err_grads": errs["rel_err_grads"],
            "rel_err_fp64": errs["rel_err_fp64"], "rel_err_grads_fp64": errs["rel_err_grads_fp64"],
            "rel_err_grads_fp64_each": errs["rel_err_grads_fp64_each"],
            "official_cuda_fwd_ms": off_f, "official_cuda_fwdbwd_ms": off_fb,
            "fwdbwd_vs_official": None if off_fb is None else round(tfb / off_fb, 3),
            "segment_parallel": _uses_segn(inp), **old,
        }  # fmt: skip
        rows.append(row)
        vs = "" if off_fb is None else f"({tfb / off_fb:.2f}x official {off_fb}) "
        if old:
            vs += (f"| old kernels fwd {old['triton_old_fwd_ms']:.3f} fwd+bwd {old['triton_old_fwdbwd_ms']:.3f} ms, "
                   f"graph {old['triton_old_fwd_graph_ms']} / {old['triton_old_fwdbwd_graph_ms']}, max rel diff "
                   f"{old['rel_diff_vs_old']:.1e} ")  # fmt: skip
        print(
            f"({b},{k},{d},{seqlen},{n}) {inp['u'].dtype} segn={row['segment_parallel']} triton fwd {tf:.3f} "
            f"fwd+bwd {tfb:.3f} ms {vs}| graph fwd {gf} fwd+bwd {gfb} | torch fwd {pf} fwd+bwd {pfb} | "
            f"rel_err {errs['rel_err']:.1e} grads {errs['rel_err_grads']:.1e} | fp64: {errs['rel_err_fp64']:.1e} "
            f"grads {errs['rel_err_grads_fp64']:.1e}",
            flush=True,
        )
        del inp, gy
        torch.cuda.empty_cache()
        write_json(out, result, indent=1)  # after every row, so partial runs keep their numbers

    print(f"wrote {out}")
    print("\n| batch, K, d_inner, L, N | triton fwd | triton fwd+bwd | official fwd+bwd | ratio | torch fwd+bwd "
          "| rel_err | old kernels fwd | old kernels fwd+bwd |")
    for r in rows:
        ratio = "-" if r["fwdbwd_vs_official"] is None else f"{r['fwdbwd_vs_official']:.2f}x"
        print(
            f"| {r['batch']}, {r['k']}, {r['d_inner']}, {r['seqlen']}, {r['d_state']} | {r['triton_fwd_ms']:.3f} | "
            f"{r['triton_fwdbwd_ms']:.3f} | {r['official_cuda_fwdbwd_ms']} | {ratio} | "
            f"{r['torch_fwdbwd_ms']} | {r['rel_err']:.1e} | {r.get('triton_old_fwd_ms', '-')} | "
            f"{r.get('triton_old_fwdbwd_ms', '-')} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
