"""CPU timing of the selective-scan backends ("ref" sequential vs "torch" chunked) at SS2D shapes.

Usage: python benchmarks/scan_cpu.py [--repeats 3]
Writes benchmarks/results/scan_cpu.json and prints a table.
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
    args = ap.parse_args()
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
        with torch.no_grad():
            for be, reps in (("torch", args.repeats), ("ref", args.ref_repeats)):
                row[f"{be}_fwd_ms"] = _time(
                    lambda be=be: selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend=be),
                    reps,
                )
        row["speedup_torch_vs_ref"] = row["ref_fwd_ms"] / row["torch_fwd_ms"]
        rows.append(row)
        print(row, flush=True)
    table = Table(title="selective scan on CPU (forward, no grad, ms)")
    for col in ("shape (b,K,d,L,N)", "ref", "torch", "speed-up"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str((r["batch"], r["k"], r["d_inner"], r["seqlen"], r["d_state"])),
            f"{r['ref_fwd_ms']:.1f}",
            f"{r['torch_fwd_ms']:.1f}",
            f"{r['speedup_torch_vs_ref']:.1f}x",
        )
    Console().print(table)
    path = write_json("scan_cpu.json", {"benchmark": "scan_cpu", **environment(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
