"""CPU timing of the selective-scan backends ("ref" sequential, "torch" chunked, "cpu_fused" C++ kernel) at SS2D
shapes, forward only (no grad); the fused kernel also forward + backward.

Usage: python benchmarks/scan_cpu.py [--repeats 3] [--threads 1] [--no-ref]
Writes benchmarks/results/scan_cpu.json (with the cpu_fused columns where that kernel builds here) and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from _common import environment, write_json
from mambaseg.ops import selective_scan

# (batch, K, d_inner, L, N): VM-UNet stages at 256x256 with batch 1, and a VMamba-v2 (N=1) stage
SHAPES = [(1, 4, 192, 4096, 16), (1, 4, 384, 1024, 16), (1, 4, 768, 256, 16), (1, 4, 96, 3136, 1)]


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--no-ref", action="store_true", help="skip the (slow) sequential reference")
    args = ap.parse_args()
    from mambaseg.ops import available_backends

    fused = available_backends()["cpu_fused"].available
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    g = torch.Generator().manual_seed(0)
    for batch, K, d, L, N in SHAPES:
        dim = K * d
        u = torch.randn(batch, dim, L, generator=g)
        delta = torch.randn(batch, dim, L, generator=g)
        A = -torch.rand(dim, N, generator=g) - 0.1
        B = torch.randn(batch, K, N, L, generator=g)
        C = torch.randn(batch, K, N, L, generator=g)
        D = torch.randn(dim, generator=g)
        bias = torch.randn(dim, generator=g)
        row = {"batch": batch, "k": K, "d_inner": d, "seqlen": L, "d_state": N}
        todo = [("torch", args.repeats)] + ([("cpu_fused", args.repeats)] if fused else [])
        todo += [] if args.no_ref else [("ref", args.ref_repeats)]
        with torch.no_grad():
            for be, reps in todo:
                row[f"{be}_fwd_ms"] = _time(
                    lambda be=be: selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend=be),
                    reps,
                )
        if "ref_fwd_ms" in row:
            row["speedup_torch_vs_ref"] = row["ref_fwd_ms"] / row["torch_fwd_ms"]
        if fused:
            row["speedup_fused_vs_torch"] = row["torch_fwd_ms"] / row["cpu_fused_fwd_ms"]
            leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, bias)]

            def fwd_bwd():
                y = selective_scan(*leaves[:6], delta_bias=leaves[6], delta_softplus=True, backend="cpu_fused")
                y.backward(torch.ones_like(y))

            row["cpu_fused_fwd_bwd_ms"] = _time(fwd_bwd, args.repeats)
        rows.append(row)
        print(row, flush=True)
    table = Table(title="selective scan on CPU (forward, no grad, ms)")
    for col in ("shape (b,K,d,L,N)", "ref", "torch", "torch vs ref", "cpu_fused", "fused vs torch",
                "cpu_fused fwd+bwd"):
        table.add_column(col)

    def f(r, key, fmt="{:.1f}"):
        return fmt.format(r[key]) if key in r else "-"

    for r in rows:
        table.add_row(
            str((r["batch"], r["k"], r["d_inner"], r["seqlen"], r["d_state"])),
            f(r, "ref_fwd_ms"),
            f(r, "torch_fwd_ms"),
            f(r, "speedup_torch_vs_ref", "{:.1f}x"),
            f(r, "cpu_fused_fwd_ms"),
            f(r, "speedup_fused_vs_torch", "{:.1f}x"),
            f(r, "cpu_fused_fwd_bwd_ms"),
        )
    Console().print(table)
    import os

    path = write_json("scan_cpu.json", {"benchmark": "scan_cpu", "load_avg": [round(v, 2) for v in os.getloadavg()],
                            **environment(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
