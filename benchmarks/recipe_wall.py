"""Time to result: the official training scripts of VM-UNet and DermoMamba against ``mambaseg train --recipe`` on the
same PH2 data (ph2_dev: 80 train / 20 val) and the same number of epochs, one after the other on one GPU.

For each model and side, a fresh process is started and timed from the parent's clock just before it starts:
- ``wall_s``: process start to the final metrics (official VM-UNet: end of its test of the best weights;
  official DermoMamba: return of ``trainer.fit``, whose last validation gives the final logged metrics; mambaseg:
  ``metrics.json`` written), plus ``process_exit_s``;
- ``first_step_s``: seconds from that process's start to its first optimizer step;
- ``epoch_s_median`` and the share of the epochs' time spent in data loading (waiting for training batches),
  forward/backward (+ optimizer), validation and checkpoint writing (the rest: ``share_other``). mambaseg reports
  these in ``history.json`` (``time_data``, ``time_step``, ``time_val``, ``time_ckpt``, ``time``) and ``metrics.json``
  (``train.first_step_s``); the official runs are timed by hooks around their functions
  (``benchmarks/official/run_*.py``);
- the final val pooled DSC (one confusion matrix over all val pixels): of the checkpoint each side selects (official
  VM-UNet: lowest val loss; official DermoMamba: best ``val_dice``; mambaseg: best val Dice) and of the last epoch.

Warm-up (``--warm-up``, default on): before the timed runs, each side runs once for one epoch. That first process
meets what only the first run on a machine meets: an empty Triton kernel cache (mambaseg; its ``first_step_s`` is
reported as ``first_step_cold_s``) and, where the Python environment ships without bytecode (the device's
site-packages has no ``__pycache__``), the compilation of every imported module; both sides then share a bytecode
cache (``PYTHONPYCACHEPREFIX=WORK/pycache``, set only in that case and said so in the JSON), as a pip install, which
writes bytecode, would. The official side's counterpart of a warm kernel cache is its prebuilt extension, whose
build is not timed either.

The official code is the fetched, git-ignored ``.official/`` (see ``benchmarks/official/README.md``); its
``selective_scan_cuda`` extension is built first (``benchmarks/official/build_selective_scan.py``, not part of any
timed wall). The official runs read PH2 in their own layouts, written from the same caches that mambaseg reads
(``benchmarks/official/prepare_data.py``).

Usage (GPU machine; the caches are made beforehand with ``mambaseg cache``, see ``benchmarks/official/README.md``)::

    PYTHONUNBUFFERED=1 python benchmarks/recipe_wall.py                          # both models, full recipes
    python benchmarks/recipe_wall.py --models vmunet --epochs 3                  # smoke run
    python benchmarks/recipe_wall.py --only mambaseg --epochs 1 --set train.device=cpu   # CPU test of one side
    python benchmarks/recipe_wall.py --markdown benchmarks/results/recipe_wall_h100.json  # the docs table
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, environment, write_json

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = Path(__file__).resolve().parent / "official"

MODELS: dict[str, dict[str, Any]] = {
    "vmunet": {"recipe": "vmunet_ph2", "cache": ".gpucache/ph2_256.npz", "driver": "run_vmunet.py",
               "official_epochs": 300},
    "dermomamba": {"recipe": "dermomamba_ph2", "cache": ".gpucache/ph2_192x256.npz", "driver": "run_dermomamba.py",
                   "official_epochs": 200},
}
TARGET_RATIO = 0.5  # mambaseg wall <= 0.5x the official script's
TARGET_FIRST_STEP_S = 10.0


def tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", "replace").replace("\r", "\n")[-chars:]
    except OSError:
        return ""


def run_child(cmd: list[str], log: Path, env: dict[str, str], timeout: float | None) -> tuple[int, float]:
    """Run ``cmd`` (stdout+stderr to ``log``); returns (exit code, seconds to exit). ``cmd`` may hold ``{t0}``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        t0 = time.time()
        proc = subprocess.Popen([c.replace("{t0}", repr(t0)) for c in cmd], stdout=f, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            rc = 124 if rc == 0 else rc
        return rc, time.time() - t0


def child_env(work: Path) -> dict[str, str]:
    """Environment of every timed child: this one, plus a shared bytecode cache when the installed packages carry no
    bytecode of their own (see the module docstring)."""
    env = dict(os.environ)
    env["TRITON_CACHE_DIR"] = str(work / "triton_cache")  # emptied at the start of a run with --warm-up
    if bytecode_missing():
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        # a cache that is never written is no cache: an environment that also forbids writing bytecode (the device
        # sets PYTHONDONTWRITEBYTECODE) would compile every imported module again in every timed process
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def bytecode_cache_files(work: Path) -> int:
    """Bytecode files in the shared cache (reported after the warm-up: proof the cache was filled)."""
    return sum(1 for _ in (work / "pycache").rglob("*.pyc")) if (work / "pycache").is_dir() else 0


def bytecode_note(work: Path) -> str:
    """What the timed children use as bytecode (for the JSON): see :func:`child_env`."""
    if not bytecode_missing():
        return "the installed packages' own"
    forbidden = "was set here, removed for the children" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "not set"
    return (f"PYTHONPYCACHEPREFIX={work / 'pycache'} (installed packages carry no bytecode; PYTHONDONTWRITEBYTECODE "
            f"{forbidden})")


def bytecode_missing() -> bool:
    import torch

    return not (Path(torch.__file__).parent / "__pycache__").is_dir()


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def run_official(name: str, args: argparse.Namespace, work: Path, scan_build: Path | None) -> dict[str, Any]:
    spec = MODELS[name]
    out = work / f"official_{name}"
    shutil.rmtree(out, ignore_errors=True)
    res_file = work / f"official_{name}.json"
    res_file.unlink(missing_ok=True)
    epochs = args.epochs if args.epochs is not None else args.official_epochs.get(name)
    cmd = [sys.executable, str(OFFICIAL / spec["driver"]), "--data", str(work / "ph2_official" / name),
           "--work", str(out), "--t0", "{t0}", "--result", str(res_file)]
    if scan_build is not None:
        cmd += ["--scan-build", str(scan_build)]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    cmd += args.official_arg
    env = child_env(work)
    log = work / f"official_{name}.log"
    print(f"[official {name}] {' '.join(cmd)}", flush=True)
    rc, exit_s = run_child(cmd, log, env, args.child_timeout)
    try:
        res = json.loads(res_file.read_text())
    except (OSError, ValueError):
        res = {"error": f"no result file (exit code {rc})"}
    full = spec["official_epochs"]
    res.update({"rc": rc, "process_exit_s": round(exit_s, 3), "wall_s": res.get("wall_to_final_metrics_s"),
                "log": str(log), "log_tail": tail(log, args.log_tail)})
    ran = res.get("epochs_run") or 0
    if epochs is not None and epochs < full and ran and res.get("epoch_s_median") is not None and args.epochs is None:
        # a shortened official run (--official-epochs): the full recipe's wall, extrapolated from this run
        res["wall_s_measured"] = res["wall_s"]
        res["wall_s"] = round(res["wall_s"] + (full - ran) * res["epoch_s_median"], 3)
        res["wall_s_extrapolated_to_epochs"] = full
        res["wall_s_note"] = (f"official run cut to {ran} of {full} epochs; wall_s = measured wall + "
                              f"{full - ran} x median epoch time")
    print(f"[official {name}] rc={rc} wall_s={res.get('wall_s')} first_step_s={res.get('first_step_s')} "
          f"epoch_s_median={res.get('epoch_s_median')} pooled_dsc={res.get('pooled_dsc_final')}", flush=True)
    return res


def run_mambaseg(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    spec = MODELS[name]
    out = work / f"mambaseg_{name}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "mambaseg", "train", "--recipe", spec["recipe"], "--data",
           str(REPO / spec["cache"]), "--out", str(out)]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    for s in args.set:
        cmd += ["--set", s]
    env = child_env(work)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    log = work / f"mambaseg_{name}.log"
    print(f"[mambaseg {name}] {' '.join(cmd)}", flush=True)
    t_start = time.time()
    rc, exit_s = run_child(cmd, log, env, args.child_timeout)
    res: dict[str, Any] = {"side": "mambaseg", "model": name, "command": " ".join(cmd[1:]), "rc": rc,
                           "process_exit_s": round(exit_s, 3), "log": str(log)}
    mpath, hpath = out / "metrics.json", out / "history.json"
    try:
        metrics = json.loads(mpath.read_text())
        # t_start is taken just before Popen (within a millisecond of run_child's own t0)
        res["wall_s"] = round(mpath.stat().st_mtime - t_start, 3)
    except (OSError, ValueError):
        metrics = {}
        res["wall_s"] = None
        res["error"] = f"no metrics.json (exit code {rc})"
    try:
        history = json.loads(hpath.read_text())
    except (OSError, ValueError):
        history = []
    tr = metrics.get("train", {})
    res["first_step_s"] = tr.get("first_step_s")
    res["startup_s"] = tr.get("startup_s")  # seconds from process start at each start-up mark (trainer)
    res["epochs_run"] = tr.get("epochs", len(history))
    res["steps"] = tr.get("steps")
    res["train_seconds"] = tr.get("seconds")
    res["images_per_second"] = tr.get("images_per_second")
    res["amp"] = tr.get("amp")
    res["stop_reason"] = tr.get("stop_reason")
    times = [r["time"] for r in history if isinstance(r.get("time"), (int, float))]
    res["epoch_s_median"] = _r(statistics.median(times), 4) if times else None
    res["epoch_s_first"] = _r(times[0], 4) if times else None
    res["loop_s"] = _r(sum(times)) if times else None
    total = sum(times)
    known = 0.0
    for key in ("time_data", "time_step", "time_val", "time_ckpt"):
        vals = [r.get(key) for r in history]
        share_key = key.replace("time_", "share_")
        if times and all(isinstance(v, (int, float)) for v in vals) and total > 0:
            res[share_key] = round(sum(vals) / total, 4)
            known += res[share_key]
        else:
            res[share_key] = None
    res["share_other"] = round(1 - known, 4) if times and res["share_step"] is not None else None
    pooled = metrics.get("pooled") or {}
    last = (metrics.get("last") or {}).get("pooled") or {}
    res["metrics"] = {"best_metric": metrics.get("best_metric"), "best_epoch": metrics.get("best_epoch"),
                      "pooled_best": {k: pooled.get(k) for k in ("dsc", "iou")} if pooled else None,
                      "pooled_last": {k: last.get(k) for k in ("dsc", "iou")} if last else None,
                      "per_case_dsc_best": (metrics.get("per_case") or {}).get("dsc")}
    res["pooled_dsc_final"] = pooled.get("dsc")
    res["log_tail"] = tail(log, args.log_tail)
    print(f"[mambaseg {name}] rc={rc} wall_s={res['wall_s']} first_step_s={res['first_step_s']} "
          f"epoch_s_median={res['epoch_s_median']} pooled_dsc={res['pooled_dsc_final']}", flush=True)
    return res


def warm_up(name: str, sides: list[str], args: argparse.Namespace, work: Path,
            scan_build: Path | None) -> dict[str, Any]:
    """One epoch of each side (untimed for the comparison): fills the bytecode and kernel caches the timed runs
    then find. Returns what the first processes measured (mambaseg: start-up with an empty Triton cache)."""
    short = argparse.Namespace(**{**vars(args), "epochs": 1, "log_tail": 600})
    out: dict[str, Any] = {}
    if "official" in sides:
        r = run_official(name, short, work, scan_build)
        out["official"] = {k: r.get(k) for k in ("rc", "first_step_s", "process_exit_s")}
    if "mambaseg" in sides:
        r = run_mambaseg(name, short, work)
        out["mambaseg"] = {k: r.get(k) for k in ("rc", "first_step_s", "process_exit_s", "epoch_s_first")}
    out["bytecode_files_after"] = bytecode_cache_files(work)
    return out


def merge(parts: list[dict[str, Any]], paths: list[Path]) -> dict[str, Any]:
    """One result from several runs on the same device: each model's sides (and warm-ups) from whichever run has
    them; the commands of all runs are kept."""
    devices = {p.get("device") for p in parts}
    if len(devices) != 1:
        raise SystemExit(f"--merge: the results come from different devices {sorted(map(str, devices))}")
    out = {k: v for k, v in parts[0].items() if k != "models"}
    out["command"] = " ; ".join(p.get("command", "") for p in parts)
    out["merged_from"] = [str(p) for p in paths]
    out["models"] = {}
    for part in parts:
        for name, entry in part.get("models", {}).items():
            into = out["models"].setdefault(name, {"recipe": entry.get("recipe"), "cache": entry.get("cache")})
            for side in ("official", "mambaseg"):
                if entry.get(side):
                    into[side] = entry[side]
                    warm = entry.get("warm_up") or {}  # this side's first process, and the run's cache facts
                    into.setdefault("warm_up", {}).update(
                        {k: v for k, v in warm.items() if k == side or k not in ("official", "mambaseg")})
    for entry in out["models"].values():
        entry["compare"] = compare(entry)
    return out


def compare(entry: dict[str, Any]) -> dict[str, Any]:
    off, ms = entry.get("official") or {}, entry.get("mambaseg") or {}
    out: dict[str, Any] = {}

    def ratio(key: str) -> float | None:
        a, b = ms.get(key), off.get(key)
        return round(a / b, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None

    out["wall_ratio"] = ratio("wall_s")
    out["epoch_s_ratio"] = ratio("epoch_s_median")
    out["first_step_ratio"] = ratio("first_step_s")
    out["wall_ratio_target"] = TARGET_RATIO
    out["wall_ratio_met"] = None if out["wall_ratio"] is None else out["wall_ratio"] <= TARGET_RATIO
    fs = ms.get("first_step_s")
    out["mambaseg_first_step_within_10s"] = None if fs is None else fs <= TARGET_FIRST_STEP_S
    same_epochs = off.get("epochs_run") == ms.get("epochs_run") and off.get("epochs_run") is not None
    out["same_epochs"] = same_epochs or bool(off.get("wall_s_extrapolated_to_epochs"))
    return out


SIDE_COLS = [("wall s", "wall_s", ".1f"), ("first step s", "first_step_s", ".2f"),
             ("first step s, empty kernel cache", "first_step_cold_s", ".2f"),
             ("s/epoch (median)", "epoch_s_median", ".3f"), ("data", "share_data", ".0%"),
             ("fwd/bwd", "share_step", ".0%"), ("val", "share_val", ".0%"), ("ckpt", "share_ckpt", ".0%"),
             ("other", "share_other", ".0%"), ("epochs", "epochs_run", "d"),
             ("val pooled DSC", "pooled_dsc_final", ".4f")]


def fmt(v: Any, spec: str) -> str:
    if v is None:
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def table(result: dict[str, Any]) -> str:
    head = "| model | side | " + " | ".join(c for c, _, _ in SIDE_COLS) + " |"
    lines = [head, "|" + "---|" * (len(SIDE_COLS) + 2)]
    for name, entry in result.get("models", {}).items():
        for side in ("official", "mambaseg"):
            r = entry.get(side)
            if not r:
                continue
            wall = fmt(r.get("wall_s"), ".1f") + ("*" if r.get("wall_s_extrapolated_to_epochs") else "")
            cells = [wall] + [fmt(r.get(k), s) for _, k, s in SIDE_COLS[1:]]
            lines.append(f"| {name} | {side} | " + " | ".join(cells) + " |")
        c = entry.get("compare") or {}
        if c.get("wall_ratio") is not None:
            lines.append(f"| {name} | mambaseg / official | {fmt(c['wall_ratio'], '.2f')}x | "
                         f"{fmt(c.get('first_step_ratio'), '.2f')}x | - | {fmt(c.get('epoch_s_ratio'), '.2f')}x |"
                         + " |" * (len(SIDE_COLS) - 4))
    if any((e.get("official") or {}).get("wall_s_extrapolated_to_epochs") for e in result.get("models", {}).values()):
        lines.append("\n\\* official run shortened; wall extrapolated to the full recipe (see wall_s_note)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="vmunet,dermomamba")
    ap.add_argument("--epochs", type=int, default=None, help="override both sides' epochs (smoke runs)")
    ap.add_argument("--only", choices=["official", "mambaseg"], default=None)
    ap.add_argument("--out-json", type=Path, default=None,
                    help="default benchmarks/results/recipe_wall_<gpu>.json (recipe_wall_cpu.json without a GPU)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/recipe_wall"), help="scratch folder (runs, logs, build)")
    ap.add_argument("--scan-build", type=Path, default=None, help="selective_scan_cuda build folder "
                    "(default WORK/ss_build; reused when it already holds a loadable build)")
    ap.add_argument("--scan-dtypes", choices=["all", "fp32"], default="fp32",
                    help="build_selective_scan.py --dtypes (fp32: only the kernels both models call; "
                         "falls back to all)")
    ap.add_argument("--jobs", type=int, default=16, help="MAX_JOBS of the extension build")
    ap.add_argument("--official-epochs", default="",
                    help="e.g. dermomamba=60: cut that official run and extrapolate its wall to the full recipe "
                         "(saves device time; marked in the JSON and the table)")
    ap.add_argument("--warm-up", action=argparse.BooleanOptionalAction, default=True,
                    help="run each side once for one epoch before timing (see the module docstring)")
    ap.add_argument("--set", action="append", default=[], help="passed to mambaseg train --set (repeatable)")
    ap.add_argument("--official-arg", action="append", default=[],
                    help="extra argument for the official drivers (repeatable, e.g. --official-arg=--cpu-smoke)")
    ap.add_argument("--child-timeout", type=float, default=None, help="kill a run after this many seconds")
    ap.add_argument("--log-tail", type=int, default=1500, help="characters of each run's log kept in the JSON")
    ap.add_argument("--markdown", type=Path, default=None, help="print the table of an existing result JSON, exit")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="join result JSONs of one device (e.g. the two sides of a model run by separate --only "
                         "calls) into --out-json, recompute the comparisons, exit")
    args = ap.parse_args(argv)
    if args.markdown is not None:
        print(table(json.loads(args.markdown.read_text())))
        return 0
    if args.merge:
        if args.out_json is None:
            ap.error("--merge needs --out-json")
        merged = merge([json.loads(p.read_text()) for p in args.merge], args.merge)
        write_json(args.out_json, merged)
        print(table(merged))
        return 0
    args.official_epochs = {k: int(v) for k, v in (p.split("=") for p in args.official_epochs.split(",") if p)}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown models {unknown} (known: {list(MODELS)})")
    sides = ["official", "mambaseg"] if args.only is None else [args.only]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    for m in models:
        if not (REPO / MODELS[m]["cache"]).is_file():
            ap.error(f"{MODELS[m]['cache']} is missing: make it with mambaseg cache (benchmarks/official/README.md)")

    import torch

    from _common import device_tag

    out_json = args.out_json or RESULTS / (f"recipe_wall_{device_tag()}.json" if torch.cuda.is_available()
                                           else "recipe_wall_cpu.json")
    result: dict[str, Any] = {
        **environment(),
        "benchmark": "recipe_wall",
        "what": ("official training script vs mambaseg train --recipe, same PH2 data (ph2_dev 80/20) and epochs, "
                 "one after the other on this device; wall_s = process start to final metrics"),
        "epochs_override": args.epochs,
        "targets": {"wall_ratio_max": TARGET_RATIO, "mambaseg_first_step_s_max": TARGET_FIRST_STEP_S},
        "models": {},
    }
    if torch.cuda.is_available():
        result["gpu_name"] = torch.cuda.get_device_name(0)
    scan_build = None
    cpu_smoke = "--cpu-smoke" in args.official_arg
    if "official" in sides:
        sys.path.insert(0, str(OFFICIAL))
        from prepare_data import prepare

        t = time.time()
        caches = {m: REPO / MODELS[m]["cache"] for m in models}
        result["official_data"] = prepare(caches.get("vmunet"), caches.get("dermomamba"), work / "ph2_official")
        result["official_data"]["seconds"] = round(time.time() - t, 2)
        commits = OFFICIAL.parent.parent / ".official" / "COMMITS.txt"
        result["official_commits"] = commits.read_text().split("\n") if commits.is_file() else None
        if not cpu_smoke:
            scan_build = (args.scan_build or work / "ss_build").resolve()
            env = dict(os.environ, MAX_JOBS=str(args.jobs))
            cmd = [sys.executable, str(OFFICIAL / "build_selective_scan.py"), "--out", str(scan_build),
                   "--dtypes", args.scan_dtypes, "--json", str(work / "build.json")]
            print(f"[build] {' '.join(cmd)}", flush=True)
            t = time.time()
            r = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            build = {"rc": r.returncode, "seconds": round(time.time() - t, 1), "log_tail": r.stdout[-args.log_tail:]}
            try:
                build.update(json.loads((work / "build.json").read_text()))
            except (OSError, ValueError):
                pass
            result["scan_build"] = build
            print(f"[build] rc={r.returncode} in {build['seconds']} s", flush=True)
            if r.returncode != 0:
                print(r.stdout[-4000:], flush=True)
                write_json(out_json, result)
                return 1
    if args.warm_up:
        shutil.rmtree(work / "triton_cache", ignore_errors=True)
    result["kernel_cache"] = (f"TRITON_CACHE_DIR={work / 'triton_cache'}, "
                              + ("emptied first, filled by the warm-up" if args.warm_up else "as found"))
    result["bytecode_cache"] = bytecode_note(work)
    for name in models:
        entry: dict[str, Any] = {"recipe": MODELS[name]["recipe"], "cache": MODELS[name]["cache"]}
        result["models"][name] = entry
        if args.warm_up:
            entry["warm_up"] = warm_up(name, sides, args, work, scan_build)
            write_json(out_json, result)
        if "official" in sides:
            entry["official"] = run_official(name, args, work, scan_build)
            write_json(out_json, result)
        if "mambaseg" in sides:
            entry["mambaseg"] = run_mambaseg(name, args, work)
            cold = (entry.get("warm_up") or {}).get("mambaseg") or {}
            entry["mambaseg"]["first_step_cold_s"] = cold.get("first_step_s")
        entry["compare"] = compare(entry)
        write_json(out_json, result)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(out_json, result)
    print(table(result), flush=True)
    print(f"wrote {out_json}", flush=True)
    failed = [f"{m}/{s}" for m, e in result["models"].items() for s in sides if (e.get(s) or {}).get("rc")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
