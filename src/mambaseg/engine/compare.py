"""Which cross-validation, or which ensemble of them, scores best out of fold (nnU-Net's "find best configuration").

:func:`compare_cv` scores every root alone, every pair of roots and (for three or more) all of them together as
probability-averaged ensembles (:func:`mambaseg.engine.crossval.evaluate_cv`), and ranks them by one criterion: the
pooled Dice of 2-D cases (one confusion matrix over every held-out case, the PH2 headline) or the mean per-volume
Dice of volumes (per class, then over the foreground classes: nnU-Net's and ACDC's convention). Every candidate is
scored on the same held-out cases, so the winner's number is a selection over the candidates on those cases: it is
optimistic, and the result says so. Each candidate's full ``cv_metrics.json`` is kept under ``OUT/<candidate>/``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

from mambaseg.utils.files import atomic_write_json

__all__ = ["compare_cv", "candidates"]


def candidates(n: int) -> list[tuple[int, ...]]:
    """Index tuples of the candidates of ``n`` roots: each alone, each pair, and all of them when ``n`` > 2."""
    if n < 2:
        raise ValueError(f"a comparison needs at least two cross-validation roots, got {n}")
    out = [(i,) for i in range(n)] + list(itertools.combinations(range(n), 2))
    return out + ([tuple(range(n))] if n > 2 else [])


def _names(roots: Sequence[Path]) -> list[str]:
    """Each root's folder name; ``<parent>_<name>`` where names repeat, numbered if they still do."""
    names = [r.name for r in roots]
    if len(set(names)) < len(names):
        names = [f"{r.resolve().parent.name}_{r.name}" for r in roots]
    if len(set(names)) < len(names):
        names = [f"{i}_{n}" for i, n in enumerate(names)]
    return names


def _check_saved(roots: Sequence[Path], which: str, tta: str | None) -> None:
    """Before anything is scored: every fold of every root has saved the predictions its ensembles average
    (``oof/<which>[_tta_<tta>]``; a lone root could make missing TTA predictions from its checkpoints, an ensemble
    cannot)."""
    from mambaseg.data.folds import FOLDS_FILE, load_folds
    from mambaseg.engine.crossval import oof_dir
    from mambaseg.inference.ensemble import tta_mode

    missing = []
    for r in roots:
        if not (r / FOLDS_FILE).is_file():
            raise FileNotFoundError(f"{r} is not a cross-validation root: no {FOLDS_FILE} (train with --folds K)")
        k = len(load_folds(r / FOLDS_FILE)["folds"])
        missing += [str(oof_dir(r / f"fold_{i}", which, tta)) for i in range(k)
                    if not (oof_dir(r / f"fold_{i}", which, tta) / "oof.json").is_file()]
    if missing:
        hint = ("" if tta_mode(tta) == "none"
                else f" (train --folds K --tta {tta} saves them, also for finished folds)")
        raise FileNotFoundError(f"{len(missing)} fold(s) have not saved the predictions the ensembles average"
                                f"{hint}: " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))


def compare_cv(roots: Sequence[str | Path], out: str | Path, *, which: str = "last", tta: str | None = None,
               data: str | None = None, postprocess: Any = None, device: str = "auto") -> dict[str, Any]:
    """Score every candidate of :func:`candidates` over ``roots`` and rank them; writes ``OUT/compare.json``.

    Args:
        roots: cross-validations of the same cases on the same folds (two or more).
        out: folder for ``compare.json`` and each candidate's ``cv_metrics.json`` (``OUT/<name>/``).
        which, tta, data, postprocess, device: as :func:`mambaseg.engine.crossval.evaluate_cv`, for every candidate;
            ``data`` defaults to the first root's dataset, so every candidate is scored against one ground truth.

    Returns:
        ``compare.json``'s content: the criterion, the candidates ranked best first (members, criterion value,
        pooled and per-case Dice, cases below the threshold, worst case), the best one and the selection caveat.
    """
    from mambaseg.engine.crossval import OOF_CHECKPOINTS, cv_record, evaluate_cv
    from mambaseg.inference.ensemble import flip_dims
    from mambaseg.inference.postprocess import parse_postprocess

    if which not in OOF_CHECKPOINTS:  # the options first, then the files, then the scoring
        raise ValueError(f"--oof must be one of {OOF_CHECKPOINTS}, got {which!r}")
    flip_dims(tta)
    steps = list(parse_postprocess(postprocess))
    paths = [Path(r) for r in roots]
    if len({p.resolve() for p in paths}) != len(paths):
        raise ValueError("a comparison names each cross-validation root once")
    _check_saved(paths, which, tta)
    if data is None:  # one ground truth for every candidate: the first root's dataset (each candidate would
        data = cv_record(paths[0], None)[1]  # otherwise be scored on its first member's, e.g. a cache of its size)
    names = _names(paths)
    out = Path(out)
    rows = []
    criterion = None
    for idx in candidates(len(paths)):
        label = "+".join(names[i] for i in idx)
        members = [paths[i] for i in idx]
        res = evaluate_cv(members if len(members) > 1 else members[0], which=which, tta=tta, data=data,
                          postprocess=postprocess, device=device, out=out / label)
        volumes = bool(res.get("unit"))
        key = "per_case_dice" if volumes else "dice"
        if criterion is None:
            criterion = key
        rows.append({"candidate": label, "members": [str(m) for m in members], "value": res[key],
                     "pooled_dice": res["dice"], "per_case_dice": res["per_case_dice"],
                     "n_below": res["n_below"]["count"], "below_threshold": res["n_below"]["threshold"],
                     "worst": res["worst"][0] if res.get("worst") else None,
                     "metrics": str(out / label / "cv_metrics.json")})
    rows.sort(key=lambda r: -r["value"])
    described = ("pooled Dice over every held-out case (one confusion matrix)" if criterion == "dice" else
                 "mean per-volume Dice (per class, then over the foreground classes)")
    result = {
        "what": "out-of-fold scores of each cross-validation, each pair and all of them as probability-averaged "
                "ensembles, ranked",
        "criterion": criterion, "criterion_described": described, "oof": which, "tta": tta or "none",
        "postprocess": steps,
        "ranking": rows, "best": rows[0]["candidate"],
        "selection_note": f"the best of {len(rows)} candidates chosen on the same out-of-fold cases it is scored on: "
                          "its number is optimistic; confirm the choice on a test split or with new seeds",
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "compare.json", result)
    return result
