"""Our Triton selective scan against the official CUDA kernel (``mamba_ssm``'s ``selective_scan_fn``), timed in
one process, round by round, so that both see the same host.

``performance-anchors.md`` gives the official kernel's times measured once on the same machine kind. At the
N = 1 shapes a forward+backward call takes a few hundred microseconds and most of it is host time (Python, the
autograd engine's thread hand-off, launches), which moves by tens of percent from one minute to the next on the
lent machines; a ratio against a number measured at another time then says more about the host than about the
kernels. Here each round times ``--reps`` eager calls of ours, then of the official kernel (CUDA events, one call
per timing, median per round), for ``--rounds`` rounds; the report gives every round's ratio and the median ratio.
It also times CUDA-graph replays (GPU time only) and checks the two implementations against each other.

Needs a CUDA machine with ``mamba_ssm`` importable (its ``selective_scan_cuda`` extension built); the official
call is ``selective_scan_fn`` itself, without our adapter, on the same inputs, with ``delta_softplus=True``.

Usage::

    python benchmarks/scan_vs_official.py --shapes 0,1,2,3,4 --rounds 8 --reps 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from _common import RESULTS, cuda_event_times, device_tag, environment, write_json
from scan_gpu import ANCHORS, GRAD_KEYS, _fn, fwd_bwd, graph_time, make_inputs, rel


def official_fn() -> Callable[[dict[str, Any]], torch.Tensor]:
    """The official selective scan as a function of our input dict (raises ImportError without mamba_ssm)."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore[import-not-found]

    def run(inp: dict[str, Any]) -> torch.Tensor:
        return selective_scan_fn(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], z=None,
                                 delta_bias=inp["delta_bias"], delta_softplus=True)  # fmt: skip

    return run


def timed_calls(fn: Callable, inp: dict[str, Any], gy: torch.Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    """Forward without autograd, and forward + backward to all seven inputs; the leaves are made once, outside the
    timed calls (``scan_gpu.py`` makes them in every call), for both implementations alike."""
    leaves = {key: inp[key].detach().requires_grad_(True) for key in GRAD_KEYS}
    args = {**inp, **leaves}
    wrt = [leaves[key] for key in GRAD_KEYS]

    def f() -> None:
        with torch.no_grad():
            fn(inp)

    def fb() -> None:
        torch.autograd.grad(fn(args), wrt, gy)

    return f, fb


def compare(fns: dict[str, Callable], inp: dict[str, Any], gy: torch.Tensor) -> dict[str, float]:
    """Relative L2 differences of ours against the official kernel: y and each gradient."""
    (y_a, g_a), (y_b, g_b) = fwd_bwd(fns["ours"], inp, gy), fwd_bwd(fns["official"], inp, gy)
    res = {"y": rel(y_a, y_b)}
    res.update({f"d{key}": rel(a, b) for key, a, b in zip(GRAD_KEYS, g_a, g_b)})
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="0,1,2,3,4", help="comma-separated indices into scan_gpu.ANCHORS")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--reps", type=int, default=40, help="eager calls per implementation and round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=None, help="output JSON (default benchmarks/results/scan_vs_official_<dev>.json)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("scan_vs_official.py needs a CUDA device", file=sys.stderr)
        return 2
    try:
        fns = {"ours": _fn("triton"), "official": official_fn()}
    except ImportError as exc:
        print(f"scan_vs_official.py needs mamba_ssm with its selective_scan_cuda extension: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else RESULTS / f"scan_vs_official_{device_tag()}.json"
    result: dict[str, Any] = {
        **environment(),
        "timing": (f"one process; per shape {args.rounds} rounds, each round {args.reps} eager calls of ours then of "
                   f"the official kernel (CUDA events, one call per timing, median per round, {args.warmup} warm-up "
                   "calls per round); *_graph_ms: replays of a CUDA graph of the same call (GPU time only); fp32"),
        "rows": [],
    }  # fmt: skip
    print("| shape | ours fwd | official fwd | ours fwd+bwd | official fwd+bwd | fwd+bwd ratio (median, range) | "
          "graph ours / official |\n|---|---|---|---|---|---|---|", flush=True)
    for i in [int(s) for s in args.shapes.split(",") if s.strip()]:
        b, k, d, seqlen, n, anchor_f, anchor_fb = ANCHORS[i]
        inp = make_inputs(b, k, d, seqlen, n, seed=i)
        gy = torch.randn(b, k * d, seqlen, device="cuda")
        errs = compare(fns, inp, gy)
        calls = {name: timed_calls(fn, inp, gy) for name, fn in fns.items()}
        per_round: dict[str, dict[str, list[float]]] = {name: {"fwd": [], "fwdbwd": []} for name in fns}
        for _ in range(args.rounds):
            for name, (f, fb) in calls.items():
                per_round[name]["fwd"].append(statistics.median(cuda_event_times(f, args.warmup, args.reps)))
                per_round[name]["fwdbwd"].append(statistics.median(cuda_event_times(fb, args.warmup, args.reps)))
        graphs = {name: {"fwd": graph_time(f, args.reps), "fwdbwd": graph_time(fb, args.reps)}
                  for name, (f, fb) in calls.items()}  # fmt: skip
        ratios = {mode: [a / o for a, o in zip(per_round["ours"][mode], per_round["official"][mode])]
                  for mode in ("fwd", "fwdbwd")}  # fmt: skip
        row = {
            "batch": b, "k": k, "d_inner": d, "seqlen": seqlen, "d_state": n,
            **{f"{name}_{mode}_ms_rounds": [round(v, 4) for v in per_round[name][mode]]
               for name in fns for mode in ("fwd", "fwdbwd")},
            **{f"{name}_{mode}_ms": round(statistics.median(per_round[name][mode]), 4)
               for name in fns for mode in ("fwd", "fwdbwd")},
            **{f"{name}_{mode}_graph_ms": None if graphs[name][mode] is None else round(graphs[name][mode], 4)
               for name in fns for mode in ("fwd", "fwdbwd")},
            "fwd_ratio_rounds": [round(r, 3) for r in ratios["fwd"]],
            "fwdbwd_ratio_rounds": [round(r, 3) for r in ratios["fwdbwd"]],
            "fwd_ratio": round(statistics.median(ratios["fwd"]), 3),
            "fwdbwd_ratio": round(statistics.median(ratios["fwdbwd"]), 3),
            "rounds_at_or_under_official_fwdbwd": sum(r <= 1.0 for r in ratios["fwdbwd"]),
            "anchor_official_fwd_ms": anchor_f, "anchor_official_fwdbwd_ms": anchor_fb,
            "rel_diff_vs_official": errs,
        }  # fmt: skip
        result["rows"].append(row)
        g_ours, g_off = row["ours_fwdbwd_graph_ms"], row["official_fwdbwd_graph_ms"]
        print(f"| {b},{k},{d},{seqlen},{n} | {row['ours_fwd_ms']:.3f} | {row['official_fwd_ms']:.3f} | "
              f"{row['ours_fwdbwd_ms']:.3f} | {row['official_fwdbwd_ms']:.3f} | {row['fwdbwd_ratio']:.2f} "
              f"({min(ratios['fwdbwd']):.2f}-{max(ratios['fwdbwd']):.2f}) | {g_ours} / {g_off} |", flush=True)
        print(f"  max rel diff vs official (y and 7 gradients): {max(errs.values()):.2e}", flush=True)
    write_json(out, result, indent=1)
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
