"""The CPU must-show smoke runs of the command-line interface: wall seconds (process start to exit) and metrics.

Each step is a fresh ``python -m mambaseg ...`` process (the ``mambaseg`` command), run one after the other in a
temporary folder that is deleted at the end; the script reads the ``metrics.json`` / ``arch.json`` the step wrote.

* ``pipeline`` (issue 3): ``train`` vmunet_tiny for 1 epoch on ``ph2_dev`` at 64x64, batch 2; ``evaluate`` its
  ``best.pt`` on the same data; ``demo`` (synthetic blobs, stops at Dice 0.85 or the demo recipe's epochs).
* ``slicemamba`` (issue 7): ``search`` on ``endotect_polyp`` (1 supernet epoch, 2 generations of 4, 64x64, batch 2),
  then ``train --model slicemamba --arch OUT/arch.json`` for 1 epoch on the same data.
* ``acdc`` (issue 6): ``train --model msvmunet`` on ``acdc`` for 5 optimizer steps of batch 2 (the shipped
  ``msvmunet_acdc`` recipe is picked automatically: 224x224, 0.4 CE + 0.6 Dice), then its per-volume validation
  metrics (20 volumes). A smoke run, not a trained model.

The recorded commands are the ones run, with the temporary folder written ``TMP`` and the data root as given to
``--data-root`` (also in the metrics read back). Every step runs on the CPU with the CLI's default ``--threads
auto``; the load averages before and after each step are recorded (the machine may be shared), with the first and
last lines of its output. The first CLI run after an install or a change of the fused CPU scan kernel's source also
builds that kernel (about 30 s on 2 cores, inside that step's wall time): run the script twice when the numbers
matter.

    python benchmarks/cpu_smoke.py                           # all three (about 3 minutes on an idle 2-core machine)
    python benchmarks/cpu_smoke.py --only acdc --data-root ../shared/data

Writes ``cpu_mustshow_pipeline.json``, ``cpu_mustshow_slicemamba.json`` and ``acdc_cpu_smoke_msvmunet.json`` in
``--results-dir`` (default ``benchmarks/results``) and prints a table. A step that fails leaves its file as it was
and the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, environment  # noqa: E402

from mambaseg.utils.files import atomic_write_json  # noqa: E402

SMOKES = ("pipeline", "slicemamba", "acdc")
DATASETS = {"pipeline": "ph2_dev", "slicemamba": "endotect_polyp", "acdc": "acdc"}
FILES = {"pipeline": "cpu_mustshow_pipeline.json", "slicemamba": "cpu_mustshow_slicemamba.json",
         "acdc": "acdc_cpu_smoke_msvmunet.json"}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
PLACEHOLDERS = "TMP: the temporary folder the steps ran in (deleted afterwards); data paths as given to --data-root"


class StepFailed(RuntimeError):
    pass


def placeheld(x, work: Path, root: Path, root_text: str):
    """``x`` with the temporary folder written ``TMP`` and the data root as given, in every string."""
    if isinstance(x, str):
        return x.replace(str(work), "TMP").replace(str(root), root_text)
    if isinstance(x, dict):
        return {k: placeheld(v, work, root, root_text) for k, v in x.items()}
    if isinstance(x, list):
        return [placeheld(v, work, root, root_text) for v in x]
    return x


class Runner:
    """Runs ``mambaseg`` steps in ``work`` (data under ``root``, recorded as ``root_text``) and keeps their records."""

    def __init__(self, work: Path, root: Path, root_text: str, timeout: float):
        self.work, self.root, self.root_text, self.timeout = work, root, root_text, timeout

    def data(self, name: str) -> str:
        return str(self.root / name)

    def shown(self, args: list[str]) -> str:
        """The command as recorded: ``python -m mambaseg ...`` with the placeholders."""
        return placeheld(shlex.join(["python", "-m", "mambaseg", *args]), self.work, self.root, self.root_text)

    def __call__(self, step: str, args: list[str]) -> dict:
        before = [round(v, 2) for v in os.getloadavg()]
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "mambaseg", *args], cwd=self.work, capture_output=True,
                               text=True, timeout=self.timeout)
            rc, out = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired:
            rc, out = "timeout", f"stopped after {self.timeout:g} s"
        wall = time.perf_counter() - t0
        rec = {"step": step, "command": self.shown(args), "wall_s_incl_startup": round(wall, 1), "rc": rc,
               "load_before": before, "load_after": [round(v, 2) for v in os.getloadavg()],
               "head": out.strip().splitlines()[:2], "tail": out.strip().splitlines()[-3:]}
        print(f"  {step}: {rec['wall_s_incl_startup']} s, rc {rc}  ({rec['command']})", flush=True)
        if rc != 0:
            raise StepFailed(f"{step} failed (rc {rc}): {rec['command']}\n" + out.strip()[-3000:])
        return rec


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def binary(m: dict) -> dict:
    return {k: m[k] for k in ("dice", "iou", "per_case_dice")}


def pipeline(run: Runner) -> dict:
    data = run.data("ph2_dev")
    train = run("train", ["train", "--model", "vmunet_tiny", "--data", data, "--epochs", "1", "--image-size", "64",
                          "--batch-size", "2", "--out", str(run.work / "RUN"), "--device", "cpu", "--no-progress"])
    ev = run("evaluate", ["evaluate", "--checkpoint", str(run.work / "RUN" / "checkpoints" / "best.pt"), "--data",
                          data, "--out", str(run.work / "EV"), "--device", "cpu"])
    demo = run("demo", ["demo", "--out", str(run.work / "DEMO"), "--no-progress"])
    dm = read(run.work / "DEMO" / "metrics.json")
    return {
        "what": "issue 3 CPU must-show: train vmunet_tiny 1 epoch on ph2_dev (64x64, batch 2), evaluate its best.pt, "
                "run the demo",
        "cli_commands": [r["command"] for r in (train, ev, demo)],
        "placeholders": PLACEHOLDERS,
        "train_wall_s_incl_startup": train["wall_s_incl_startup"],
        "evaluate_wall_s_incl_startup": ev["wall_s_incl_startup"],
        "demo_wall_s_incl_startup": demo["wall_s_incl_startup"],
        "run_metrics": binary(read(run.work / "RUN" / "metrics.json")),
        "evaluate_metrics": binary(read(run.work / "EV" / "metrics.json")),
        "demo": {"dice": dm["dice"], "epochs": (dm.get("train") or {}).get("epochs"),
                 "stop_reason": (dm.get("train") or {}).get("stop_reason")},
        "steps": [train, ev, demo],
    }


def slicemamba(run: Runner) -> dict:
    data, out = run.data("endotect_polyp"), run.work / "OUT"
    search = run("search", ["search", "--data", data, "--supernet-epochs", "1", "--generations", "2", "--population",
                            "4", "--image-size", "64", "--batch-size", "2", "--out", str(out), "--device", "cpu",
                            "--no-progress"])
    train = run("train", ["train", "--model", "slicemamba", "--arch", str(out / "arch.json"), "--data", data,
                          "--epochs", "1", "--image-size", "64", "--batch-size", "2", "--out", str(run.work / "RUN"),
                          "--device", "cpu", "--no-progress"])
    return {
        "what": "issue 7 CPU must-show: SliceMamba search on endotect_polyp (1 supernet epoch, 2 generations of 4, "
                "64x64, batch 2), then the found architecture trained 1 epoch",
        "cli_commands": [search["command"], train["command"]],
        "placeholders": PLACEHOLDERS,
        "search_wall_s_incl_startup": search["wall_s_incl_startup"],
        "train_wall_s_incl_startup": train["wall_s_incl_startup"],
        "arch_json": read(out / "arch.json"),
        "retrain_val": binary(read(run.work / "RUN" / "metrics.json")),
        "steps": [search, train],
    }


def acdc(run: Runner) -> dict:
    train = run("train", ["train", "--model", "msvmunet", "--data", run.data("acdc"), "--epochs", "1", "--max-steps",
                          "5", "--batch-size", "2", "--out", str(run.work / "RUN"), "--device", "cpu", "--no-progress"])
    return {
        "what": "CPU smoke run of the ACDC must-show (issue 6): per-volume val metrics after 5 optimizer steps "
                "(not a trained model)",
        "cli_command": train["command"],
        "placeholders": PLACEHOLDERS,
        "note": "the msvmunet_acdc recipe is picked by the plain command (224x224, 0.4 CE + 0.6 Dice, AdamW)",
        "wall_s_incl_startup": train["wall_s_incl_startup"],
        "metrics": read(run.work / "RUN" / "metrics.json"),
        "steps": [train],
    }


RUNS = {"pipeline": pipeline, "slicemamba": slicemamba, "acdc": acdc}


def headline(name: str, r: dict) -> str:
    if name == "pipeline":
        return (f"train dice {r['run_metrics']['dice']:.3f}, evaluate dice {r['evaluate_metrics']['dice']:.3f}, "
                f"demo dice {r['demo']['dice']:.3f}")
    if name == "slicemamba":
        return (f"search fitness dsc {r['arch_json']['fitness']['dsc']:.3f}, "
                f"retrain dice {r['retrain_val']['dice']:.3f}")
    return f"val dice {r['metrics']['dice']:.3f}, hd95 {r['metrics']['hd95']:.1f} vox"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(SMOKES), help=f"comma-separated subset of {','.join(SMOKES)}")
    ap.add_argument("--data-root", default="../shared/data", help="folder holding ph2_dev, endotect_polyp, acdc")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds before one step is stopped (a failure)")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(SMOKES))
    if unknown or not only:
        ap.error(f"--only: unknown {unknown} (choose from {','.join(SMOKES)})")
    root = Path(args.data_root).resolve()
    missing = [str(Path(args.data_root) / DATASETS[s]) for s in only if not (root / DATASETS[s]).is_dir()]
    if missing:
        print(f"error: data folder(s) not found: {', '.join(missing)} (set --data-root)", file=sys.stderr)
        return 2
    rows, failed = [], False
    for name in only:
        work = Path(tempfile.mkdtemp(prefix=f"mambaseg_cpu_smoke_{name}_"))
        print(f"{name}:", flush=True)
        try:
            result = placeheld(RUNS[name](Runner(work, root, args.data_root, args.timeout)), work, root,
                               args.data_root)
        except StepFailed as e:
            print(f"error: {e}", file=sys.stderr)
            failed = True
            continue
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result["thread_env"] = {k: os.environ.get(k) for k in THREAD_VARS}
        result["environment"] = environment()
        path = atomic_write_json(args.results_dir / FILES[name], result)
        wall = sum(s["wall_s_incl_startup"] for s in result["steps"])
        rows.append((name, wall, headline(name, result), path))
    print(f"\n{'smoke':<11} {'wall s':>8}  headline")
    for name, wall, text, path in rows:
        print(f"{name:<11} {wall:>8.1f}  {text}  -> {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
