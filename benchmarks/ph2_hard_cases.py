"""The PH2 cases that any finished cross-validation scores below a Dice threshold, with every run's Dice beside.

Derived from the result files of ``cv_ph2_gpu.py`` (``benchmarks/results/cv_ph2_*.json``: each held-out case's
pooled-over-its-pixels DSC of the final weights of its fold, the headline of those files; no selection), nothing is
trained. The aim of issue 18 asks for no case below 0.80: this table says which cases stand in the way and whether
some recipe already gets each of them right. Only runs on the same folds (split seed, number of folds) are put side
by side. Choosing a recipe or an ensemble by this table is a selection on the cases it shows.

Usage::

    python benchmarks/ph2_hard_cases.py                     # -> benchmarks/results/hard_cases_ph2.json
    python benchmarks/ph2_hard_cases.py --results DIR --out FILE --threshold 0.8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def runs_of(results: Path) -> dict[str, dict]:
    """``{run name: result}`` of the cross-validation files holding per-case DSC (single seeds, seed ensembles and
    mixes), by file name; all must share one split."""
    runs = {}
    for path in sorted(results.glob("cv_ph2_*.json")):
        d = json.loads(path.read_text())
        if isinstance(d, dict) and isinstance(d.get("per_case_dsc"), dict) and d["per_case_dsc"]:
            runs[path.stem.removeprefix("cv_ph2_")] = d
    splits = {(d.get("split_seed"), d.get("folds")) for d in runs.values()}
    if len(splits) > 1:
        raise SystemExit(f"the cross-validations are on different folds {sorted(splits, key=str)}; compare one split")
    return runs


def hard_cases(runs: dict[str, dict], threshold: float) -> dict:
    """The table: each case below ``threshold`` in at least one run, its DSC in every run (``None`` where a run
    does not hold it), how many runs put it below and its best run."""
    if not runs:
        raise SystemExit("no cv_ph2_*.json with per-case DSC to compare")
    names = list(runs)
    cases = sorted({c for d in runs.values() for c in d["per_case_dsc"]})
    rows = []
    for case in cases:
        dsc = {n: runs[n]["per_case_dsc"].get(case) for n in names}
        held = {n: v for n, v in dsc.items() if v is not None}
        below = sorted(n for n, v in held.items() if v < threshold)
        if below:
            best = max(held, key=lambda n: (held[n], n))
            rows.append({"case": case, "dsc": dsc, "runs_below": len(below), "runs": len(held),
                         "best_run": best, "best_dsc": held[best]})
    return {
        "what": f"PH2 cases with DSC below {threshold:g} in at least one cross-validation, every run's DSC beside",
        "threshold": threshold,
        "rule": "per-case DSC of each fold's final weights on its held-out cases (no selection), as each cv_ph2 "
                "file records it; derived, nothing trained; choosing a recipe by this table is a selection on these "
                "cases",
        "runs": {n: {"recipe": d.get("recipe"), "seed": d.get("seed"), "pooled_oof_dsc": d.get("pooled_oof_dsc"),
                     "n_below": sum(v < threshold for v in d["per_case_dsc"].values())} for n, d in runs.items()},
        "split_seed": next(iter(runs.values())).get("split_seed"),
        "folds": next(iter(runs.values())).get("folds"),
        "n_cases": len(cases),
        "cases": rows,
        "below_in_every_run": [r["case"] for r in rows if r["runs_below"] == r["runs"]],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=None, help="default: RESULTS/hard_cases_ph2.json")
    ap.add_argument("--threshold", type=float, default=0.8)
    args = ap.parse_args(argv)
    table = hard_cases(runs_of(args.results), args.threshold)
    sys.path.insert(0, str(HERE))
    from _common import environment, write_json

    table["environment"] = environment()
    out = write_json(args.out or args.results / "hard_cases_ph2.json", table)
    for r in table["cases"]:
        print(f"{r['case']}: below {args.threshold:g} in {r['runs_below']} of {r['runs']} runs; best "
              f"{r['best_run']} {r['best_dsc']:.3f}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
