"""The CPU test suite's wall time, two commits side by side on this machine (issue 15: "not slower than today").

Each commit's whole tree is unpacked with ``git archive`` (``../shared`` linked beside it, as CI has it); its README
test command (``pytest -m "not slow" -q``) runs with the library imported from that tree.

* Round 0 runs each side's whole suite (and fills both sides' caches: bytecode, the fused CPU kernel's build, which is
  keyed by its source). The newer suite holds tests of features the older commit does not have, so these two times
  answer "how long does CI take", not "did the same tests get slower".
* Rounds 1+ run only the tests both commits have (the same pytest node ids), alternating old, new, old, new, so a
  change of the machine's load hits both sides alike. Their medians are the comparison: the same tests against the
  old and the new library.

    python benchmarks/cpu_test_suite.py                        # b36feeb (before wave 2) against HEAD, 3 rounds
    python benchmarks/cpu_test_suite.py --old-commit 9dc3903 --rounds 4

Writes ``benchmarks/results/cpu_test_suite.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_json  # noqa: E402
from _old_vs_new import REPO, RESULTS, child_env, cpu_environment, extract, load, src_dirty  # noqa: E402

SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?)")


def unpack(commit: str, dest: Path) -> str:
    """The whole tree of ``commit`` in ``dest/repo`` with ``dest/shared`` linking to the checkout's ``../shared``."""
    full = extract(commit, dest / "repo", paths=())
    shared = REPO.parent / "shared"
    if shared.exists():
        (dest / "shared").symlink_to(shared.resolve())
    return full


PYTEST = ["-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider"]


def collect(repo: Path) -> list[str]:
    """Node ids of the tests the README command runs in ``repo``."""
    proc = subprocess.run([sys.executable, *PYTEST, "--collect-only"], cwd=repo, env=child_env(repo / "src"),
                          capture_output=True, text=True, timeout=600)
    return [line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]


def run_suite(repo: Path, timeout: float, ids: list[str] | None = None) -> dict:
    """The README's test command in ``repo`` (only ``ids`` when given); wall seconds, pytest's counts and time."""
    cmd = [sys.executable, *PYTEST, *(ids or [])]
    before = load()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=repo, env=child_env(repo / "src"), capture_output=True, text=True,
                              timeout=timeout)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        partial = e.stdout or ""
        out, rc = (partial.decode(errors="replace") if isinstance(partial, bytes) else partial), 124
    wall = time.perf_counter() - t0
    last = [line for line in out.splitlines() if " in " in line and ("passed" in line or "failed" in line)]
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
              for n, kind in SUMMARY.findall(last[-1])} if last else {}
    pytest_s = re.search(r" in ([\d.]+)s", last[-1]) if last else None
    return {"rc": rc, "wall_s": round(wall, 2), "pytest_s": float(pytest_s.group(1)) if pytest_s else None,
            "counts": counts, "load_before": before, "summary": last[-1].strip("= ") if last else out[-2000:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-commit", default="b36feeb", help="the anchor (default: main before wave 2's work)")
    ap.add_argument("--new-commit", default="HEAD")
    ap.add_argument("--rounds", type=int, default=3,
                    help="round 0: whole suites; later rounds: the tests both commits have, alternating")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds before one suite run is stopped")
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_test_suite.json")
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (round 0 runs the whole suites; the comparison needs round 1)")
    work = Path(tempfile.mkdtemp(prefix="mambaseg_test_suite_"))
    try:
        sides = {name: work / name for name in ("old", "new")}
        commits = {name: unpack(c, sides[name]) for name, c in (("old", args.old_commit), ("new", args.new_commit))}
        collected = {name: collect(sides[name] / "repo") for name in sides}
        common = sorted(set(collected["old"]) & set(collected["new"]))
        print(f"tests: old {len(collected['old'])}, new {len(collected['new'])}, in both {len(common)}", flush=True)
        if not common:
            raise SystemExit("the two commits have no test in common")
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        for r in range(args.rounds):
            for name in ("old", "new"):
                res = run_suite(sides[name] / "repo", args.timeout, None if r == 0 else common)
                res["round"] = r
                res["tests"] = "whole suite" if r == 0 else "tests in both"
                runs[name].append(res)
                print(f"round {r} {name} {commits[name][:7]}: {res['wall_s']} s wall, pytest {res['pytest_s']} s, "
                      f"{res['counts']} (load {res['load_before'][0]})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timed = {name: [x["wall_s"] for x in rs[1:] if x["rc"] == 0] for name, rs in runs.items()}
    median = {name: (statistics.median(v) if v else None) for name, v in timed.items()}
    ratio = (round(median["new"] / median["old"], 3) if median["old"] and median["new"] else None)
    import torch  # the suites ran with this interpreter's torch (cpu_environment() imports none)

    result = {
        "environment": {**cpu_environment(), "torch": torch.__version__, "uncommitted_src_not_measured": src_dirty()},
        "what": "README test command (pytest -m 'not slow' -q), each commit's own tree; round 0 = each whole suite "
                "(fills the caches); rounds 1+ = only the tests both commits have, alternating, compared by median",
        "tests_in_both": len(common),
        "old": {"commit": commits["old"], "collected": len(collected["old"]), "runs": runs["old"],
                "whole_suite_wall_s": runs["old"][0]["wall_s"], "median_wall_s": median["old"]},
        "new": {"commit": commits["new"], "collected": len(collected["new"]), "runs": runs["new"],
                "whole_suite_wall_s": runs["new"][0]["wall_s"], "median_wall_s": median["new"]},
        "new_over_old": ratio,
    }
    write_json(args.out, result)
    print(f"\n| side | commit | whole suite: passed, wall s | {len(common)} tests in both: median wall s |")
    print("|---|---|---|---|")
    for name in ("old", "new"):
        rs = runs[name]
        print(f"| {name} | {commits[name][:7]} | {rs[0]['counts'].get('passed')}, {rs[0]['wall_s']} | "
              f"{round(median[name], 1) if median[name] else None} |")
    print(f"new / old: {ratio}\nwrote {args.out}")
    return 0 if all(x["rc"] == 0 for rs in runs.values() for x in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
