"""Generate docs/RESULTS.md from the result files in benchmarks/results/.

Usage::

    python benchmarks/report.py             # (re)write docs/RESULTS.md
    python benchmarks/report.py --check     # exit 1 if docs/RESULTS.md is not what this script writes
    python benchmarks/report.py --results DIR --out FILE

One section per measurement family (chosen by file name); each table holds the headline numbers of its files,
and every row ends with the device, the date and the command recorded in the JSON. A field a file does not hold
is shown as "not recorded"; a date taken from git history (the ``date_from_git`` field) is labelled as such.
Files that match no family, or whose layout their family does not know, are listed under "Other results" with
their top-level scalar fields. Standard library only; the output depends only on the files (sorted by name).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "RESULTS.md"
NOT_RECORDED = "not recorded"
PROVENANCE = ("device", "date", "command")  # the last three columns of every table
INTRO = (
    "Every result file under `benchmarks/results/` (the current result of each measurement; superseded runs live in "
    "git history), one section per kind of measurement. Every row ends with the device, the date and the command its "
    "file records. \"not recorded\" marks a field the file does not hold; \"file committed\" gives the date of the "
    "last commit that changed a file whose run recorded no date (the run took place on or before it). Commands are as "
    "recorded: `python X.py` ran inside `benchmarks/`. Regenerate with `python benchmarks/report.py`; `--check` fails "
    "when this file is out of date."
)

# -----------------------------------------------------------------------------
# small helpers


def fmt(x, spec: str = ".3g") -> str:
    """A number in format ``spec``; "-" for a missing value, anything else as text."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        return format(x, spec)
    return str(x)


def dims(seq) -> str:
    """[1, 3, 256, 256] -> '1x3x256x256'."""
    return "x".join(map(str, seq))


def shape(r: dict) -> str:
    """'B,K,D,L,N' of a scan row (a ``shape`` entry, or the keys batch/k/d_inner/seqlen/d_state)."""
    if "shape" in r:
        s = r["shape"]
        if isinstance(s, int):  # an index into scan_gpu.ANCHORS
            return f"anchor #{s}"
        return ",".join(map(str, s)) if isinstance(s, list) else str(s)
    return ",".join(str(r[k]) for k in ("batch", "k", "d_inner", "seqlen", "d_state"))


def numbers(x, path: tuple = ()) -> list[tuple[tuple, float]]:
    """(path, value) of every number in nested dicts (lists are skipped)."""
    if isinstance(x, bool):
        return []
    if isinstance(x, (int, float)):
        return [(path, x)]
    if isinstance(x, dict):
        return [item for k, v in x.items() for item in numbers(v, path + (str(k),))]
    return []


def scalars(d: dict, width: int = 100) -> str:
    """'key: value' of the top-level scalar fields (long strings shortened)."""
    out = []
    for k, v in d.items():
        if isinstance(v, (dict, list)) or k in PROVENANCE:
            continue
        text = fmt(v)
        out.append(f"{k}: {text if len(text) <= width else text[: width - 3] + '...'}")
    return "; ".join(out)


def _env(d: dict) -> dict:
    env = d.get("environment")
    return env if isinstance(env, dict) else {}


def _when(text: str) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM UTC' (unparseable text is kept as it is)."""
    try:
        t = datetime.datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    if t.tzinfo is None:
        return t.strftime("%Y-%m-%d %H:%M")
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# -----------------------------------------------------------------------------
# provenance: command, device, date of a file (or of a part of it that has its own command)


def command_of(d: dict) -> str:
    for src in (d, _env(d)):
        if src.get("command"):
            return str(src["command"])
        if src.get("commands"):
            return "; ".join(map(str, src["commands"]))
    return NOT_RECORDED


def device_of(d: dict) -> str:
    device = d.get("device") or _env(d).get("device")
    trained = _fold_devices(d)
    if trained:  # folds trained on the device(s), then scored (or their histories read) on this file's machine
        device = f"folds trained on {trained}; {_done_here(d)} on {device or NOT_RECORDED}"
    if not device:
        return NOT_RECORDED
    return _gpu_label(device)


def _gpu_label(device) -> str:
    # a few files add a machine-pool label after the GPU name, e.g. "NVIDIA H100 80GB HBM3 (pool-x1)": drop it
    return re.sub(r" \([a-z0-9-]+\)$", "", str(device))


def _done_here(d: dict) -> str | None:
    """What the machine of a cross-validation file did with folds trained elsewhere ("scored", "histories read"), as
    the file says ('done_here'; files scored before it say so only in their note); None for folds trained there."""
    if d.get("done_here"):
        return str(d["done_here"])
    return "scored" if str(d.get("note", "")).startswith("scored with --score-only") else None


def _fold_devices(d: dict) -> str:
    """Which GPU trained which folds of a cross-validation scored (--score-only) or read (--stability-only)
    elsewhere, e.g. "NVIDIA H200 (folds 0-2), NVIDIA H100 80GB HBM3 (folds 3-4)"; '' for other files and folds that
    did not record it."""
    if not _done_here(d):
        return ""
    by: dict[str, list[int]] = {}
    stated = False
    for f in d.get("fold_training") or []:
        by.setdefault(_gpu_label(f.get("device") or NOT_RECORDED), []).append(int(f["fold"]))
        stated = stated or str(f.get("device_source")).startswith("stated")
    if set(by) <= {NOT_RECORDED}:
        return ""
    trained = ", ".join(f"{name} ({_fold_span(sorted(ix))})" for name, ix in by.items())
    return trained + (" (as stated)" if stated else "")


def _fold_span(ix: list[int]) -> str:
    """``fold 3``, ``folds 0-2`` (consecutive) or ``folds 0,2,4``."""
    if len(ix) == 1:
        return f"fold {ix[0]}"
    return f"folds {ix[0]}-{ix[-1]}" if ix == list(range(ix[0], ix[-1] + 1)) else "folds " + ",".join(map(str, ix))


def date_of(d: dict) -> str:
    date = d.get("date") or _env(d).get("date")
    if date:
        return _when(date)
    git = d.get("date_from_git")
    if isinstance(git, dict) and git.get("committed"):
        return f"{NOT_RECORDED}; file committed {_when(git['committed'])} ({git.get('commit', '?')})"
    return NOT_RECORDED


# -----------------------------------------------------------------------------
# one function per family: (file name, parsed JSON) -> table rows (dicts of column -> text, in column order).
# A row may carry its own "command" (a part of the file run by another command).


def scan_cpu_rows(name, d):
    def x(r, key):
        return fmt(r[key], ".1f") + "x" if key in r else "-"

    return [{"shape (B,K,D,L,N)": shape(r), "torch fwd ms": fmt(r["torch_fwd_ms"], ".1f"),
             "ref fwd ms": fmt(r.get("ref_fwd_ms"), ".0f"), "torch vs ref": x(r, "speedup_torch_vs_ref"),
             "cpu_fused fwd ms": fmt(r.get("cpu_fused_fwd_ms"), ".1f"),
             "cpu_fused vs torch": x(r, "speedup_fused_vs_torch"),
             "cpu_fused fwd+bwd ms": fmt(r.get("cpu_fused_fwd_bwd_ms"), ".1f")}
            for r in d["rows"]]


def cpu_latency_rows(name, d):
    if "results" not in d:  # the first version: one model, torch backend only
        return [{"model": d["model"], "input": dims(d["input"]), "threads": "-", "load avg (1 min)": "-",
                 "old torch scan s": fmt(d["median_s"], ".2f"), "fused s": "-", "ratio": "-", "fused + bf16 s": "-",
                 "onnxruntime s": "-", "share in the scan (old)": fmt(100 * d["scan_share"], ".0f") + " %"}]
    rows = []
    for r in d["results"]:
        for threads, t in sorted((r.get("threads") or {}).items(), reverse=True):
            rows.append({"model": r["model"], "input": dims(r["input"]), "threads": threads,
                         "load avg (1 min)": fmt((r.get("load_before") or [None])[0], ".2f"),
                         "old torch scan s": fmt(t.get("torch_s"), ".3f"), "fused s": fmt(t.get("fused_s"), ".3f"),
                         "ratio": fmt(t.get("ratio_torch_over_fused"), ".2f") + "x" if t.get("ratio_torch_over_fused")
                         else "-",
                         "fused + bf16 s": fmt(t.get("fused_bf16_s"), ".3f"),
                         "onnxruntime s": fmt(t.get("onnxruntime_s"), ".3f"), "share in the scan (old)": "-"})
    return rows


def scan_vs_official_rows(name, d):
    rows = []
    for r in d["rows"]:
        rounds = r["fwdbwd_ratio_rounds"]
        rows.append({
            "shape (B,K,D,L,N)": shape(r),
            "ours fwd+bwd ms": fmt(r["ours_fwdbwd_ms"]),
            "official fwd+bwd ms": fmt(r["official_fwdbwd_ms"]),
            "ratio (median)": fmt(r["fwdbwd_ratio"], ".2f"),
            "ratio range": f"{min(rounds):.2f}-{max(rounds):.2f}",
            "rounds ours <= official": f"{r['rounds_at_or_under_official_fwdbwd']}/{len(rounds)}",
            "graph ratio": fmt(r["ours_fwdbwd_graph_ms"] / r["official_fwdbwd_graph_ms"], ".2f"),
            "fwd ratio": fmt(r["fwd_ratio"], ".2f"),
            "max rel. diff": fmt(max(v for _, v in numbers(r["rel_diff_vs_official"])), ".1e"),
        })
    return rows


def scan_gpu_rows(name, d):
    return [{"shape (B,K,D,L,N)": shape(r), "fwd ms": fmt(r["triton_fwd_ms"]),
             "fwd+bwd ms": fmt(r["triton_fwdbwd_ms"]), "fwd+bwd graph ms": fmt(r.get("triton_fwdbwd_graph_ms")),
             "official fwd+bwd ms (anchor)": fmt(r["official_cuda_fwdbwd_ms"]),
             "ratio": fmt(r["fwdbwd_vs_official"], ".2f"), "max rel. err grads": fmt(r["rel_err_grads"], ".1e")}
            for r in d["rows"]]


def _config(c: dict) -> str:
    return "default" if not c else json.dumps(c, separators=(",", ":"))


def _sweep(rows: list[dict]) -> str:
    """Best time per shape (and mode) of a configuration sweep, with its configuration."""
    groups: dict[tuple, list] = {}
    for r in rows:
        if "fwdbwd_graph_ms" in r:  # scan_profile.py rows: the GPU (graph) time of fwd+bwd
            key, t, config = (shape(r), "fwd+bwd graph"), r["fwdbwd_graph_ms"], r.get("config", {})
        else:  # scan_gpu.py --sweep rows: one eager time per mode
            key, t = (shape(r), r["mode"]), r["ms"]
            config = {k: v for k, v in r.items() if k not in ("shape", "mode", "ms")}
        groups.setdefault(key, []).append((t, config))
    out = []
    for (s, mode), runs in groups.items():
        t, config = min(runs, key=lambda run: run[0])
        default = [t0 for t0, c in runs if not c]
        extra = f", default {default[0]:.3g}" if default and config else ""
        out.append(f"{s} {mode}: best {t:.3g} ms ({_config(config)}, {len(runs)} configs{extra})")
    return "; ".join(out)


def _host(part: dict, label: str = "", empty=None) -> list[str]:
    """Host time per fwd+bwd call (us) of every dict with a "fwdbwd" time (scan_profile.py --host)."""
    empty = part.get("trivial_function_fwdbwd_us", empty)  # an autograd.Function that launches nothing
    out = []
    if isinstance(part.get("fwdbwd"), (int, float)):
        extra = [f"{part['fwdbwd_no_launch']:.0f} without launches"] if "fwdbwd_no_launch" in part else []
        extra += [f"empty autograd Function {empty:.0f}"] if empty else []
        out.append(f"{label or 'fwd+bwd'} {part['fwdbwd']:.0f} us" + (f" ({', '.join(extra)})" if extra else ""))
    for k, v in part.items():
        if isinstance(v, dict):
            out += _host(v, label if k == "{}" else f"{label} {k}".strip(), empty)
    return out


def _headline(part: dict) -> str:
    """Headline numbers of one part of a sweep / profile file."""
    if "best_per_shape" in part:
        return "; ".join(f"{shape(r)} {r['mode']}: {r['triton_ms']:.3g} ms ({r['ratio_vs_official']:.2f}x official)"
                         for r in part["best_per_shape"])
    rows = part.get("rows")
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        if "fwdbwd_vs_official" in rows[0]:
            return "fwd+bwd / official anchor: " + ", ".join(
                f"{shape(r)} {r['fwdbwd_vs_official']:.2f}" for r in rows)
        return _sweep(rows)
    if isinstance(part.get("rel_err"), dict):
        return f"max relative error {max(v for _, v in numbers(part['rel_err'])):.2g} ({len(part['rel_err'])} shapes)"
    if isinstance(part.get("fwdbwd_eager_ms"), dict):
        out = []
        for s, runs in part["fwdbwd_eager_ms"].items():
            ab = ", ".join(f"{k} {min(v):.3g}-{max(v):.3g}" for k, v in runs.items() if isinstance(v, list))
            out.append(f"{s}: {ab} ms")
        return "fwd+bwd eager " + "; ".join(out)
    if _host(part):
        return "host time per call: " + "; ".join(_host(part))
    return ", ".join(f"{' '.join(p for p in path if p != '{}')} {v:.3g}" for path, v in numbers(part)) or "-"


def _parts(d: dict, path: str = "") -> list[tuple[str, dict]]:
    """(name, part) of every dict in ``d`` that records its own command, outermost first."""
    found = [(path or "whole file", d)] if command_of(d) != NOT_RECORDED else []
    for k, v in d.items():
        if isinstance(v, dict) and k != "environment":
            found += _parts(v, f"{path} / {k}" if path else k)
    return found


def scan_profile_rows(name, d):
    parts = _parts(d)
    if ("rows" in d or "best_per_shape" in d) and not any(part is d for _, part in parts):
        parts.insert(0, ("whole file", d))
    rows = []
    for part_name, part in parts:
        # the file itself: its headline comes from its top-level rows only (its other parts get rows of their own)
        own = {k: v for k, v in d.items() if k in ("rows", "best_per_shape")} if part is d else part
        rows.append({"part": part_name, "headline": _headline(own), "command": command_of(part)})
    return rows


def train_speed_rows(name, d):
    runs = [(d["rows"], "-", command_of(d))]
    runs += [(c["rows"], f"later check, {c.get('code', 'code not recorded')}", command_of(c))
             for c in d.get("later_checks", [])]
    return [{
        "run": run,
        "model": r["model"],
        "precision": r["precision"],
        "compiled": fmt(r.get("compiled", "--compile" in command)),
        "batch": fmt(r["batch"]),
        "train img/s": fmt(r["train_img_s"], ".1f"),
        "infer img/s": fmt(r["infer_img_s"], ".1f"),
        "train peak GiB": fmt(r["train_peak_gib"], ".2f"),
        "official train / infer img/s, peak GiB":
            f"{r['official_train_img_s']} / {r['official_infer_img_s']} / {r['official_train_peak_gib']}",
        "train vs official": fmt(r["train_img_s"] / r["official_train_img_s"], ".2f") + "x",
        "command": command,
    } for rows, run, command in runs for r in rows]


def parity_rows(name, d):
    return [{
        "model": d["model"],
        "input": dims(d["input"]),
        "backend": r["backend"],
        "max abs diff": fmt(r["max_abs_diff"], ".1e"),
        "relative L2": fmt(r["rel_l2"], ".1e"),
    } for r in d["rows"]]


def flops_rows(name, d):
    return [{
        "model": d["model"],
        "input (HxW)": dims(r["img_size"]),
        "params M": fmt(r["params"] / 1e6, ".2f"),
        "GMACs conv/linear": fmt(r["gmacs_conv_linear"], ".2f"),
        "GMACs scans": fmt(r["gmacs_scan_vmamba_ref_count"], ".2f"),
        "GMACs total": fmt(r["gmacs_total"], ".2f"),
        "paper GFLOPs": fmt(d.get("paper", {}).get("gflops")),
    } for r in d["results"]]


def ph2_rows(name, d):
    return [{
        "model": d["model"],
        "recipe": d["recipe"],
        "input": dims(d["image_size"]),
        "epochs run / planned": f"{d['epochs_run']} / {d['epochs_planned']}",
        "best epoch": fmt(d["best_epoch"]),
        "val pooled DSC": fmt(d["val_pooled_dsc"], ".3f"),
        "val pooled IoU": fmt(d["val_pooled_iou"], ".3f"),
        "val per-case DSC": fmt(d["val_per_case_dsc"], ".3f"),
        "train img/s": fmt(d["train_images_per_second"], ".1f"),
        "wall min": fmt(d["wall_seconds"] / 60, ".1f"),
    }]


def _pp(scores):
    """The post-processed final weights' pooled DSC and failed cases (files before it was scored: '-')."""
    pp = scores.get("last_pp")
    return f"{pp['pooled_dsc']:.4f} ({pp['n_below_0.8']})" if pp else "-"


def cv_ph2_rows(name, d):
    sc = d["scores"]
    tta = sc.get("last_tta_flip")
    row = {  # the columns a single seed and an ensemble of seeds (cv_ph2_<recipe>_ensemble.json) share
        "recipe": d["recipe"] + (f" ({d['variant']})" if d.get("variant") else ""),
        "seed": "",
        "folds / cases": f"{d['folds']} / {len(d['per_case_dsc'])}",
        "pooled OOF DSC (last weights)": fmt(d["pooled_oof_dsc"], ".4f"),
        "+ flip TTA": fmt(tta["pooled_dsc"], ".4f") if tta else "-",
        "+ LCC + fill (cases < 0.80)": _pp(sc),
        "single seeds: mean ± std": "-",
        "per-case mean DSC": fmt(d["per_case_mean_dsc"], ".4f"),
        "cases < 0.80": fmt(d["n_below_0.8"]),
        "worst case": f"{d['worst'][0]['id']} {d['worst'][0]['dice']:.3f}" if d["worst"] else "-",
        "best-on-fold DSC (optimistic)": "-", "epochs": "-", "max val drop": "-", "after the first tenth": "-",
        "final lr / peak lr": "-", "fold training": "-",
    }
    if "member_runs" in d:  # cross-validations of different recipes averaged (cv_ph2_gpu.py --mix)
        row["seed"] = "ensemble of " + " + ".join(
            f"{s.removeprefix('cv_ph2_')} ({d['member_pooled_oof_dsc'][s]:.4f})" for s in d["member_runs"])
        return [row]
    if "members" in d:  # the seeds one by one and averaged
        sd = d["single_seed_pooled_oof_dsc"]
        row["seed"] = (f"{','.join(map(str, d['seeds']))}: ensemble; "
                       f"single seeds {','.join(map(str, d['summary_seeds']))}")
        row["single seeds: mean ± std"] = f"{sd['mean']:.4f} ± {sd['std']:.4f}"
        return [row]
    def drop(key):  # the largest of the folds' falls (and its epoch, where the file has it)
        v, e = _largest(d["fold_training"], key)
        return "-" if v is None else f"{v:.3f}" + (f" (ep {e})" if e is not None else "")
    row.update({
        "seed": fmt(d["seed"]),
        "best-on-fold DSC (optimistic)": fmt(sc["best"]["pooled_dsc"], ".4f") if "best" in sc else "-",
        "epochs": "/".join(map(str, sorted({f["epochs"] for f in d["fold_training"]}))),
        "max val drop": drop("max_epoch_drop"),
        "after the first tenth": drop("max_epoch_drop_after_first_tenth"),
        "final lr / peak lr": _final_lr(d),
        "fold training": _fold_training(d),
    })
    return [row]


def hard_case_rows(name, d):
    t = d["threshold"]
    return [{"case": r["case"],
             **{run: "-" if v is None else f"{v:.3f}" + (" <" if v < t else "") for run, v in r["dsc"].items()},
             f"runs < {t:g}": f"{r['runs_below']} / {r['runs']}",
             "best run": f"{r['best_run']} {r['best_dsc']:.3f}",
             **({"error (precision / recall per run)": _error_cell(r)} if "errors" in r else {})}
            for r in d["cases"]]


def _error_cell(row):
    """A hard case's kind of error and each run's precision / recall (the runs whose probabilities were read)."""
    if not row["errors"]:
        return "-"
    per_run = "; ".join(f"{run} {e['precision']:.2f} / {e['recall']:.2f}" for run, e in row["errors"].items())
    return f"{row['error_kind']}: {per_run}"


def _largest(folds: list[dict], key: str) -> tuple:
    """The largest value of ``key`` over the folds with the epoch beside it (``<key>_epoch``, None where the file has
    none), or (None, None) when no fold has it."""
    pairs = [(f[key], f.get(f"{key}_epoch")) for f in folds if f.get(key) is not None]
    return max(pairs) if pairs else (None, None)


def stability_rows(name, d):
    def pts(v, e=None):  # a fall of validation Dice in points, with its epoch
        return "-" if v is None else f"{100 * v:.1f}" + (f" (ep {e})" if e is not None else "")

    def late(folds):  # each fold's largest fall after the first tenth of the run
        return ", ".join(pts(f["max_epoch_drop_after_first_tenth"], f["max_epoch_drop_after_first_tenth_epoch"])
                         for f in folds)

    folds = d["fold_training"]
    anchor = d.get("anchor") or {}
    done = sorted(set(d["epochs_done"]))
    return [{
        "recipe": d["recipe"] + (f" ({d['variant']}: {' '.join(d['overrides'])})" if d.get("variant") else ""),
        "seed": fmt(d["seed"]),
        "epochs done / planned": f"{done[0]}-{done[-1]} / {d['epochs_planned']}" if len(done) > 1
        else f"{done[0]} / {d['epochs_planned']}",
        "finished": "yes" if d["all_folds_finished"] else "no (nothing scored)",
        "largest fall (points), all epochs": pts(*_largest(folds, "max_epoch_drop")),
        f"per fold after epoch {d['first_tenth_epochs']}": late(folds),
        f"< {100 * d['bound']:.0f} points after epoch {d['first_tenth_epochs']}":
            "yes" if d["bound_met_after_first_tenth"] else "no",
        "anchor per fold after the first tenth": (f"{anchor['recipe']}: {late(anchor['fold_training'])} (of "
                                                  f"{max(f['epochs'] for f in anchor['fold_training'])} epochs)")
        if anchor else "-",
        "s / epoch": fmt(max(f["seconds_per_epoch"] for f in folds), ".3g"),
    }]


def _final_lr(d):
    """How far the schedule had decayed when the scored (final) weights were taken: the largest last-epoch / peak
    learning-rate ratio of the folds ("-" for files written before the folds recorded it)."""
    ratios = [f["lr_last"] / f["lr_peak"] for f in d["fold_training"]
              if f.get("lr_last") is not None and f.get("lr_peak")]
    return f"{max(ratios):.2f}" if ratios else "-"


def _fold_training(d):
    """Training seconds of the folds: their sum when trained one after the other; with --parallel-folds N, fold i
    ran in process i mod N, so the wall time is the longest process's sum (per-fold seconds include the sharing)."""
    secs = [f["seconds"] for f in d["fold_training"]]
    n = d.get("parallel_folds") or 1
    # files written before fold_seconds_rule counted only the last call of a fold resumed across calls: a lower bound
    bound = "" if d.get("fold_seconds_rule") else ">= "
    if n <= 1:
        return f"{bound}{sum(secs):.0f} s"
    wall = max(sum(secs[j::n]) for j in range(n))
    return f"{bound}{wall:.0f} s ({n} at a time)"


def _acdc_scores(val, test, in_sample=False):
    """The val and test columns of an ACDC row (one run or an ensemble); ``in_sample``: val also trained the
    weights (``acdc_gpu.py --train-on-val``), so its Dice is marked as such."""
    return {
        "val Dice": fmt(val["dice"], ".3f") + (" (in-sample)" if in_sample else ""),
        "val HD95 vox": fmt(val["hd95"], ".1f"),
        "test Dice": fmt(test["dice"], ".3f"),
        "test RV / Myo / LV Dice": " / ".join(f"{test['classes'][c]['dice']:.3f}" for c in ("RV", "Myo", "LV")),
        "test HD95 vox": fmt(test["hd95"], ".1f"),
    }


def _acdc_tta(d):
    """A ``test Dice + <mode> TTA`` column per TTA evaluation in the file (``test_tta_<mode>``)."""
    return {f"test Dice + {k[len('test_tta_'):]} TTA": fmt(v["dice"], ".3f") for k, v in d.items()
            if k.startswith("test_tta_") and not k.endswith("_pp")}


def acdc_rows(name, d):
    if "test" not in d:  # a CPU smoke run (acdc_cpu_smoke_<model>.json): validation metrics only
        m = d["metrics"]
        run = d.get("what", "-")
        if d.get("cli_command"):  # cpu_smoke.py: the CLI command it ran (the command column is the script's)
            run += f"; {fmt(d.get('wall_s_incl_startup'), '.0f')} s wall incl. start-up; CLI: {d['cli_command']}"
        return [{
            "model": name.removesuffix(".json").split("_")[-1],
            "run": run,
            "val Dice": fmt(m["dice"], ".3f"),
            "val HD95 vox": fmt(m["hd95"], ".1f"),
        }]
    tov = bool(d.get("train_on_val"))
    trained = "trained on train + val slices, final weights; " if tov else ""
    if d.get("ensemble"):  # acdc_gpu.py --ensemble: the members' tested checkpoints averaged
        members = ", ".join(f"{m['run']} {m['test_dice']:.3f}" for m in d["members"])
        return [{
            "model": d["model"],
            "run": f"ensemble of {len(d['members'])} ({trained}recipe {d['recipe']}; members' test Dice: {members})",
            **_acdc_scores(d["val"], d["test"], tov),
            **_acdc_tta(d),
        }]
    return [{
        "model": d["model"],
        "run": (f"recipe {d['recipe']}, {d['epochs_done']} epochs "
                + ("(trained on train + val slices, final weights)" if tov else f"(best {d['best_epoch']})")),
        **_acdc_scores(d["best_val"], d["test"], tov),
        **_acdc_tta(d),
        **({"+ TTA + largest component: Dice / HD95 vox": f"{d['test_tta_flip_pp']['dice']:.3f} / "
            f"{d['test_tta_flip_pp']['hd95']:.1f}"} if "test_tta_flip_pp" in d else {}),
        "train img/s": fmt(d["train_images_per_second"], ".1f"),
        "wall min": (f"{d['wall_s']['train_incl_val_all_calls'] / 60:.1f} training over {len(d['calls'])} calls"
                     if len(d.get("calls") or []) > 1 else fmt(d["wall_s"]["total"] / 60, ".1f")),
    }]


def endotect_rows(name, d):
    def fitness(s):
        return f"{s['fitness']['dsc']:.3f} / {s['fitness']['iou']:.3f} ({s['num_evaluated']} evaluated)"

    if "retrain" not in d:  # the searched architecture (arch.json of a search)
        return [{"part": "searched architecture", "search fitness DSC / IoU": fitness(d)}]
    s = d["search"]
    rows = [{"part": "search", "model": "supernet", "epochs": fmt(s["supernet"]["epochs"]),
             "search fitness DSC / IoU": fitness(s)}]
    for part, r in d["retrain"].items():
        rows.append({
            "part": part,
            "model": r["model"],
            "params M": fmt(r["params"] / 1e6, ".1f"),
            "epochs": fmt(r["epochs"]),
            "val DSC (last epoch)": fmt(r["val_last_epoch"]["dsc"], ".3f"),
            "val IoU (last epoch)": fmt(r["val_last_epoch"]["iou"], ".3f"),
            "best val DSC (epoch)": f"{r['val_best_epoch']['dsc']:.3f} ({r['val_best_epoch']['epoch']})",
        })
    return rows


def mustshow_rows(name, d):
    metrics = []
    for k, v in d.items():
        if isinstance(v, dict):
            v = v.get("fitness", v)
            picked = [f"{m} {v[m]:.3f}" for m in ("dice", "dsc", "iou") if isinstance(v.get(m), (int, float))]
            if picked:
                metrics.append(f"{k}: {', '.join(picked)}")
    seconds = [f"{k} {fmt(v)}" for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    row = {"what": d.get("what", "-"), "headline": "; ".join(metrics + seconds)}
    if d.get("cli_commands"):  # cpu_smoke.py: the CLI commands it ran (the command column is the script's)
        row["CLI commands"] = "; ".join(map(str, d["cli_commands"]))
    return [row]


def scan_old_new_rows(name, d):
    return [{"shape (B,K,D,L,N)": shape(r), "path": "segment-parallel" if r.get("segment_parallel") else "per channel",
             "fwd ms": fmt(r["triton_fwd_ms"]), "fwd+bwd ms": fmt(r["triton_fwdbwd_ms"]),
             "old kernels fwd+bwd ms": fmt(r.get("triton_old_fwdbwd_ms")),
             "speed-up": fmt(r["triton_old_fwdbwd_ms"] / r["triton_fwdbwd_ms"], ".1f") + "x"
             if r.get("triton_old_fwdbwd_ms") else "-",
             "max rel. diff vs old": fmt(r.get("rel_diff_vs_old"), ".1e")}
            for r in d["rows"]]


def step_profile_rows(name, d):
    top = d["top_kernels"][:3]
    return [{"recipe": d["recipe"], "batch": d["batch"], "step ms (wall)": fmt(d["step_ms_wall"], ".1f"),
             "GPU kernels ms": fmt(d["gpu_kernel_ms_per_step"], ".1f"),
             "launches / step": fmt(d["kernel_launches_per_step"], ".0f"),
             "top kernels (ms/step)": "; ".join(f"{k['kernel'][:40]} {k['ms_per_step']:.1f}" for k in top)}]


def epoch_profile_rows(name, d):
    top = (d.get("top_device_kernels") or d.get("top_host_ops") or [])[:3]
    rec = d.get("epoch_record") or {}
    return [{"recipe": d["recipe"], "epoch": d["profiled_epoch"],
             "epoch ms (wall, profiled)": fmt(d["wall_ms_under_profiler"], ".0f"),
             "device kernels ms": fmt(d.get("device_kernel_ms"), ".0f"), "kernels": fmt(d.get("device_kernels"), ".0f"),
             "step / val / ckpt s": " / ".join(fmt(rec.get(k), ".3f") for k in ("time_step", "time_val", "time_ckpt")),
             "top (ms)": "; ".join(f"{k['name'][:40]} {k['ms']:.0f}" for k in top)}]


def recipe_wall_rows(name, d):
    rows = []
    for model, m in d["models"].items():
        for side in ("official", "mambaseg"):
            r = m.get(side) or {}
            if not r:
                continue
            if r.get("wall_s_extrapolated_to_epochs"):  # a shortened official run: the full recipe's wall, marked
                wall = (f"{fmt(r.get('wall_s'), '.1f')}* ({r.get('epochs_run')} of "
                        f"{r['wall_s_extrapolated_to_epochs']} epochs ran: {fmt(r.get('wall_s_measured'), '.1f')})")
            else:
                wall = fmt(r.get("wall_to_final_metrics_s") or r.get("wall_s"), ".1f")
            rows.append({"model": model, "side": side, "epochs": r.get("epochs_run"), "wall s": wall,
                         "first step s": fmt(r.get("first_step_s"), ".1f"),
                         "s / epoch (median)": fmt(r.get("epoch_s_median"), ".2f"),
                         "data / step / val / ckpt share": " / ".join(
                             fmt(r.get(f"share_{k}"), ".2f") for k in ("data", "step", "val", "ckpt")),
                         "img/s (train incl. val)": fmt(r.get("images_per_second"), ".1f"),
                         "val pooled DSC": fmt(r.get("pooled_dsc_final"), ".4f")})
        cmp = m.get("compare") or {}
        if cmp.get("wall_ratio") is not None:
            rows.append({"model": model, "side": "mambaseg / official", "wall s": fmt(cmp["wall_ratio"], ".3f") + "x",
                         "first step s": fmt(cmp.get("first_step_ratio"), ".2f") + "x",
                         "s / epoch (median)": fmt(cmp.get("epoch_s_ratio"), ".3f") + "x"})
    return rows


def test_suite_rows(name, d):
    """``cpu_test_suite.py``: per side the whole suite (round 0) and the median over the tests both commits have."""
    rows = []
    for side in ("old", "new"):
        r = d[side]
        runs = r["runs"]
        rows.append({"side": side, "commit": r["commit"][:7],
                     "whole suite (passed, wall s)": f"{runs[0]['counts'].get('passed', '-')}, "
                                                     f"{fmt(r.get('whole_suite_wall_s'), '.1f')}",
                     f"{d['tests_in_both']} tests in both: median wall s": fmt(r.get("median_wall_s"), ".1f"),
                     "rounds 1+ s": " / ".join(fmt(x["wall_s"], ".1f") for x in runs[1:]),
                     "load avg (1 min) before each round": " / ".join(str(x["load_before"][0]) for x in runs)})
    rows.append({"side": "new / old", f"{d['tests_in_both']} tests in both: median wall s":
                 fmt(d.get("new_over_old"), ".3f") + "x"})
    return rows


def first_hour_rows(name, d):
    """One row per (condition, scenario) of ``cpu_first_hour.py``, then the thread probes and the peak RSS."""
    rows = []

    def dice(r):
        return f"{r['dice']:.4f}" if isinstance(r.get("dice"), (int, float)) else "-"

    for cond, part in (d.get("conditions") or {}).items():
        for scen, row in (part.get("scenarios") or {}).items():
            o, n = row["old"], row["new"]
            rows.append({"condition": cond, "what": scen, "old": f"{o['seconds']} s (Dice {dice(o)})",
                         "new": f"{n['seconds']} s (Dice {dice(n)})", "speedup": f"{row.get('speedup')}x",
                         "load avg (1 min) old / new": f"{o['load_before'][0]} / {n['load_before'][0]}"})
        for label, t in (part.get("threads") or {}).items():
            rows.append({"condition": cond, "what": f"vmunet_tiny fwd+bwd b16 64x64, {label}", "old": "",
                         "new": f"{t.get('median_s', t.get('error'))} s", "speedup": "",
                         "load avg (1 min) old / new": str((t.get("load_before") or ["-"])[0])})
    for key, what in (("kernel_build", "fused CPU scan kernel: one-time build (empty extension cache)"),
                      ("kernel_warm", "fused CPU scan kernel: load from the cache")):
        r = d.get(key)
        if isinstance(r, dict):
            rows.append({"condition": "idle", "what": what, "old": "",
                         "new": f"{r['seconds']} s" if "seconds" in r else str(r.get("error")), "speedup": "",
                         "load avg (1 min) old / new": str((r.get("load_before") or ["-"])[0])})
    for key, r in (d.get("rss") or {}).items():
        rows.append({"condition": "idle", "what": f"vmunet CPU training step peak RSS ({key})", "old": "",
                     "new": f"{fmt(r.get('peak_rss_gb'))} GB" if "peak_rss_gb" in r else str(r.get("error")),
                     "speedup": "", "load avg (1 min) old / new": ""})
    return rows


def search_checkpoint_rows(name, d):
    """``search_checkpoints.py``: one row per side (old / new code) of the toy search."""
    rows = []
    gb = 1e9
    sn = d["supernet"]
    for side in ("old", "new"):
        r = d[side]
        # sizes seen while the search ran (a finished search deletes the supernet's checkpoints at the end)
        files = {**(r.get("supernet_files_bytes") or {}),
                 **(r.get("supernet_checkpoint_bytes_seen_during_search") or {})}
        phase = r.get("max_sampled_rss_bytes") or {}

        def held(name: str) -> str:
            size = f"{fmt(files.get(name, 0) / gb, '.3f')}"
            c = r.get(name)
            if not c:
                return f"{size} (deleted at the end)" if files.get(name) else size
            return f"{size} ({fmt(c['weights_bytes'] / gb, '.3f')} / {fmt(c['optimizer_bytes'] / gb, '.3f')})"

        rows.append({
            "side": f"{side} ({r['commit'][:7]})",
            "best.pt GB (weights / optimizer)": held("best.pt"),
            "last.pt GB (weights / optimizer)": held("last.pt"),
            "supernet params GB": fmt(sn["param_bytes"] / gb, ".3f"),
            "peak RSS GB (training / evolution)": f"{fmt(r['peak_rss_bytes'] / gb, '.2f')} "
                                                  f"({fmt((phase.get('supernet_training') or 0) / gb, '.2f')} / "
                                                  f"{fmt((phase.get('evolution') or 0) / gb, '.2f')})",
            "checkpoints left after the search GB (files)": (
                f"{fmt(r['checkpoint_bytes_left'] / gb, '.3f')} ({', '.join(r['checkpoint_files_left_bytes']) or '-'})"
                if "checkpoint_bytes_left" in r else "not recorded"),
            "found network params GB": (fmt(r["found_network_param_bytes"] / gb, ".3f")
                                        if r.get("found_network_param_bytes") else "not recorded"),
            "wall s": fmt(r.get("seconds")),
            "load avg (1 min)": str((r.get("load_before") or ["-"])[0]),
            "same search result": str(d.get("same_search_result")),
        })
    return rows


# (title, file-name pattern, rows function, what the section shows); a file belongs to the first family it matches
FAMILIES = [
    ("Selective scan on the CPU", r"scan_cpu.*", scan_cpu_rows,
     "`benchmarks/scan_cpu.py`: forward of the torch (chunked) backend against the sequential reference, and of the "
     "fused C++ kernel (`cpu_fused`) against the torch backend; the fused kernel also forward + backward."),
    ("Selective scan on the GPU against the official kernel", r"scan_vs_official_.*", scan_vs_official_rows,
     "`benchmarks/scan_vs_official.py`: ours and the official CUDA kernel timed round by round in one process "
     "(eager forward+backward, median over rounds; graph = CUDA-graph replay, GPU time only)."),
    ("Selective scan on the GPU: segment-parallel kernels against the per-channel ones", r"scan_gpu_.*dermomamba.*",
     scan_old_new_rows, "`benchmarks/scan_gpu.py --old-kernels-too`: DermoMamba's calls (batch 4, 192x256, bf16) with "
     "the plan's kernels and, in the same process, the per-channel kernels alone."),
    ("Selective scan on the GPU against the fixed anchor numbers", r"scan_gpu_[^_]+\.json", scan_gpu_rows,
     "`benchmarks/scan_gpu.py`: eager times against the official kernel's fixed anchor numbers, and the relative "
     "error of the gradients against the torch backend."),
    ("Selective scan on the GPU: sweeps, host time and probes", r"scan_gpu_.*", scan_profile_rows,
     "`benchmarks/scan_gpu.py --sweep` and `benchmarks/scan_profile.py`: tile sweeps, host-time breakdowns and A/B "
     "repeats; one row per part of a file that records its own command (best time per shape and mode)."),
    ("Time to result: whole recipes against the official scripts", r"recipe_wall_.*", recipe_wall_rows,
     "`benchmarks/recipe_wall.py`: the official training script and `mambaseg train --recipe` on the same data and "
     "epochs, one after the other on one GPU; wall = process start to final metrics. `*`: the official run was "
     "cut short to save device time and its wall extrapolated to the full recipe (measured wall + remaining epochs x "
     "its median epoch); the ratios use the extrapolated wall. Both sides first ran one untimed epoch (bytecode "
     "and kernel caches filled); first step with an empty kernel cache is in the JSON (`first_step_cold_s`)."),
    ("One training epoch, profiled", r"epoch_profile_.*", epoch_profile_rows,
     "`benchmarks/epoch_profile.py`: one epoch of `mambaseg train` (steps as the run makes them, CUDA graphs "
     "included, validation, checkpoint) under torch.profiler: summed kernel time, kernels launched, the largest "
     "items."),
    ("One training step, profiled", r"step_profile_.*", step_profile_rows,
     "`benchmarks/step_profile.py`: GPU kernel time and launches of one training step (measured before the "
     "segment-parallel scan kernels for DermoMamba)."),
    ("Training speed", r"train_speed_.*", train_speed_rows,
     "`benchmarks/train_speed.py`: VM-UNet training and inference throughput and peak memory, next to the official "
     "code's anchor numbers."),
    ("GPU / CPU parity", r"gpu_cpu_parity.*", parity_rows,
     "`benchmarks/gpu_cpu_parity.py`: logits on the GPU against the CPU (torch backend), same weights, fp32."),
    ("CPU latency", r"cpu_latency.*", cpu_latency_rows,
     "`benchmarks/cpu_latency.py`: forward latency at batch 1 (median of the timed runs after a warm-up): the old "
     "torch-scan path, the fused CPU scan (alternating runs in one process), the fused path under bf16 autocast and "
     "onnxruntime; the 1-minute load average when the model's runs started."),
    ("Model size (MACs)", r"flops_.*", flops_rows, "`benchmarks/flops_dermomamba.py`: MACs per image."),
    ("PH2 training", r"skin_ph2_.*", ph2_rows,
     "`benchmarks/train_skin_ph2_gpu.py`: full recipes trained from scratch, scored on `ph2_dev/val` (pooled = one "
     "confusion matrix over the split)."),
    ("PH2 cross-validation", r"cv_ph2_.*", cv_ph2_rows,
     "`benchmarks/cv_ph2_gpu.py`: 5-fold cross-validation on the 100 ph2_dev train+val cases (fold split seed "
     "fixed), trained from scratch; headline = pooled out-of-fold DSC of each fold's FINAL weights (no checkpoint "
     "selection, so no selection on the cases reported), at the cache's resolution; 'best-on-fold' selects each "
     "fold's checkpoint on its own held-out cases and is optimistic; 'max val drop' = largest fall of validation Dice "
     "between consecutive epochs over the folds (and the epoch), also over the epochs after the first tenth of the "
     "run where the file has it. 'fold training' = the folds' training seconds: their sum, or with N folds at a time "
     "on the one GPU the longest process's sum (fold i runs in process i mod N), each fold's seconds summed over its "
     "epochs in every call ('>=': an older file counted only the last call of a fold resumed across calls, a lower "
     "bound). 'LCC + fill' = the same final weights, each mask reduced to its largest connected component with holes "
     "filled (shown beside, not chosen by these numbers). An 'ensemble' row averages the saved out-of-fold "
     "probabilities of a recipe's seeds (same folds) and gives the single seeds' mean ± sample std beside it; an "
     "'ensemble of A + B' row averages cross-validations of different recipes on the same folds (`--mix`), each "
     "member's own pooled out-of-fold DSC in brackets."),
    ("PH2 cases below 0.80", r"hard_cases_ph2.*", hard_case_rows,
     "`benchmarks/ph2_hard_cases.py`: every case that some PH2 cross-validation above scores below the threshold "
     "(per-case DSC of the folds' final weights, as each file records it; '<' marks a value below), with every "
     "run's DSC beside, how many runs put it below and its best run. Derived from those files, nothing trained; "
     "choosing a recipe or an ensemble by this table is a selection on the cases it shows. The error column (with "
     "`--runs`/`--cache`: the runs whose restored roots hold out-of-fold probabilities) gives each run's precision / "
     "recall of the case and the kind of error: false positives = over-segmentation, false negatives = "
     "under-segmentation, mixed = runs disagree."),
    ("PH2 training stability", r"stability_ph2_.*", stability_rows,
     "`benchmarks/cv_ph2_gpu.py --stability-only`: the folds' logged validation Dice per epoch (20 held-out cases "
     "per fold), finished or not; 'largest fall' = the largest drop between two consecutive epochs (Dice points) "
     "over all folds, then each fold's largest after the first tenth of the planned epochs (the first epochs of a "
     "run from scratch, still climbing, swing most); the bound is the one the stability fix must meet. The anchor "
     "is the recipe being fixed, from its finished cross-validation (same split and seed), over all its epochs. "
     "'s / epoch' includes the sharing of the GPU with the other processes named in the file's note."),
    ("ACDC training", r"acdc_.*", acdc_rows,
     "`benchmarks/acdc_gpu.py` (and a CPU smoke run): mean of per-volume per-class Dice / HD95, selection on 20 val "
     "volumes, report on 40 test volumes. An 'ensemble' row averages the probabilities of several runs' best.pt "
     "(each selected on val; none chosen on test). Runs trained on train + val slices (--train-on-val) are tested "
     "with their final weights and their val Dice is marked in-sample."),
    ("EndoTect: SliceMamba search and retraining", r"slicemamba_.*", endotect_rows,
     "`benchmarks/slicemamba_gpu.py`: supernet, evolutionary search, then the searched model, the all-(4,4) model "
     "and VM-UNet of the same depths retrained on the same budget (160 train / 40 val images, pooled)."),
    ("A new user's first hour on the CPU", r"cpu_first_hour.*", first_hour_rows,
     "`benchmarks/cpu_first_hour.py`: the README's ph2 training example, the demo and ACDC test evaluation with the "
     "old defaults (main before the change, from git) and the new ones, back to back; idle = nothing added (the "
     "machine is shared: see the load averages), loaded = a second process spinning on one core; thread settings "
     "and the peak RSS of a vmunet CPU training step. Each file's 'notes' say what else ran on the machine; in "
     "cpu_first_hour_a4b0ad3_lowload.json the idle ph2_train 'new' time includes a one-time ~20 s rebuild of the "
     "fused CPU kernel (fixed since; the one-time build is now its own row)."),
    ("SliceMamba search on the CPU: checkpoints and memory", r"search_checkpoints_.*", search_checkpoint_rows,
     "`benchmarks/search_checkpoints.py`: the toy search of the docs (default width, endotect_polyp, 1 supernet "
     "epoch at 64x64, 2 generations of 4) with the code before and after the change, one after the other: the "
     "supernet's checkpoint files and what they hold (their largest size during the search where the search deletes "
     "them at the end), the process's peak RSS (largest sample during the supernet training / the evolution in "
     "brackets), and the checkpoint files left in the output folder after the search beside the found network's "
     "parameter bytes."),
    ("The CPU test suite, two commits", r"cpu_test_suite.*", test_suite_rows,
     "`benchmarks/cpu_test_suite.py`: the README's test command in each commit's own tree on this machine; round 0 "
     "runs each whole suite (and fills the caches), later rounds alternate the two sides on the tests both commits "
     "have, compared by their medians."),
    ("CPU must-show runs", r"cpu_mustshow_.*", mustshow_rows,
     "`benchmarks/cpu_smoke.py`: short end-to-end runs of the command-line interface on the CPU, each step a fresh "
     "process (wall seconds include its start-up); TMP in a CLI command = the script's temporary folder."),
]

# -----------------------------------------------------------------------------
# rendering


def cell(text: str) -> str:
    return str(text).replace("\n", " ").replace("|", "\\|")


def table(rows: list[dict]) -> list[str]:
    """Markdown table; columns in order of first appearance, provenance last."""
    columns = []
    for r in rows:
        columns += [c for c in r if c not in columns and c not in PROVENANCE]
    columns += list(PROVENANCE)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        values = [r.get(c, "-") for c in columns]
        values[-1] = f"`{values[-1]}`" if values[-1] != NOT_RECORDED else values[-1]
        lines.append("| " + " | ".join(cell(v) for v in values) + " |")
    return lines


def load(path: Path):
    """Parsed JSON, or None with the reason when the file cannot be read as JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"not readable as JSON ({type(e).__name__})"


def render(results: Path = RESULTS) -> str:
    sections = {title: [] for title, *_ in FAMILIES}
    other = []
    for path in sorted(results.glob("*.json")):
        link = f"[{path.name}](../benchmarks/results/{path.name})"
        d, error = load(path)
        if not isinstance(d, dict):
            what = error or f"top-level {type(d).__name__} of {len(d) if isinstance(d, list) else 1} item(s)"
            other.append({"file": link, "fields": what, "device": NOT_RECORDED, "date": NOT_RECORDED,
                          "command": NOT_RECORDED})
            continue
        provenance = {"device": device_of(d), "date": date_of(d), "command": command_of(d)}
        family = next((f for f in FAMILIES if re.fullmatch(f[1], path.name)), None)
        try:
            rows = family[2](path.name, d) if family else None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as e:
            rows, error = None, f"layout not known to the section '{family[0]}' ({type(e).__name__}: {e})"
        if rows:
            sections[family[0]] += [{"file": link, **r, **{k: v for k, v in provenance.items() if k not in r}}
                                    for r in rows]
        else:
            fields = scalars(d) or "no top-level scalar fields"
            other.append({"file": link, "fields": f"{error}; {fields}" if error else fields, **provenance})

    out = ["<!-- generated by `python benchmarks/report.py` from benchmarks/results/*.json; do not edit by hand -->",
           "", "# Measured results", "", textwrap.fill(INTRO, 120), ""]
    for title, _, _, about in FAMILIES:
        if sections[title]:
            out += [f"## {title}", "", textwrap.fill(about, 120), "", *table(sections[title]), ""]
    if other:
        out += ["## Other results", "", "Files no section above knows: their top-level scalar fields.", "",
                *table(other), ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of result JSONs")
    ap.add_argument("--out", type=Path, default=DOC, help="Markdown file to write (or to check)")
    ap.add_argument("--check", action="store_true", help="exit 1 if --out differs from what would be written")
    args = ap.parse_args()
    text = render(args.results)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
        if current != text:
            sys.exit(f"{args.out} is out of date: run python benchmarks/report.py")
        print(f"{args.out} is up to date")
        return
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
