"""CPU inference latency of every registered model at its native input size, batch 1, on 1 and 2 threads.

For each model and thread count: the eager model with the chunked PyTorch scan (``torch`` backend, the old CPU
path), the same model with the fused C++ scan (``cpu_fused``), the fused scan under bf16 autocast, and the exported
ONNX graph under onnxruntime. The two eager paths are timed in alternating rounds in the same process (so a change of
machine load hits both alike); every number is the median of ``--repeats`` runs after a warm-up run. The eager paths
of a model are timed first, for every thread count; the ONNX export then runs in a child process (so the tracer
never touches the timing process) and onnxruntime is timed last.

Usage:
    python benchmarks/cpu_latency.py                      # all models, 10 runs each (long on a busy 2-core machine)
    python benchmarks/cpu_latency.py --quick              # vmunet, dermomamba, msvmunet; 10 runs; 2 threads only
    python benchmarks/cpu_latency.py --models vmunet --threads 2 --repeats 20 --no-onnx

Writes benchmarks/results/cpu_latency.json (``--out`` to change) with device, versions, command, date and the load
average of the machine before and after every model (other processes share the machine: the numbers are only as
quiet as that), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import mambaseg
from _common import environment, write_json
from _old_vs_new import load
from mambaseg.export import export_onnx, native_input_shape
from mambaseg.export.onnx import onnxruntime_session
from mambaseg.ops import available_backends, use_backend

QUICK = ["vmunet", "dermomamba", "msvmunet"]


def _build(name: str):
    shape = native_input_shape(name)
    kwargs = {"img_size": shape[2:]} if name == "dermomamba" else {}
    torch.manual_seed(0)
    model = mambaseg.create_model(name, num_classes=1, in_chans=shape[1], **kwargs).eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    return model, x


def _time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _eager(model, x, backend: str, bf16: bool = False):
    def run():
        with torch.inference_mode(), use_backend(backend), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return model(x)

    return run


def _export_subprocess(name: str, out: Path) -> dict:
    """Export ``name`` (built as :func:`_build` builds it: same seed, same weights) to ONNX in a child process, so the
    tracer's allocations and state never touch the process that times the eager paths (an export in the timing
    process made MSVM-UNet's later eager runs about 15 % slower). Returns the child's report (or its error)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--export-one", name, str(out)],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"export process failed (exit {proc.returncode}): {tail[:300]}"}
    return json.loads(lines[-1])


def _export_one(name: str, out: str) -> None:
    model, x = _build(name)
    try:
        rep = export_onnx(model, Path(out), tuple(x.shape), check=False)
        print(json.dumps({"path": rep.path, "export_s": rep.export_seconds, "exporter": rep.exporter,
                          "notes": rep.notes}))
    except Exception as exc:  # report it; the parent keeps the eager numbers
        print(json.dumps({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}))


def measure(name: str, threads: list[int], repeats: int, onnx: bool, bf16: bool, torch_path: bool) -> dict:
    """Eager paths for every thread count first, then (after an export in a child process) onnxruntime."""
    t_start = time.perf_counter()
    model, x = _build(name)
    rec: dict = {"model": name, "input": list(x.shape), "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                 "load_before": load(), "threads": {}}
    outputs = {}
    for nt in threads:
        torch.set_num_threads(nt)
        r: dict = {}
        fused, old = _eager(model, x, "cpu_fused"), _eager(model, x, "torch")
        with torch.inference_mode():
            y_fused = outputs[nt] = fused()
            if torch_path:
                y_torch = old()
                r["max_abs_diff_fused_vs_torch"] = float((y_fused - y_torch).abs().max())
        tf, tt = [], []
        for _ in range(repeats):  # alternate the two paths: both see the same machine load
            tf.append(_time_once(fused))
            if torch_path:
                tt.append(_time_once(old))
        r["fused_s"] = statistics.median(tf)
        r["fused_runs_s"] = [round(v, 4) for v in tf]
        if torch_path:
            r["torch_s"] = statistics.median(tt)
            r["torch_runs_s"] = [round(v, 4) for v in tt]
            r["ratio_torch_over_fused"] = r["torch_s"] / r["fused_s"]
        if bf16:
            run = _eager(model, x, "cpu_fused", bf16=True)
            y_bf = run()
            r["fused_bf16_max_abs_diff"] = float((y_bf.float() - y_fused).abs().max())
            tb = [_time_once(run) for _ in range(repeats)]
            r["fused_bf16_s"] = statistics.median(tb)
            r["fused_bf16_runs_s"] = [round(v, 4) for v in tb]
        rec["threads"][str(nt)] = r
        print(f"  {name} {nt} thread(s): " + ", ".join(f"{k} {v:.4g}" for k, v in r.items() if isinstance(v, float)),
              flush=True)
    if onnx:
        exp = _export_subprocess(name, Path(tempfile.mkdtemp()) / f"{name}.onnx")
        if "error" in exp:
            rec["onnx_error"] = exp["error"]
        else:
            rec["onnx_export_s"] = round(exp["export_s"], 1)
            rec["onnx_exporter"] = exp["exporter"]
            if exp["notes"]:
                rec["onnx_notes"] = [n[:300] for n in exp["notes"]]
            for nt in threads:
                try:
                    sess = onnxruntime_session(exp["path"], nt)
                except Exception as exc:  # an exported graph onnxruntime refuses: record it, keep the eager numbers
                    rec["onnx_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                    break
                r = rec["threads"][str(nt)]
                feed = {sess.get_inputs()[0].name: x.numpy()}
                y_ort = torch.from_numpy(sess.run(None, feed)[0])
                r["onnxruntime_max_abs_diff"] = float((y_ort - outputs[nt]).abs().max())
                to = [_time_once(lambda: sess.run(None, feed)) for _ in range(repeats)]
                r["onnxruntime_s"] = statistics.median(to)
                r["onnxruntime_runs_s"] = [round(v, 4) for v in to]
                del sess
                print(f"  {name} {nt} thread(s): onnxruntime {r['onnxruntime_s']:.4g} s "
                      f"(max abs diff to fused {r['onnxruntime_max_abs_diff']:.3g})", flush=True)
    rec["load_after"] = load()
    rec["wall_s"] = round(time.perf_counter() - t_start, 1)  # this model's whole measurement, export included
    return rec


def table(results: list[dict]) -> str:
    lines = ["| model | input | threads | torch scan (s) | fused scan (s) | speed-up | fused + bf16 autocast (s) | "
             "onnxruntime (s) | load avg (1 min) before/after |",
             "|---|---|---|---|---|---|---|---|---|"]

    def f(v, fmt="{:.3f}"):
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    for rec in results:
        for nt, r in rec["threads"].items():
            lines.append(
                f"| {rec['model']} | {'x'.join(map(str, rec['input']))} | {nt} | {f(r.get('torch_s'))} | "
                f"{f(r.get('fused_s'))} | {f(r.get('ratio_torch_over_fused'), '{:.1f}x')} | {f(r.get('fused_bf16_s'))} | "
                f"{f(r.get('onnxruntime_s')) if 'onnx_error' not in rec else 'export failed'} | "
                f"{rec['load_before'][0]} / {rec['load_after'][0]} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None, help="model names (default: every registered model)")
    ap.add_argument("--quick", action="store_true", help=f"models {QUICK}, 2 threads only")
    ap.add_argument("--threads", nargs="+", type=int, default=None, help="thread counts (default 1 2)")
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (median; default 10)")
    ap.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime column")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast column")
    ap.add_argument("--no-torch", action="store_true", help="skip the old torch-scan path (slow)")
    ap.add_argument("--out", default=None, help="JSON file name under benchmarks/results (default cpu_latency.json)")
    ap.add_argument("--export-one", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)  # the export child
    args = ap.parse_args()
    if args.export_one:
        _export_one(*args.export_one)
        return
    if not available_backends()["cpu_fused"].available:
        raise SystemExit(f"the fused CPU kernel is unavailable: {available_backends()['cpu_fused'].reason}")
    models = args.models or (QUICK if args.quick else mambaseg.list_models())
    threads = args.threads or ([2] if args.quick else [1, 2])
    onnx = not args.no_onnx
    if onnx:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime is not installed (pip install 'mambaseg[onnx]'): no onnxruntime column")
            onnx = False
    started = dt.datetime.now().isoformat(timespec="seconds")
    results: list[dict] = []
    out = args.out or "cpu_latency.json"
    for name in models:
        print(f"{name} ...", flush=True)
        results.append(measure(name, threads, args.repeats, onnx, not args.no_bf16, not args.no_torch))
        path = write_json(out if "/" not in out else Path(out), _payload(args, started, results))  # after every model
    print(table(results))
    print(f"wrote {path}")


def _payload(args, started: str, results: list[dict]) -> dict:
    payload = {
        "benchmark": "cpu_latency",
        "date": started,
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "repeats": args.repeats,
        "note": "median of `repeats` runs after one warm-up; torch and fused eager paths alternate run by run in "
                "one process; load_before/after = os.getloadavg() (1, 5, 15 min) of the shared machine",
        "cpu_backend": available_backends()["cpu_fused"].reason,
        "results": results,
        **environment(),
    }
    try:
        import onnxruntime

        payload["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        payload["onnxruntime"] = None
    return payload


if __name__ == "__main__":
    main()
