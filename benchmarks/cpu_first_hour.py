"""A new user's first hour on a CPU machine, old defaults against new ones, idle and with one core kept busy.

What runs (each a fresh ``python -m mambaseg ...`` process, timed from start to exit, old and new back to back in
the same condition):

* ``ph2_train``: the README's training example
  ``mambaseg train --model vmunet_tiny --data ph2_dev --epochs 1 --image-size 64 --batch-size 2 --device cpu``;
* ``demo``: ``mambaseg demo --no-progress`` (old: stops at Dice 0.85 or 250 s of training; new: Dice 0.85 or its
  12 epochs);
* ``acdc_eval``: ``mambaseg evaluate --split test`` of one ACDC checkpoint (``vmunet_tiny`` at 128x128, trained here
  for a few steps; the same file for old and new) on the 40 test volumes.

Conditions: ``idle`` (nothing added by this script; the machine may be shared, so the load averages before and
after every run are recorded) and ``loaded`` (a second process spinning on one core for the whole condition).

"Old" is the library at ``--old-commit`` (default ``b36feeb``, main before this work), extracted with
``git archive`` into a temporary folder and run with its own defaults (no ``--threads`` option, OpenMP's default
waiting, torch's default thread count). "New" is ``--new-commit`` (default ``HEAD``) extracted the same way and run
with its defaults. The environment of both is the caller's minus ``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``,
``MKL_NUM_THREADS`` (so each side's defaults apply).

The new code's fused CPU scan kernel compiles once per install and source (cached in torch's extension folder).
Before the scenarios the script records that one-time cost (``kernel_build``: a process loading the kernel with an
empty extension folder) and then loads it once with the normal cache, so the timed runs measure a built install
(``kernel_warm``: that load's seconds, and whether it had to build).

Also measured: the peak RSS of one ``vmunet`` training step (forward, backward, AdamW step) on CPU at 256x256,
batch 2, with the new code, and old vs new at 128x128 batch 1 (the old code needs about 14 GB at 256x256 batch 1 and
is OOM-killed at batch 2 on this 24 GiB shared machine, so it is not run there); and the thread settings on a
``vmunet_tiny`` forward+backward (batch 16, 64x64) in each condition: 1 thread, all cores with OpenMP's default
waiting, all cores with passive waiting, 1 intra-op + all-cores inter-op threads, and what ``--threads auto``
picks (the CLI's default).

    python benchmarks/cpu_first_hour.py                      # everything (about 40 minutes on a busy 2-core host)
    python benchmarks/cpu_first_hour.py --only ph2_train --conditions loaded

Writes ``benchmarks/results/cpu_first_hour.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _old_vs_new import (  # noqa: E402
    CLEARED, DATA, RESULTS, child_env, cpu_cores, cpu_environment, extract, load, src_dirty,
)

SCENARIOS = ("ph2_train", "demo", "acdc_eval")

THREADS_PROBE = r"""
import json, os, sys, time
import torch
intra, inter = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(intra)
if inter:
    torch.set_num_interop_threads(inter)
import mambaseg
torch.manual_seed(0)
m = mambaseg.create_model("vmunet_tiny", num_classes=1)
x = torch.randn(16, 3, 64, 64)
times = []
for _ in range(4):
    t = time.perf_counter(); m(x).mean().backward(); times.append(time.perf_counter() - t)
print(json.dumps({"times_s": times}))
"""

RSS_PROBE = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
import mambaseg
size, batch = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
m = mambaseg.create_model("vmunet", num_classes=1)
opt = torch.optim.AdamW(m.parameters())
x = torch.randn(batch, 3, size, size); y = (torch.rand(batch, 1, size, size) > 0.5).float()
t = time.perf_counter()
loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x), y)
loss.backward(); opt.step()
print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "step_s": time.perf_counter() - t, "loss": float(loss)}))
"""


def run(cmd: list[str], src: Path, cwd: Path, timeout: float) -> dict:
    before = load()
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=child_env(src), capture_output=True, text=True, timeout=timeout)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = "timeout", (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    secs = time.perf_counter() - t0
    return {"seconds": round(secs, 2), "rc": rc, "load_before": before, "load_after": load(),
            "tail": out.strip().splitlines()[-3:]}


def mambaseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "mambaseg", *args]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def scenario(name: str, side: str, src: Path, work: Path, ckpt: Path | None, timeout: float) -> dict:
    out = work / f"{name}_{side}"
    shutil.rmtree(out, ignore_errors=True)
    if name == "ph2_train":
        cmd = mambaseg("train", "--model", "vmunet_tiny", "--data", str(DATA / "ph2_dev"), "--epochs", "1",
                       "--image-size", "64", "--batch-size", "2", "--out", str(out), "--device", "cpu",
                       "--no-progress")
        r = run(cmd, src, work, timeout)
        m = read_json(out / "metrics.json")
        r.update(dice=m.get("dice"), steps=(m.get("train") or {}).get("steps"),
                 train_seconds=(m.get("train") or {}).get("seconds"))
    elif name == "demo":
        cmd = mambaseg("demo", "--out", str(out), "--no-progress")
        r = run(cmd, src, work, timeout)
        m = read_json(out / "metrics.json")
        r.update(dice=m.get("dice"), epochs=(m.get("train") or {}).get("epochs"),
                 stop_reason=(m.get("train") or {}).get("stop_reason"))
    else:
        cmd = mambaseg("evaluate", "--checkpoint", str(ckpt), "--data", str(DATA / "acdc"), "--split", "test",
                       "--out", str(out), "--device", "cpu")
        r = run(cmd, src, work, timeout)
        m = read_json(out / "metrics.json")
        r.update(dice=m.get("dice"), cases=m.get("n_cases", m.get("n_volumes")))
    r["command"] = " ".join(["python"] + cmd[1:]).replace(str(work), "WORK").replace(str(src), "SRC")
    return r


def threads_probe(src: Path, work: Path, cores: int) -> dict:
    probe = work / "threads_probe.py"
    probe.write_text(THREADS_PROBE)
    sys.path.insert(0, str(src))
    from mambaseg.runtime import cpu_threads  # the new code's rule, evaluated now

    sys.path.pop(0)
    auto = cpu_threads("auto")
    configs = [("1 thread", 1, 0, {}), (f"{cores} threads", cores, 0, {}),
               (f"{cores} threads, OMP_WAIT_POLICY=PASSIVE", cores, 0, {"OMP_WAIT_POLICY": "PASSIVE"}),
               (f"1 intra-op + {cores} inter-op threads", 1, cores, {}),
               (f"--threads auto ({auto})", auto, 0, {})]
    out = {}
    for label, intra, inter, extra in configs:
        env = {**child_env(src), **extra}
        before = load()
        p = subprocess.run([sys.executable, str(probe), str(intra), str(inter)], env=env, capture_output=True,
                           text=True, timeout=900)
        try:
            times = json.loads(p.stdout.strip().splitlines()[-1])["times_s"]
        except (ValueError, IndexError):
            out[label] = {"error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
            continue
        steady = sorted(times[1:])
        out[label] = {"median_s": round(steady[len(steady) // 2], 3), "times_s": [round(t, 3) for t in times],
                      "load_before": before, "load_after": load()}
    return out


def rss_probe(src: Path, work: Path, size: int, batch: int) -> dict:
    probe = work / "rss_probe.py"
    probe.write_text(RSS_PROBE)
    p = subprocess.run([sys.executable, str(probe), str(size), str(batch)], env=child_env(src), capture_output=True,
                       text=True, timeout=1800)
    try:
        return {"size": size, "batch": batch, **json.loads(p.stdout.strip().splitlines()[-1])}
    except (ValueError, IndexError):
        return {"size": size, "batch": batch, "error": (p.stderr or p.stdout).strip().splitlines()[-2:]}


KERNEL_PROBE = r"""
import json, time
t = time.perf_counter()
from mambaseg.ops.selective_scan_cpu import load_library
ok, why = load_library()
print(json.dumps({"seconds": round(time.perf_counter() - t, 2), "ok": ok, "reason": why}))
"""


def kernel_probe(src: Path, work: Path, extensions_dir: Path | None) -> dict:
    """Load (building if needed) the new code's fused CPU kernel in a fresh process; ``extensions_dir``: a cache
    folder to use instead of torch's default (an empty one measures the one-time build)."""
    env = child_env(src)
    if extensions_dir is not None:
        env["TORCH_EXTENSIONS_DIR"] = str(extensions_dir)
    before = load()
    p = subprocess.run([sys.executable, "-c", KERNEL_PROBE], env=env, capture_output=True, text=True, timeout=900)
    try:
        r = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        r = {"error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
    return {**r, "load_before": before, "load_after": load()}


def acdc_checkpoint(src: Path, work: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    out = work / "acdc_ckpt"
    if not (out / "checkpoints" / "best.pt").is_file():
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(mambaseg("train", "--model", "vmunet_tiny", "--data", str(DATA / "acdc"), "--image-size",
                                "128", "--batch-size", "8", "--epochs", "1", "--max-steps", "30", "--out", str(out),
                                "--device", "cpu", "--no-progress"),
                       cwd=work, env=child_env(src), check=True, capture_output=True)
    return out / "checkpoints" / "best.pt"


def speedup(old: dict, new: dict) -> float | None:
    if not isinstance(old.get("seconds"), (int, float)) or not new.get("seconds"):
        return None
    return round(old["seconds"] / new["seconds"], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old-commit", default="b36feeb")
    ap.add_argument("--new-commit", default="HEAD")
    ap.add_argument("--conditions", default="idle,loaded")
    ap.add_argument("--only", default=",".join(SCENARIOS + ("threads", "rss")))
    ap.add_argument("--timeout", type=float, default=1500.0, help="Seconds before a run is stopped (recorded).")
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_first_hour.json")
    ap.add_argument("--acdc-checkpoint", type=Path, default=None,
                    help="An ACDC checkpoint to evaluate (default: train vmunet_tiny 128x128 for 30 steps first).")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="mambaseg_first_hour_"))
    old_src, new_src = work / "old", work / "new"
    commits = {"old": extract(args.old_commit, old_src), "new": extract(args.new_commit, new_src)}
    old_src, new_src = old_src / "src", new_src / "src"
    dirty = src_dirty()
    cores = cpu_cores()
    import torch

    result: dict = {
        "environment": {**cpu_environment(), "torch": torch.__version__},
        "old": {"commit": commits["old"], "how": f"git archive {commits['old'][:7]} src, run as python -m mambaseg "
                "with its defaults (torch's default threads, OpenMP's default waiting)"},
        "new": {"commit": commits["new"], "how": f"git archive {commits['new'][:7]} src, run as python -m mambaseg "
                "with its defaults (--threads auto)",
                "uncommitted_changes_in_src_not_measured": dirty},
        "cleared_environment": list(CLEARED),
        "data": str(DATA),
        "conditions": {},
    }
    result["kernel_build"] = kernel_probe(new_src, work, work / "empty_extension_cache")
    result["kernel_warm"] = kernel_probe(new_src, work, None)
    print("kernel", json.dumps({k: result[k] for k in ("kernel_build", "kernel_warm")}), flush=True)
    ckpt = acdc_checkpoint(new_src, work, args.acdc_checkpoint) if "acdc_eval" in only else None
    result["acdc_checkpoint"] = "vmunet_tiny, 128x128, 30 steps of batch 8 (trained by the new code; evaluated by both)"
    for cond in [c for c in args.conditions.split(",") if c]:
        burner = None
        if cond == "loaded":
            burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(5)
        part: dict = {"load_start": load(), "scenarios": {}}
        try:
            for name in SCENARIOS:
                if name not in only:
                    continue
                row = {}
                for side, src in (("old", old_src), ("new", new_src)):
                    row[side] = scenario(name, side, src, work, ckpt, args.timeout)
                    print(cond, name, side, json.dumps(row[side]), flush=True)
                row["speedup"] = speedup(row["old"], row["new"])
                part["scenarios"][name] = row
            if "threads" in only:
                part["threads"] = threads_probe(new_src, work, cores)
                print(cond, "threads", json.dumps(part["threads"]), flush=True)
            if "rss" in only and cond == "idle":
                result["rss"] = {"new_256_b2": rss_probe(new_src, work, 256, 2),
                                 "new_128_b1": rss_probe(new_src, work, 128, 1),
                                 "old_128_b1": rss_probe(old_src, work, 128, 1)}
                print("rss", json.dumps(result["rss"]), flush=True)
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
        part["load_end"] = load()
        result["conditions"][cond] = part
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)


def print_table(result: dict) -> None:
    print(f"\n{'condition':<8} {'scenario':<10} {'old s':>8} {'new s':>8} {'speedup':>8} {'old dice':>9} "
          f"{'new dice':>9}  load (start)")
    for cond, part in result["conditions"].items():
        for name, row in part["scenarios"].items():
            o, n = row["old"], row["new"]
            dice = [f"{d['dice']:.4f}" if isinstance(d.get("dice"), (int, float)) else "-" for d in (o, n)]
            print(f"{cond:<8} {name:<10} {o['seconds']:>8} {n['seconds']:>8} {str(row['speedup']):>8} {dice[0]:>9} "
                  f"{dice[1]:>9}  {o['load_before'][0]} / {n['load_before'][0]}")
        for label, t in (part.get("threads") or {}).items():
            print(f"{cond:<8} threads    {label}: {t.get('median_s', t.get('error'))} s")
    for key, r in (result.get("rss") or {}).items():
        print(f"rss {key}: {r.get('peak_rss_gb', r.get('error'))} GB")
    for key in ("kernel_build", "kernel_warm"):
        r = result.get(key) or {}
        print(f"{key}: {r.get('seconds', r.get('error'))} s ({r.get('reason', '')})")


if __name__ == "__main__":
    main()
