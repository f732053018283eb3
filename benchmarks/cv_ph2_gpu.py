"""5-fold cross-validation on all 100 ph2_dev cases (train + val pooled) for given recipes and seeds, one GPU.

For each (recipe, seed): ``mambaseg train --folds K --fold all`` through the library (:func:`mambaseg.engine.crossval
.train_folds`; the fold split is drawn once with ``--split-seed`` and is the same for every recipe and seed), then the
pooled out-of-fold scores (:func:`mambaseg.engine.crossval.evaluate_cv`):

* ``last``: the final weights of each fold (no checkpoint selection: the headline, no selection on the cases it
  reports);
* ``last`` + flip TTA (``--tta flip``), same weights;
* ``best``: the checkpoint each fold selected on its own held-out cases (reported for comparison only; optimistic);
* ``last_pp`` (and ``last_tta_flip_pp``): the same final weights with the one-lesion post-processing
  (largest connected component, holes filled), shown beside the plain scores; picking it by these numbers would be
  a selection on the reported cases.

``--epochs`` sets the run length (the per-step cosine of our recipes follows it); ``--minutes-per-fold`` is a safety
stop after the epoch that crosses it (a run it cuts has not finished its schedule: ``stop_reason`` says so per fold).

Writes ``<results-dir>/cv_ph2_<recipe>_s<seed>.json``: pooled out-of-fold DSC/IoU (each with its selection rule),
per-case DSC list, worst cases, number of cases below 80 DSC, per-fold training facts (epochs, stop reason, wall time,
largest drop of validation Dice between consecutive epochs), environment, command, date. A fold already trained in
``--runs`` is not trained again and an unfinished one resumes from its ``last.pt`` (written every 5 minutes), so a
job stopped by a per-command time limit continues when the same command is run again. Each fold also saves its
flip-TTA out-of-fold predictions, so a root copied without its checkpoints (and carried to another machine) is
scored as it is and only its unfinished folds train.

Scores are computed at the cache's resolution (256x256, or 192x256 for DermoMamba): the npz2d cache stores the
ground truth at network size.

Usage (caches built where the data is; ``mambaseg cache`` stores train AND val, the 100 cases the folds split):
    mambaseg cache --data ../shared/data/ph2_dev --image-size 256 --out .gpucache/ph2_256.npz
    mambaseg cache --data ../shared/data/ph2_dev --image-size 192,256 --out .gpucache/ph2_192x256.npz
    # on the GPU machine (carry .gpucache):
    PYTHONPATH=src python benchmarks/cv_ph2_gpu.py --recipes vmunet_ph2_best --seeds 0,1,2 --minutes-per-fold 6 \\
        --runs /tmp/cvruns --results-dir $OUT
    PYTHONPATH=src python benchmarks/cv_ph2_gpu.py --recipes vmunet_ph2,vmbunet_ph2,dermomamba_ph2 --seeds 42 \\
        --minutes-per-fold 6 --runs /tmp/cvruns --results-dir $OUT
    # small-batch recipes (DermoMamba batch 4, VMB-UNet batch 8) leave the GPU idle between kernels: folds side by side
    PYTHONPATH=src python benchmarks/cv_ph2_gpu.py --recipes dermomamba_ph2 --seeds 0 --parallel-folds 3 ...
    # back here: restore the returned state (finished folds without checkpoints) and score, e.g. the seed ensemble:
    tar xzf cvstate.tgz -C /tmp && PYTHONPATH=src python benchmarks/cv_ph2_gpu.py --recipes vmunet_ph2_best \\
        --seeds 0,1,2 --runs /tmp/cvruns --score-only --ensemble
    # on the GPU machine, after (or when a time limit stopped) the training: the finished folds, to bring back
    PYTHONPATH=src python benchmarks/cv_ph2_gpu.py --recipes vmunet_ph2_best --seeds 0 --runs /tmp/cvruns \
        --pack $OUT --pack-part-mib 15
    # folds trained on different machines or calls: only the missing ones there, then merge the packed roots here
    PYTHONPATH=src python benchmarks/cv_ph2_gpu.py --recipes vmbunet_ph2 --seeds 0 --only-folds 3,4 --runs /tmp/cvruns
    tar xzf cvstate_folds_0-2.tgz -C /tmp && tar xzf cvstate_folds_3-4.tgz -C /tmp && PYTHONPATH=src python \
        benchmarks/cv_ph2_gpu.py --recipes vmbunet_ph2 --seeds 0 --runs /tmp/cvruns --score-only
    # the training stability of folds stopped before their end (only their history.json is needed), beside the paper
    # recipe's finished cross-validation: stability_ph2_vmbunet_ph2_stable-ema_s0.json
    PYTHONPATH=src python benchmarks/cv_ph2_gpu.py --recipes vmbunet_ph2_stable --tag ema --set train.ema_decay=0.999 \
        --seeds 0 --runs /tmp/r/cv --stability-only --anchor vmbunet_ph2 --fold-device 0-4='NVIDIA H100 80GB HBM3'
    # two recipes' cross-validations on the same folds as one ensemble (members fixed before they are scored):
    PYTHONPATH=src python benchmarks/cv_ph2_gpu.py --mix vmunet_ph2_best-hair_s0,vmbunet_ph2_stable_s0 \
        --mix-name mix-vmunet-hair-vmbunet-stable_s0 --runs /tmp/r/cv
    # CPU smoke test (synthetic 32x32 data, vmunet_tiny, 2 folds of 1 epoch; results to a temporary folder):
    PYTHONPATH=src python benchmarks/cv_ph2_gpu.py --smoke --ensemble
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment  # noqa: E402

DEFAULT_CACHES = {(256, 256): ".gpucache/ph2_256.npz", (192, 256): ".gpucache/ph2_192x256.npz"}
PP = "largest_component,fill_holes"  # scored as extra rows (``*_pp``), never the headline


def _val_dice(history: list[dict]) -> list[tuple[float, int]]:
    """(validation Dice, epoch) of every validated epoch of a history."""
    return [(r["val"]["dice"], int(r.get("epoch", i + 1))) for i, r in enumerate(history)
            if isinstance(r.get("val"), dict) and "dice" in r["val"]]


def _drops(history: list[dict]) -> list[tuple[float, int]]:
    """(fall of validation Dice, epoch it fell at) for every pair of consecutive validated epochs."""
    vals = _val_dice(history)
    return [(a - b, e) for (a, _), (b, e) in zip(vals, vals[1:])]


def _max_drop(history: list[dict], after_epoch: int = 0) -> tuple[float, int] | None:
    """Largest fall of validation Dice between two consecutive validated epochs ending after ``after_epoch``, with
    the epoch it fell at (None with fewer than two)."""
    drops = [d for d in _drops(history) if d[1] > after_epoch]
    return max(drops) if drops else None


def _seconds(history: list[dict]) -> float:
    """The summed per-epoch times (training, validation, checkpoint writes) of a history."""
    return sum(r.get("time", 0.0) for r in history)


FOLD_SECONDS_RULE = ("fold_training[].seconds = the sum of the per-epoch times (training, validation, checkpoint "
                     "writes) in the fold's history.json: every call of a fold resumed across calls, without "
                     "process start-up")


def _fold_facts(root: Path, k: int, stated_devices: dict[int, str] | None = None) -> list[dict]:
    out = []
    for i in range(k):
        m = json.loads((root / f"fold_{i}" / "metrics.json").read_text())
        # the GPU that trained the fold: its own record (metrics.json since 2026-12-07), else what --fold-device states
        device = m["train"].get("device_name")
        source = "metrics.json" if device is not None else None
        if device is None and (stated_devices or {}).get(i):
            device, source = stated_devices[i], "stated when scoring (--fold-device)"
        hist = json.loads((root / f"fold_{i}" / "history.json").read_text())
        # seconds: the per-epoch times of ALL the fold's epochs (history.json keeps those done before a resume; the
        # trainer's own 'seconds' is its last process's loop only, too low for a fold resumed in a later call)
        out.append({"fold": i, "epochs": m["train"]["epochs"], "steps": m["train"]["steps"],
                    "stop_reason": m["train"]["stop_reason"],
                    "seconds": round(_seconds(hist), 1),
                    "seconds_last_process": m["train"]["seconds"],
                    "device": device, "device_source": source,
                    "best_epoch": m["best_epoch"], "val_dice_best": m["dice"],
                    "val_dice_last": (m.get("last") or {}).get("dice"),
                    **_lr_facts(hist), **_drop_facts(hist, m["train"]["epochs"])})
    return out


def _lr_facts(hist: list[dict]) -> dict:
    """The learning rate of the last epoch and the highest of the run: the headline scores the final weights, so a
    schedule that ends near its peak (a cosine restarted every 2 * T_max epochs) is scored at its least settled
    point."""
    lrs = [r["lr"] for r in hist if r.get("lr") is not None]
    return {"lr_last": lrs[-1], "lr_peak": max(lrs)} if lrs else {"lr_last": None, "lr_peak": None}


def _drop_facts(hist: list[dict], epochs: int) -> dict:
    """The largest epoch-to-epoch fall of validation Dice over the run and after its first tenth (the first epochs
    of a run from scratch swing most), each with the epoch it happened at."""
    every, late = _max_drop(hist), _max_drop(hist, after_epoch=epochs // 10)
    return {"max_epoch_drop": every[0] if every else None, "max_epoch_drop_epoch": every[1] if every else None,
            "max_epoch_drop_after_first_tenth": late[0] if late else None,
            "max_epoch_drop_after_first_tenth_epoch": late[1] if late else None}


def _scores(target, out: Path, tta: bool, device: str = "auto") -> dict[str, dict]:
    """The final weights' pooled out-of-fold scores of ``target`` (a root, or a list of roots = their ensemble): plain,
    post-processed, and the same two with flip TTA; each written under ``out``."""
    from mambaseg.engine.crossval import evaluate_cv

    scores = {"last": evaluate_cv(target, which="last", device=device, out=out),
              "last_pp": evaluate_cv(target, which="last", postprocess=PP, device=device, out=out / "pp")}
    if tta:
        scores["last_tta_flip"] = evaluate_cv(target, which="last", tta="flip", device=device, out=out / "tta_flip")
        scores["last_tta_flip_pp"] = evaluate_cv(target, which="last", tta="flip", postprocess=PP, device=device,
                                                 out=out / "tta_flip_pp")
    return scores


def _score_rows(scores: dict[str, dict]) -> dict[str, dict]:
    """The JSON summary of each score: rule, TTA, post-processing, pooled and per-case DSC, failed and worst cases."""
    return {k: {"rule": v["selection_rule"], "tta": v["tta"], "postprocess": v.get("postprocess", []),
                "pooled_dsc": v["dice"], "pooled_iou": v["iou"], "per_case_mean_dsc": v["per_case_dice"],
                "hd95_px": v.get("hd95"), "nsd_2px": v.get("nsd"), "n_below_0.8": v["n_below"]["count"],
                "worst": v["worst"][:5]} for k, v in scores.items()}


def _spread(vals: list[float]) -> dict:
    """Mean and sample standard deviation (n-1; 0 for one value) of the seeds' values."""
    import statistics

    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "values": vals,
            "std_rule": "sample standard deviation (n-1) over the seeds"}


def _ensemble_record(stems: list[str], *, runs: Path, results: Path, out_name: str,
                     tta: bool) -> tuple[dict, dict, dict]:
    """Score the cross-validations ``stems`` (``cv_ph2_<name>_s<seed>``, each with its result file in ``results`` and
    its root in ``runs``) as one ensemble: their saved out-of-fold probabilities averaged per case, the same folds.
    Returns the fields every ensemble file has, the scores, and the members' result files by stem."""
    for stem in stems:
        if not (results / f"{stem}.json").is_file():
            raise SystemExit(f"{results / stem}.json is missing: run (or score) {stem} first")
        if not (runs / stem).is_dir():
            raise SystemExit(f"{runs / stem} is missing: an ensemble averages the members' saved out-of-fold "
                             f"probabilities (restore the member's root there)")
    members = {stem: json.loads((results / f"{stem}.json").read_text()) for stem in stems}
    first = members[stems[0]]
    scores = _scores([runs / stem for stem in stems], runs / out_name, tta)
    head = scores["last"]
    return {
        "folds": first["folds"], "split_seed": first["split_seed"], "cache": first["cache"],
        "selection_rule": head["selection_rule"] + "; headline = pooled out-of-fold DSC",
        "pooled_oof_dsc": head["dice"], "pooled_oof_iou": head["iou"], "per_case_mean_dsc": head["per_case_dice"],
        "n_below_0.8": head["n_below"]["count"], "worst": head["worst"],
        "per_case_dsc": {c["id"]: c["dice"] for c in head["cases"]},
        "scores": _score_rows(scores),
        "resolution": head["resolution"],
        "members_trained_on": _trained_on(members.values()),
        "environment": environment(),
        "note": "'environment' is where the saved predictions were averaged and scored (no model runs then)",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }, scores, members


def _trained_on(records) -> list[str]:
    """Devices the members' folds trained on, from each fold's own record (``fold_training[].device``); a member
    without them falls back to its ``environment`` (the machine that ran it, which is not the training machine
    when the member was re-scored with --score-only)."""
    devices: set[str] = set()
    for d in records:
        folds = [str(f["device"]) for f in d.get("fold_training") or [] if f.get("device")]
        devices.update(folds or [str((d.get("environment") or {}).get("device"))])
    return sorted(devices)


def _write_ensemble(path: Path, record: dict, scores: dict, tta: bool, what: str) -> None:
    path.write_text(json.dumps(record, indent=1) + "\n")
    head = scores["last"]
    print(f"{what}: pooled out-of-fold DSC {head['dice']:.4f}"
          + (f", with flip TTA {scores['last_tta_flip']['dice']:.4f}" if tta else "")
          + f"; {head['n_below']['count']} case(s) below 0.8 -> {path}", flush=True)


def run_ensemble(recipe: str, seeds: list[int], *, runs: Path, results: Path, tta: bool) -> dict:
    """Score the seeds ``seeds`` of one recipe as an ensemble (their saved out-of-fold probabilities averaged per
    case, the same folds) and summarise the single seeds: mean and standard deviation of the pooled out-of-fold DSC
    of EVERY seed with a result file ``<results>/cv_ph2_<recipe>_s<seed>.json`` (a seed whose predictions are gone
    still counts there). Writes ``<results>/cv_ph2_<recipe>_ensemble.json``. ``recipe`` is the run name (with a
    variant's tag: :func:`run_name`)."""
    stems = [seed_name(recipe, seed) for seed in seeds]
    common, scores, _ = _ensemble_record(stems, runs=runs, results=results, out_name=f"cv_ph2_{recipe}_ensemble",
                                         tta=tta)
    pattern = re.compile(rf"cv_ph2_{re.escape(recipe)}_s(\d+)\.json")
    files = sorted((int(m.group(1)), f) for f in results.iterdir() if (m := pattern.fullmatch(f.name)))
    singles = [json.loads(f.read_text()) for _, f in files]
    summary_seeds = [seed for seed, _ in files]
    tta_singles = [d["scores"].get("last_tta_flip", {}).get("pooled_dsc") for d in singles]
    record = {
        "what": f"{common['folds']}-fold cross-validation of recipe {recipe}: seeds {summary_seeds} one by one "
                f"(mean and std) and seeds {seeds} as an ensemble (out-of-fold probabilities averaged over them)",
        "recipe": recipe, "seeds": seeds, "members": len(seeds), "summary_seeds": summary_seeds,
        "single_seed_pooled_oof_dsc": _spread([d["pooled_oof_dsc"] for d in singles]),
        "single_seed_n_below_0.8": [d["n_below_0.8"] for d in singles],
        "single_seed_pooled_oof_dsc_tta_flip": _spread(tta_singles) if tta and None not in tta_singles else None,
        **common,
    }
    sd = record["single_seed_pooled_oof_dsc"]
    _write_ensemble(results / f"cv_ph2_{recipe}_ensemble.json", record, scores, tta,
                    f"{recipe}: seeds {summary_seeds} one by one {sd['mean']:.4f} +- {sd['std']:.4f}; seeds {seeds} "
                    f"as an ensemble")
    return record


def run_mix(name: str, stems: list[str], *, runs: Path, results: Path, tta: bool) -> dict:
    """Score cross-validations of DIFFERENT recipes (or variants) on the same folds as one ensemble, e.g. two
    architectures: ``stems`` are their result names (``cv_ph2_<run name>_s<seed>``, a prefix ``cv_ph2_`` may be left
    out). Each member's own pooled out-of-fold DSC is recorded beside. Writes ``<results>/cv_ph2_<name>_ensemble.json``.
    Which members make the ensemble is a choice: fix it before the members are scored, or it is a selection on the
    reported cases."""
    stems = [s if s.startswith("cv_ph2_") else f"cv_ph2_{s}" for s in stems]
    if len(stems) < 2 or len(set(stems)) != len(stems):
        raise SystemExit(f"--mix: two or more different cross-validations, got {stems}")
    common, scores, members = _ensemble_record(stems, runs=runs, results=results, out_name=f"cv_ph2_{name}_ensemble",
                                               tta=tta)
    record = {
        "what": f"{common['folds']}-fold cross-validation: an ensemble of {len(stems)} cross-validations of different "
                f"recipes on the same folds (out-of-fold probabilities averaged): {', '.join(stems)}",
        "recipe": name, "members": len(stems), "member_runs": stems,
        "member_pooled_oof_dsc": {s: d["pooled_oof_dsc"] for s, d in members.items()},
        "member_n_below_0.8": {s: d["n_below_0.8"] for s, d in members.items()},
        **common,
    }
    _write_ensemble(results / f"cv_ph2_{name}_ensemble.json", record, scores, tta,
                    f"{name}: {len(stems)} cross-validations as an ensemble")
    return record


def _fold_worker(cfg_dict: dict, folds: int, fold_ids: list[int], tta: str | None, checkpoints: tuple,
                 threads: int) -> None:
    """One process of --parallel-folds: train (or resume) its folds in sequence, with its share of the CPU threads
    (N processes of all-core thread pools would fight over the cores that launch their kernels)."""
    import torch
    from rich.console import Console

    torch.set_num_threads(threads)

    from mambaseg.configs import config_from_dict
    from mambaseg.engine.crossval import train_folds

    train_folds(config_from_dict(cfg_dict), folds=folds, fold=fold_ids, resume=True, console=Console(),
                show_progress=False, tta=tta, checkpoints=checkpoints)


def _train_folds_parallel(cfg, folds: int, n: int, tta: str | None, checkpoints: tuple,
                          todo: list[int] | None = None) -> None:
    """The folds ``todo`` (default all) in ``n`` processes sharing the GPU (the j-th of them in process j mod n); the
    split file is written first, by this process alone."""
    import multiprocessing as mp

    from mambaseg.configs import config_to_dict
    from mambaseg.engine.crossval import resolve_cv_folds

    resolve_cv_folds(cfg, folds)
    todo = list(range(folds)) if todo is None else todo
    threads = max(1, (os.cpu_count() or 1) // n)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_fold_worker, args=(config_to_dict(cfg), folds, todo[j::n], tta, checkpoints, threads))
             for j in range(min(n, len(todo)))]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join()
    failed = [j for j, pr in enumerate(procs) if pr.exitcode != 0]
    if failed:
        raise SystemExit(f"--parallel-folds: fold process(es) {failed} failed (exit codes "
                         f"{[procs[j].exitcode for j in failed]}); the log above says why; run again to resume")


def run_one(recipe: str, seed: int, *, folds: int, split_seed: int, caches: dict, runs: Path, results: Path,
            minutes_per_fold: float | None, epochs: int | None, extra: list[str], device: str, tta: bool,
            score_only: bool = False, parallel_folds: int = 1, checkpoints: tuple = ("last", "best"),
            tag: str | None = None, only_folds: list[int] | None = None,
            fold_devices: dict[int, str] | None = None) -> dict | None:
    """Train (or resume) the folds of one (recipe, seed) cross-validation, then score it and write its result file.
    With ``only_folds`` just those folds train (e.g. the rest trained on another machine, to be merged later); the
    scoring follows only when every fold of the root is then complete, otherwise nothing is written and ``None`` is
    returned."""
    from rich.console import Console

    from mambaseg.configs import apply_overrides, load_recipe
    from mambaseg.engine.crossval import SELECTION_RULES, evaluate_cv, fold_complete, train_folds

    cfg = load_recipe(recipe)
    size = tuple(int(s) for s in cfg.data.image_size)
    cache = caches.get(size)
    if cache is None or not Path(cache).is_file():
        raise SystemExit(f"no cache for {recipe} at {size[0]}x{size[1]} ({cache}); build it with: mambaseg cache "
                         f"--data ../shared/data/ph2_dev --image-size {size[0]},{size[1]} --out {cache}")
    name = run_name(recipe, tag)
    root = runs / seed_name(name, seed)
    path = results / f"{seed_name(name, seed)}.json"
    if score_only and path.is_file():  # the device's own record (its environment is where the folds trained)
        return json.loads(path.read_text())
    sets = [f"data.path={cache}", f"train.seed={seed}", f"data.split_seed={split_seed}", f"train.out={root}",
            f"train.device={device}"]  # last.pt every 5 minutes (the default): a killed job resumes its fold
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    if minutes_per_fold is not None:
        sets.append(f"train.time_limit_s={60 * minutes_per_fold}")
    cfg = apply_overrides(cfg, sets + extra)
    t0 = time.perf_counter()
    todo = list(range(folds)) if only_folds is None else only_folds
    if not score_only and parallel_folds > 1:
        _train_folds_parallel(cfg, folds, parallel_folds, "flip" if tta else None, checkpoints, todo)
    elif not score_only:
        # TTA predictions saved per fold: scoring needs no checkpoint
        train_folds(cfg, folds=folds, fold=todo, resume=True, console=Console(), show_progress=False,
                    tta="flip" if tta else None, checkpoints=checkpoints)
    wall = time.perf_counter() - t0
    missing = [i for i in range(folds) if not fold_complete(root / f"fold_{i}", checkpoints, "flip" if tta else None)]
    if missing:
        if only_folds is None:
            raise SystemExit(f"{root}: fold(s) {missing} have no complete out-of-fold predictions: train them (or "
                             f"restore them) before scoring")
        print(f"{root.name}: folds {only_folds} done; fold(s) {missing} are not in {root}: nothing scored (merge "
              f"the roots, then --score-only)", flush=True)
        return None
    scores = _scores(root, root, tta, device)
    if "best" in checkpoints:
        scores["best"] = evaluate_cv(root, which="best", device=device, out=root / "best")
    head = scores["last"]
    record = {
        "what": f"{folds}-fold cross-validation on the {head['n_cases']} train+val cases of {Path(cache).name}, recipe "
                f"{recipe}" + (f" (variant {tag!r}: {extra})" if tag else "") + f", seed {seed}, from scratch",
        "recipe": recipe, "variant": tag, "seed": seed, "folds": folds, "split_seed": split_seed, "cache": str(cache),
        "image_size": [int(v) for v in cfg.data.image_size], "overrides": sets + extra,
        "selection_rule": SELECTION_RULES["last"] + "; headline = pooled out-of-fold DSC of these weights",
        "pooled_oof_dsc": head["dice"], "pooled_oof_iou": head["iou"], "per_case_mean_dsc": head["per_case_dice"],
        "n_below_0.8": head["n_below"]["count"], "worst": head["worst"],
        "per_case_dsc": {c["id"]: c["dice"] for c in head["cases"]},
        "per_fold_mean_dsc": head["per_fold_mean_dice"],
        "scores": _score_rows(scores),
        "resolution": head["resolution"],
        "oof_checkpoints": list(checkpoints),
        "fold_training": (facts := _fold_facts(root, folds, fold_devices)),
        "fold_train_seconds_total": round(sum(f["seconds"] for f in facts), 1),
        "fold_seconds_rule": FOLD_SECONDS_RULE,
        "parallel_folds": parallel_folds,
        "parallel_note": (f"folds trained {parallel_folds} at a time on the one GPU: per-fold seconds include the "
                          f"sharing; each process has cpu_count // N torch threads" if parallel_folds > 1
                          else "folds trained one after the other"),
        "wall_seconds": round(wall, 1),
        "wall_note": "training + prediction in THIS process; folds finished by an earlier call (the run resumes) "
                     "count in fold_training[].seconds and fold_train_seconds_total, not here",
        "environment": environment(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if score_only:
        record["done_here"] = "scored"  # the folds trained elsewhere (fold_training[].device)
        record["note"] = ("scored with --score-only from predictions restored without checkpoints: 'environment' is "
                          "the scoring machine, the folds trained elsewhere (fold_training)")
    results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{name} seed {seed}: pooled OOF DSC {head['dice']:.4f} (last weights)"
          + (f", with flip TTA {scores['last_tta_flip']['dice']:.4f}" if tta else "")
          + f"; {head['n_below']['count']} case(s) below 0.8 -> {path}", flush=True)
    return record


DROP_BOUND = 0.05  # the bound: no fall of 5 Dice points between consecutive epochs
DROP_LISTED = 0.02  # falls listed one by one in a stability record


def run_stability(recipe: str, seed: int, *, folds: int, runs: Path, results: Path, epochs: int | None,
                  extra: list[str], tag: str | None = None, anchor: str | None = None,
                  fold_devices: dict[int, str] | None = None, note: str | None = None) -> dict:
    """The training stability of one (recipe, seed) cross-validation from its folds' ``history.json`` alone, finished
    or not (e.g. folds a device budget stopped): per fold the epochs done of those planned, the largest fall of
    validation Dice between consecutive epochs over all of them and after the first tenth of the planned run, every
    fall over ``DROP_LISTED``, the training loss after the first tenth, the learning rates. Beside it (``anchor``,
    a recipe) the same facts of that recipe's finished cross-validation with the same seed, from its result file.
    Writes ``<results>/stability_ph2_<name>_s<seed>.json``; scores nothing (unfinished folds have no out-of-fold
    predictions)."""
    from mambaseg.configs import apply_overrides, load_recipe

    cfg = apply_overrides(load_recipe(recipe), extra + ([f"train.epochs={epochs}"] if epochs is not None else []))
    planned = int(cfg.train.epochs)
    tenth = planned // 10
    name = run_name(recipe, tag)
    root = runs / seed_name(name, seed)
    rows = []
    for i in range(folds):
        f = root / f"fold_{i}" / "history.json"
        if not f.is_file():
            raise SystemExit(f"{f} is missing: fold {i} of {root} has no history (restore it, or use --folds)")
        hist = json.loads(f.read_text())
        if not isinstance(hist, list) or not hist:
            raise SystemExit(f"{f}: expected a non-empty list of per-epoch records")
        late = [r["train_loss"] for r in hist if r.get("epoch", 0) > tenth and r.get("train_loss") is not None]
        vals = _val_dice(hist)
        seconds = _seconds(hist)
        stated = (fold_devices or {}).get(i)
        rows.append({
            "fold": i, "epochs_done": int(hist[-1].get("epoch", len(hist))), "epochs_planned": planned,
            "finished": (root / f"fold_{i}" / "metrics.json").is_file(),
            "device": stated, "device_source": "stated (--fold-device)" if stated else None,
            **_drop_facts(hist, planned),
            "drops_over_listed": [[e, round(d, 4)] for d, e in _drops(hist) if d > DROP_LISTED],
            "val_dice_last": vals[-1][0] if vals else None,
            "train_loss_max_after_first_tenth": max(late) if late else None,
            **_lr_facts(hist),
            "seconds": round(seconds, 1), "seconds_per_epoch": round(seconds / len(hist), 2),
        })
    worst_late = max((r["max_epoch_drop_after_first_tenth"] for r in rows
                      if r["max_epoch_drop_after_first_tenth"] is not None), default=None)
    worst = max((r["max_epoch_drop"] for r in rows if r["max_epoch_drop"] is not None), default=None)
    record = {
        "what": f"training stability of the {folds}-fold cross-validation of recipe {recipe}"
                + (f" (variant {tag!r}: {extra})" if tag else "") + f", seed {seed}, from its folds' histories",
        "recipe": recipe, "variant": tag, "seed": seed, "folds": folds, "overrides": extra,
        "selection_rule": "none: no weights are selected or scored here (validation Dice of each epoch as logged)",
        "bound": DROP_BOUND, "first_tenth_epochs": tenth, "listed_drops_over": DROP_LISTED,
        "epochs_done": [r["epochs_done"] for r in rows], "epochs_planned": planned,
        "all_folds_finished": all(r["finished"] for r in rows),
        "max_epoch_drop": worst, "max_epoch_drop_after_first_tenth": worst_late,
        "bound_met": worst is not None and worst < DROP_BOUND,
        "bound_met_after_first_tenth": worst_late is not None and worst_late < DROP_BOUND,
        "fold_training": rows,
        "environment": environment(),
        "done_here": "histories read",  # the folds trained elsewhere (fold_training[].device)
        "environment_note": "'environment' is where the histories were read; the folds trained on fold_training[]"
                            ".device",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if note:
        record["note"] = note
    if anchor:
        a_path = results / f"{seed_name(anchor, seed)}.json"
        if not a_path.is_file():
            raise SystemExit(f"--anchor {anchor}: {a_path} is missing (the anchor's cross-validation result file)")
        a = json.loads(a_path.read_text())
        keys = ("epochs", "max_epoch_drop", "max_epoch_drop_epoch", "max_epoch_drop_after_first_tenth",
                "max_epoch_drop_after_first_tenth_epoch", "val_dice_last", "lr_last")
        record["anchor"] = {"recipe": anchor, "file": a_path.name,
                            "fold_training": [{k: f.get(k) for k in ("fold", *keys)} for f in a["fold_training"]]}
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"stability_ph2_{name}_s{seed}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{name} seed {seed}: epochs {min(record['epochs_done'])}-{max(record['epochs_done'])} of {planned}; "
          f"largest fall of val Dice {100 * (worst or 0):.2f} points, after epoch {tenth} "
          f"{100 * (worst_late or 0):.2f} -> {path}", flush=True)
    return record


def run_name(recipe: str, tag: str | None) -> str:
    """The name of a recipe's cross-validations: the recipe, or ``<recipe>-<tag>`` for a variant (--tag)."""
    return f"{recipe}-{tag}" if tag else recipe


def seed_name(name: str, seed: int) -> str:
    """The name of one seed's cross-validation root and result file (``.json``): ``cv_ph2_<name>_s<seed>``."""
    return f"cv_ph2_{name}_s{seed}"


def pack_state(root: Path, out_dir: Path, *, checkpoints: tuple = ("last", "best"), tta: bool = True,
               part_mib: float | None = None) -> list[Path]:
    """Pack the finished folds of the cross-validation ``root`` into ``out_dir/cvstate_<root>.tgz`` for a machine
    that will not keep them (a lent GPU): the root's JSON files (split, summary) and every fold that has its
    ``metrics.json`` AND all its wanted out-of-fold predictions (``checkpoints`` x plain/flip TTA). Left out:
    checkpoints, TensorBoard, ``progress.png`` and the probabilities of ``best`` (it is scored by its masks; only
    the final weights are ensembled). A fold stopped between its ``metrics.json`` and its last prediction is NOT
    packed: without its checkpoints it could never be completed. Members are ``<runs folder>/<root>/...``: restore
    with ``tar xzf FILE -C <parent of --runs>``. An archive over ``part_mib`` MiB is split into ``.tgz.partaa``,
    ``.tgz.partab``, ... (``cat FILE.tgz.part* | tar xz -C ...``). Returns the files written (none if no fold is
    finished)."""
    import tarfile

    from mambaseg.engine.crossval import fold_complete

    folds = [f for f in sorted(root.glob("fold_*")) if fold_complete(f, checkpoints, "flip" if tta else None)]
    if not folds:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"cvstate_{root.name}.tgz"
    for old in [path, *out_dir.glob(f"{path.name}.part*")]:
        old.unlink(missing_ok=True)
    base = root.parent.parent

    def keep(f: Path) -> bool:
        parts = set(f.relative_to(root).parts)
        return (f.is_file() and not {"checkpoints", "tb"} & parts and f.name != "progress.png"
                and not ({"best", "best_tta_flip"} & parts and "probabilities" in parts))
    with tarfile.open(path, "w:gz") as tar:
        for f in sorted(root.glob("*.json")):
            tar.add(f, arcname=str(f.relative_to(base)))
        for fold in folds:
            for f in sorted(fold.rglob("*")):
                if keep(f):
                    tar.add(f, arcname=str(f.relative_to(base)))
    limit = None if part_mib is None else int(part_mib * 2**20)
    if limit is None or path.stat().st_size <= limit:
        return [path]
    parts, data = [], path.read_bytes()
    for k in range(0, len(data), limit):
        n = k // limit
        part = out_dir / f"{path.name}.part{chr(97 + n // 26)}{chr(97 + n % 26)}"  # split(1)'s aa, ab, ...
        part.write_bytes(data[k:k + limit])
        parts.append(part)
    path.unlink()
    return parts


#: --smoke: a tiny model at 32x32 on the CPU, one epoch per fold
SMOKE_SETS = ["model.name=vmunet_tiny", "data.image_size=[32,32]", "train.batch_size=4", 'train.amp="off"',
              "model.kwargs={dims: 8, d_state: 2}", "data.num_workers=0", "train.scan_backend=torch"]


def _smoke_cache(tmp: Path) -> Path:
    """A 12-case synthetic cache with distinct ids (the synthetic val files are renamed) at 32x32."""
    from mambaseg.data import make_synthetic_dataset
    from mambaseg.data.layouts import write_cache

    root = make_synthetic_dataset(tmp / "data", n_train=8, n_val=4, size=(32, 32), seed=0)
    for sub in ("images", "masks"):
        for f in sorted((root / "val" / sub).iterdir()):
            f.rename(f.parent / f"v_{f.name}")
    return write_cache(root, (32, 32), tmp / "smoke_32.npz")[0]


def _fold_list(spec: str, folds: int) -> list[int]:
    """The folds a command-line list names: ``3``, ``0-2`` or several joined by commas (``0-2,4``), each in
    ``0..folds-1``; ``ValueError`` otherwise."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, _, last = part.partition("-")
        if not (first.strip().isdigit() and (not last or last.strip().isdigit())):
            raise ValueError(part)
        out.update(range(int(first), int(last or first) + 1))
    if not out or not all(0 <= i < folds for i in out):
        raise ValueError(spec)
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="vmunet_ph2_best")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only-folds", default=None, metavar="I,J-K",
                    help="train only these folds (e.g. 3,4 when 0-2 were trained elsewhere): the scoring follows "
                         "only once every fold is in --runs; merge the packed roots, then --score-only")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the fold split (same for every run)")
    ap.add_argument("--cache", action="append", default=[], metavar="HxW=FILE",
                    help="cache per image size (default 256x256=.gpucache/ph2_256.npz, 192x256=.gpucache/ph2_192x256.npz)")
    ap.add_argument("--minutes-per-fold", type=float, default=None, help="stop a fold after the epoch that crosses this")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (schedules follow)")
    ap.add_argument("--set", action="append", default=[], dest="extra", help="extra config override (repeatable)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-tta", action="store_true", help="skip the flip-TTA scoring")
    ap.add_argument("--runs", default="/tmp/cvruns")
    ap.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--ensemble", action="store_true",
                    help="after the seeds of a recipe, also score them as an ensemble (cv_ph2_<recipe>_ensemble.json)")
    ap.add_argument("--mix", default=None, metavar="RUN_S,RUN_S",
                    help="train nothing: score these finished cross-validations of different recipes (result names "
                         "<recipe>[-<tag>]_s<seed>, roots in --runs) as one ensemble, written as "
                         "cv_ph2_<--mix-name>_ensemble.json")
    ap.add_argument("--mix-name", default=None, help="with --mix: the ensemble's name (letters, digits, '_', '-', '.')")
    ap.add_argument("--score-only", action="store_true",
                    help="train nothing: score the cross-validations already in --runs (e.g. restored from a device "
                         "run without their checkpoints)")
    ap.add_argument("--parallel-folds", type=int, default=1,
                    help="train this many folds at a time, each in its own process on the one GPU (small batches "
                         "leave the GPU idle between kernels)")
    ap.add_argument("--checkpoints", default="last,best",
                    help="whose out-of-fold predictions to make and score: 'last' (the headline) and 'best' (the "
                         "optimistic comparison); 'last' alone for a root whose finished folds came back without "
                         "their checkpoints before 'best' was predicted")
    ap.add_argument("--pack", metavar="DIR", default=None,
                    help="train and score nothing: pack each (recipe, seed) root's finished folds (with all the "
                         "predictions --checkpoints and the TTA want) into DIR/cvstate_<root>.tgz, without "
                         "checkpoints (see pack_state)")
    ap.add_argument("--pack-part-mib", type=float, default=None, help="with --pack: split archives over this size")
    ap.add_argument("--tag", default=None,
                    help="a variant of the recipes made by --set overrides: its runs and results are named "
                         "cv_ph2_<recipe>-<tag>_s<seed> so they never mix with the recipe's own")
    ap.add_argument("--fold-device", action="append", default=[], metavar="I[-J]=NAME",
                    help="with --score-only: the GPU that trained folds I..J, for folds whose metrics.json predates "
                         "its device_name; with --stability-only: the GPU that trained them (histories do not "
                         "name it); recorded as stated, e.g. 0-2='NVIDIA H200'")
    ap.add_argument("--stability-only", action="store_true",
                    help="train and score nothing: write each (recipe, seed) root's training stability from its "
                         "folds' history.json, finished or not (stability_ph2_<name>_s<seed>.json, run_stability)")
    ap.add_argument("--anchor", default=None, metavar="RECIPE",
                    help="with --stability-only: the recipe whose cross-validation result file (same seed) is "
                         "recorded beside, e.g. the paper recipe the variant fixes")
    ap.add_argument("--note", default=None, help="with --stability-only: how the folds were trained, recorded as is")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke test on synthetic data (tiny model, 2 folds)")
    args = ap.parse_args()
    if args.tag is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.]*", args.tag):
        ap.error(f"--tag: letters, digits, '_' and '.' only (it names files), got {args.tag!r}")
    checkpoints = tuple(c.strip() for c in args.checkpoints.split(",") if c.strip())
    if not checkpoints or any(c not in ("last", "best") for c in checkpoints) or "last" not in checkpoints:
        ap.error(f"--checkpoints: 'last' or 'last,best' (the headline needs 'last'), got {args.checkpoints!r}")

    caches = dict(DEFAULT_CACHES)
    for item in args.cache:
        size, _, path = item.partition("=")
        h, _, w = size.lower().partition("x")
        caches[(int(h), int(w or h))] = path
    extra, folds, epochs, results, runs = list(args.extra), args.folds, args.epochs, Path(args.results_dir), Path(args.runs)
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="cv_smoke_"))
        caches = {(32, 32): str(_smoke_cache(tmp))}
        extra += SMOKE_SETS
        folds, epochs, results, runs = 2, 1, tmp / "results", tmp / "runs"
        args.device = "cpu"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    only_folds = None
    if args.only_folds is not None:
        try:
            only_folds = _fold_list(args.only_folds, folds)
        except ValueError:
            ap.error(f"--only-folds: fold numbers in 0..{folds - 1} (--folds {folds}) separated by commas, got "
                     f"{args.only_folds!r}")
    fold_devices = {}
    for item in args.fold_device:
        span, _, name = item.partition("=")
        try:
            if not name.strip():
                raise ValueError(item)
            fold_devices.update(dict.fromkeys(_fold_list(span, folds), name.strip()))
        except ValueError:
            ap.error(f"--fold-device: I=NAME or I-J=NAME with folds in 0..{folds - 1} (e.g. 0-2='NVIDIA H200'), "
                     f"got {item!r}")
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if args.mix is not None:
        if not args.mix_name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.mix_name):
            ap.error(f"--mix needs --mix-name: letters, digits, '_', '-' and '.' (it names the file), got "
                     f"{args.mix_name!r}")
        run_mix(args.mix_name, [s.strip() for s in args.mix.split(",") if s.strip()], runs=runs, results=results,
                tta=not args.no_tta)
        return
    if args.stability_only:
        for recipe in recipes:
            for seed in seeds:
                run_stability(recipe, seed, folds=folds, runs=runs, results=results, epochs=epochs, extra=extra,
                              tag=args.tag, anchor=args.anchor, fold_devices=fold_devices, note=args.note)
        return
    if args.pack:
        for recipe in recipes:
            for seed in seeds:
                root = runs / seed_name(run_name(recipe, args.tag), seed)
                files = pack_state(root, Path(args.pack), checkpoints=checkpoints, tta=not args.no_tta,
                                   part_mib=args.pack_part_mib)
                print(f"{root.name}: " + (", ".join(f"{f.name} {f.stat().st_size // 1024} KiB" for f in files)
                                          if files else "no finished fold to pack"), flush=True)
        return
    for recipe in recipes:
        for seed in seeds:
            if args.smoke:  # the tiny model replaces the recipe's; its image size must follow
                from mambaseg.configs import load_recipe

                caches[tuple(int(s) for s in load_recipe(recipe).data.image_size)] = caches[(32, 32)]
            run_one(recipe, seed, folds=folds, split_seed=args.split_seed, caches=caches, runs=runs, results=results,
                    minutes_per_fold=args.minutes_per_fold, epochs=epochs, extra=extra, device=args.device,
                    tta=not args.no_tta, score_only=args.score_only, parallel_folds=args.parallel_folds,
                    checkpoints=checkpoints, tag=args.tag, only_folds=only_folds, fold_devices=fold_devices)
        if args.ensemble and len(seeds) > 1:
            run_ensemble(run_name(recipe, args.tag), seeds, runs=runs, results=results, tta=not args.no_tta)


if __name__ == "__main__":
    main()
