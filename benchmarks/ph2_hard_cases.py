"""The PH2 cases that any finished cross-validation scores below a Dice threshold, with every run's Dice beside.

Derived from the result files of ``cv_ph2_gpu.py`` (``benchmarks/results/cv_ph2_*.json``: each held-out case's
pooled-over-its-pixels DSC of the final weights of its fold, the headline of those files; no selection), nothing is
trained. The aim of issue 18 asks for no case below 0.80: this table says which cases stand in the way and whether
some recipe already gets each of them right. Only runs on the same folds (split seed, number of folds) are put side
by side. Choosing a recipe or an ensemble by this table is a selection on the cases it shows.

With ``--runs`` (cross-validation roots restored from their ``cvstate_*.tgz``, see ``gpu_jobs.sh``) and
``--cache`` (the npz2d cache they were scored on), each hard case also gets its kind of error in every run whose
root holds its out-of-fold probabilities: precision and recall of the thresholded final-weight prediction against
the cache's ground truth (same resolution as the DSC) and which dominates: ``false positives`` (over-segmentation,
precision lower by more than 0.1), ``false negatives`` (under-segmentation) or ``both``. A case that one run
over-segments and another under-segments is a model error; one that every run gets wrong the same way points at
the annotation convention.

Usage::

    python benchmarks/ph2_hard_cases.py                     # -> benchmarks/results/hard_cases_ph2.json
    python benchmarks/ph2_hard_cases.py --results DIR --out FILE --threshold 0.8
    python benchmarks/ph2_hard_cases.py --runs /tmp/r/cv --cache .gpucache/ph2_256.npz   # + the kinds of error
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


def _ground_truth(cache: Path) -> dict:
    """Case id -> boolean foreground mask of an npz2d cache (train and val: the 100 cases the folds split)."""
    import numpy as np

    with np.load(cache, allow_pickle=False) as z:
        return {str(i): np.asarray(m) > 0 for split in ("train", "val") if f"{split}_ids" in z.files
                for i, m in zip(z[f"{split}_ids"], z[f"{split}_masks"])}


def _oof_probabilities(root: Path, case: str) -> Path | None:
    """The out-of-fold foreground probabilities of ``case`` under a cross-validation root (final weights)."""
    found = sorted(root.glob(f"fold_*/oof/last/probabilities/{case}.npz"))
    if len(found) > 1:
        raise SystemExit(f"{root}: case {case} is held out by more than one fold ({[str(f) for f in found]})")
    return found[0] if found else None


def add_error_kinds(table: dict, runs_dir: Path, cache: Path, margin: float = 0.1) -> dict:
    """Each hard case's precision, recall and dominant error in every run whose root under ``runs_dir``
    (``cv_ph2_<run>``) holds its probabilities (thresholded at 0.5, the binary labels rule)."""
    import numpy as np

    gt = _ground_truth(cache)
    kinds_seen = set()
    for row in table["cases"]:
        g = gt.get(row["case"])
        if g is None:
            raise SystemExit(f"{cache}: no ground truth for case {row['case']} (another cache than the runs'?)")
        errors = {}
        for run in row["dsc"]:
            path = _oof_probabilities(runs_dir / f"cv_ph2_{run}", row["case"])
            if path is None:
                continue
            with np.load(path, allow_pickle=False) as z:
                p = np.asarray(z["probabilities"], dtype=np.float32)
            if p.shape != (1, *g.shape):
                raise SystemExit(f"{path}: probabilities {p.shape}, expected (1, {g.shape[0]}, {g.shape[1]}) of the cache")
            m = p[0] >= 0.5
            tp = float((m & g).sum())
            precision = tp / max(float(m.sum()), 1.0)
            recall = tp / max(float(g.sum()), 1.0)
            dominant = ("false positives" if precision < recall - margin else
                        "false negatives" if recall < precision - margin else "both")
            errors[run] = {"precision": round(precision, 4), "recall": round(recall, 4), "dominant": dominant}
            kinds_seen.add(run)
        row["errors"] = errors
        kinds = {e["dominant"] for e in errors.values()}
        row["error_kind"] = kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)
    table["error_rule"] = (f"prediction = OOF probability >= 0.5 of the final weights, against {cache.name}'s masks; "
                           f"dominant error: precision lower than recall by more than {margin:g} = false positives "
                           "(over-segmentation), the reverse = false negatives, else both; error_kind = the one kind "
                           "of every run that holds the case, or 'mixed'")
    table["runs_with_probabilities"] = sorted(kinds_seen)
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=None, help="default: RESULTS/hard_cases_ph2.json")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--runs", type=Path, default=None, help="restored cross-validation roots (cv_ph2_<run>/fold_*)")
    ap.add_argument("--cache", type=Path, default=None, help="the npz2d cache the runs were scored on (with --runs)")
    args = ap.parse_args(argv)
    if (args.runs is None) != (args.cache is None):
        ap.error("--runs and --cache go together (the out-of-fold probabilities and their ground truth)")
    table = hard_cases(runs_of(args.results), args.threshold)
    if args.runs is not None:
        for p, what in ((args.runs, "--runs folder"), (args.cache, "--cache file")):
            if not p.exists():
                ap.error(f"{what} {p} does not exist")
        add_error_kinds(table, args.runs, args.cache)
    sys.path.insert(0, str(HERE))
    from _common import environment, write_json

    table["environment"] = environment()
    out = write_json(args.out or args.results / "hard_cases_ph2.json", table)
    for r in table["cases"]:
        kind = f"; errors: {r['error_kind']}" if r.get("error_kind") else ""
        print(f"{r['case']}: below {args.threshold:g} in {r['runs_below']} of {r['runs']} runs; best "
              f"{r['best_run']} {r['best_dsc']:.3f}{kind}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
