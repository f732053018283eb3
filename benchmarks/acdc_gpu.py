"""Train MSVM-UNet and HeteroMedSeg on ACDC within a wall-clock budget; select on val, report on test.

For every model (each in its own process, all sharing the GPU): a short timing probe (forward + loss + backward +
AdamW step on random 224x224 batches, bf16 autocast, after warm-up) sets the number of epochs that fit the budget;
then :func:`mambaseg.engine.train` runs the model's ACDC recipe (``<model>_acdc``) on the volcache built by
``mambaseg cache`` (the 35 training patients' slices, 20 val and 40 test volumes) with the schedule
changed to a per-step cosine over the whole (short) run with a linear warm-up (the recipes' 300-epoch schedules do
not fit a few-minute budget). ``best.pt`` is chosen on the VALIDATION volumes by mean Dice; the best checkpoint is
then evaluated once on the TEST volumes with :func:`mambaseg.engine.evaluate_checkpoint` (per-class Dice and HD95 in
voxels under the ``transunet`` and ``nan`` empty-mask policies). Writes ``benchmarks/results/acdc_<model>.json``.

Usage (GPU machine, cache carried in ``.gpucache``)::

    mambaseg cache --data ../shared/data/acdc --image-size 224 --out .gpucache/acdc_224.npz --splits train,val,test   # here, once
    # on the GPU machine (carry .gpucache; about 8 minutes for both models side by side; results also in $OUT):
    PYTHONUNBUFFERED=1 python benchmarks/acdc_gpu.py --cache .gpucache/acdc_224.npz --budget-s 330 --copy-to $OUT

Smoke test on CPU (tiny batch, two steps): ``--device cpu --batch-size 2 --max-steps 2 --workers 0``.

A budget longer than one command may run (the device machine allows 600 s a command): ``--call-limit-s 540`` stops
the training cleanly after the epoch that crosses 540 s of this process (``last.pt`` written, exit status 3, nothing
evaluated) and the same command with ``--resume`` continues it from its saved config and plan (``acdc_plan.json`` in
the run folder: the probe's epochs are kept) until it is done; then ``best.pt`` is evaluated on the test volumes::

    python benchmarks/acdc_gpu.py --models heteromedseg --recipe '{model}_acdc_best' --tta flip --warmup 500 \
        --budget-s 800 --call-limit-s 540 --resume --runs /tmp/acdc_runs --copy-to $OUT   # again until it exits 0

(``--warmup`` replaces the recipe's warm-up: 500 is what ``heteromedseg_acdc_best`` states.)

An ensemble: ``--member NAME=OVERRIDES`` (repeatable) trains runs of the one ``--models`` entry that differ by config
overrides (``;``-separated), side by side, named ``<model>-NAME``; ``--ensemble`` then evaluates their ``best.pt``
together (softmax probabilities averaged) on the val and test volumes -> ``acdc_<model>_ensemble<tag>.json``::

    python benchmarks/acdc_gpu.py --models heteromedseg --recipe '{model}_acdc_best' --warmup 500 --epochs 100 \
        --member 'a=train.seed=1' --member 'b=data.augmentation=msvmunet;train.seed=2' --ensemble --tta flip \
        --call-limit-s 400 --resume --runs /tmp/acdc_runs --copy-to $OUT --tag _ens   # again until it exits 0

``--train-on-val`` trains on the training slices AND every slice of the 20 val volumes (``data.train_splits=[train,
val]``, 45 patients) and tests each run's final weights (``last.pt``): nothing is selected, and the val scores in
the result are in-sample (the report marks them). With ``--epochs`` the schedule is fixed in advance.

With ``--resume``, a run this machine already finished and tested (its result file names its ``best.pt``) is not
trained or tested again.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, environment, write_json  # noqa: E402


def probe_step_time(model_name: str, num_classes: int, batch: int, size: int, device: str, kwargs: dict,
                    steps: int = 6, warmup: int = 3, barrier: Any = None) -> float:
    """Median seconds per training step (fwd + CE/Dice loss + bwd + AdamW) on random data.

    With a ``barrier`` (models trained side by side), every process finishes its warm-up (kernel compilation)
    before the timed steps, so the timing includes the other processes' load on the GPU.
    """
    import torch

    import mambaseg
    from mambaseg.losses import create_loss

    torch.manual_seed(0)
    model = mambaseg.create_model(model_name, num_classes=num_classes, in_chans=1, **kwargs).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    loss_fn = create_loss("ce_dice")
    x = torch.randn(batch, 1, size, size, device=device)
    y = torch.randint(0, num_classes, (batch, size, size), device=device)
    times = []
    for i in range(warmup + steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            out = model(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        if i == warmup - 1 and barrier is not None:
            try:
                barrier.wait(timeout=600)
            except threading.BrokenBarrierError:  # the other model failed: time this one alone
                pass
    del model, opt
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    times.sort()
    return times[len(times) // 2]


def _train_slices(cache: str, with_val: bool = False) -> int:
    """Number of training slices in a volcache ``.npz`` (from its arrays' shapes), plus every slice of the val
    volumes with ``with_val`` (``--train-on-val``)."""
    import numpy as np

    with np.load(cache, allow_pickle=False) as z:
        return len(z["train_ids"]) + (int(z["val_shapes"][:, 0].sum()) if with_val else 0)


def _ckpt_name(args: argparse.Namespace) -> str:
    """The checkpoint a run is tested with: ``best.pt`` (chosen on val), or with ``--train-on-val`` the final
    weights ``last.pt`` (val trains, so nothing can be chosen on it)."""
    return "last.pt" if args.train_on_val else "best.pt"


def _selection(args: argparse.Namespace) -> str:
    """How the tested checkpoint of a run (:func:`_ckpt_name`) was chosen; the result file and the ensemble state
    it."""
    if args.train_on_val:
        return "none: the final weights (last.pt) of the fixed schedule; val also trains, so its scores are in-sample"
    return "val (20 volumes), mean Dice, transunet policy"


def _data_facts(plan: dict, args: argparse.Namespace) -> dict[str, str]:
    """What trained, what selected and what is reported, for the result file."""
    train = (f"train_slices + every slice of the 20 val volumes ({plan['n_train']} slices of 45 patients; "
             "data.train_splits=[train,val])" if args.train_on_val
             else f"train_slices ({plan['n_train']} slices of 35 patients)")
    return {"cache": args.cache, "train": train, "selection": _selection(args), "report": "test (40 volumes)"}


Unit = tuple[str, str, list[str]]  # (run name, model, member overrides): see units()


def units(args: argparse.Namespace) -> list[Unit]:
    """The runs of this command as (name, model, extra overrides): one per ``--models`` entry, or with ``--member``
    one per member of the (single) model, named ``<model>-<member>``."""
    models = [m for m in args.models.split(",") if m]
    if not args.member:
        return [(m, m, []) for m in models]
    if len(models) != 1:
        raise SystemExit(f"--member needs exactly one --models entry, got {models}")
    out = []
    for spec in args.member:
        name, sep, sets = spec.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"--member {spec!r}: expected NAME=OVERRIDES (NAME letters, digits and _; OVERRIDES "
                             f"key=value items separated by ';', or empty)")
        sets = [x.strip() for x in sets.split(";") if x.strip()]
        if any(x.replace(" ", "").startswith("model.name=") for x in sets):
            raise SystemExit(f"--member {spec!r}: a member cannot change model.name (the probe, the run names and "
                             f"the ensemble are per --models entry); use several --models entries instead")
        out.append((f"{models[0]}-{name}", models[0], sets))
    if len({n for n, _, _ in out}) != len(out):
        raise SystemExit(f"--member: names must differ, got {[n for n, _, _ in out]}")
    return out


def _run_dir(name: str, args: argparse.Namespace) -> Path:
    """The training folder of run ``name`` (``--runs``/acdc_<name>)."""
    return Path(args.runs) / f"acdc_{name}"


def _finished(name: str, out_dir: Path, args: argparse.Namespace) -> dict | None:
    """The result of a run this machine already finished and tested (an earlier call of a ``--resume``-d job): its
    result file names ``out_dir``'s tested checkpoint (:func:`_ckpt_name`), which exists and is not newer than it;
    else ``None``."""
    import json

    path, ckpt = RESULTS / f"acdc_{name}{args.tag}.json", out_dir / "checkpoints" / _ckpt_name(args)
    if not (path.is_file() and ckpt.is_file()):
        return None
    res = json.loads(path.read_text())
    same = (res.get("test") or {}).get("checkpoint") == str(ckpt)
    return res if same and ckpt.stat().st_mtime <= path.stat().st_mtime else None


def run_one(unit: Unit, args: argparse.Namespace, barrier: Any = None) -> dict[str, Any]:
    from mambaseg.configs import apply_overrides, load_recipe

    name, model_name, member_sets = unit
    t_start = time.perf_counter()
    recipe = args.recipe.format(model=model_name)
    out_dir = _run_dir(name, args)
    plan_file = out_dir / "acdc_plan.json"
    if args.resume and (done := _finished(name, out_dir, args)) is not None:
        print(f"[{name}] already trained and tested in an earlier call ({out_dir})", flush=True)
        return done
    if args.resume and (out_dir / "checkpoints" / "last.pt").is_file() and plan_file.is_file():
        return _continue(unit, args, out_dir, plan_file, t_start)
    cfg = load_recipe(recipe)
    if member_sets:  # before the probe: a member may change the batch, the model's kwargs or the augmentation
        cfg = apply_overrides(cfg, member_sets)
    if args.batch_size:
        cfg = apply_overrides(cfg, [f"train.batch_size={args.batch_size}"])
    n_train = _train_slices(args.cache, with_val=args.train_on_val)
    steps_per_epoch = math.ceil(n_train / cfg.train.batch_size)
    n_val = max(1, args.validations)
    from mambaseg.ops import ENV_VAR

    backend_note = ""
    if args.epochs is None:
        probe_args = (model_name, 4, cfg.train.batch_size, 224, args.device, dict(cfg.model.kwargs))
        try:
            step_s = probe_step_time(*probe_args, barrier=barrier)
        except Exception as exc:  # e.g. a scan-kernel failure: retry once with the pure-PyTorch scan
            if os.environ.get(ENV_VAR) == "torch":
                raise
            backend_note = f"default scan backend failed in the probe ({type(exc).__name__}: {exc}); used 'torch'"
            print(f"[{name}] {backend_note}", flush=True)
            os.environ[ENV_VAR] = "torch"  # this benchmark process only
            step_s = probe_step_time(*probe_args)
        # data loading, logging and checkpointing add to the compute: keep a margin; validations budgeted apart
        epoch_s = steps_per_epoch * step_s * args.overhead
        epochs = max(2, int((args.budget_s - n_val * args.val_s) // epoch_s))
    else:
        step_s, epochs = float("nan"), args.epochs
    val_every = max(1, epochs // n_val)
    overrides = [
        f"data.path={args.cache}", f"train.out={out_dir}", f"train.epochs={epochs}", f"train.val_every={val_every}",
        f"train.device={args.device}", f"data.num_workers={args.workers}", "schedule.name=cosine",
        "schedule.interval=step", "schedule.t_max=null", f"schedule.warmup={args.warmup}",
        f"schedule.eta_min={args.eta_min}", "train.log_every=50",
        # short GPU epochs: keep the loader workers, write last.pt only at the end (best.pt as it improves)
        "data.persistent_workers=true", "train.checkpoint_every=1000000",
    ]
    if args.train_on_val:
        overrides.append("data.train_splits=[train,val]")
    if not args.call_limit_s:
        # a hard stop in case the GPU gets slower than at the probe (other jobs sharing it): best.pt stays valid.
        # With --call-limit-s the run spans several processes and this per-process limit would end it early.
        overrides.append(f"train.time_limit_s={args.budget_s * args.hard_stop}")
    if args.max_steps:
        overrides.append(f"train.max_steps={args.max_steps}")
    cfg = apply_overrides(cfg, overrides)
    print(f"[{name}] probe {step_s * 1000:.0f} ms/step (batch {cfg.train.batch_size}) -> {epochs} epochs, "
          f"validation every {val_every}", flush=True)
    plan = {"recipe": recipe, "member_overrides": member_sets, "overrides": overrides,
            "probe_ms_per_step": step_s * 1000, "epochs": epochs,
            "n_train": n_train, "scan_backend_note": backend_note, "calls": []}
    return _train_and_test(unit, args, cfg, out_dir, plan, t_start, resume=False)


def _continue(unit: Unit, args: argparse.Namespace, out_dir: Path, plan_file: Path, t_start: float) -> dict:
    """``--resume``: continue an ACDC run stopped by ``--call-limit-s`` with its own saved config and plan."""
    import json

    from mambaseg.configs import load_config

    plan = json.loads(plan_file.read_text())
    cfg = load_config(out_dir / "config.yaml")
    print(f"[{unit[0]}] resuming {out_dir} (planned {plan['epochs']} epochs)", flush=True)
    return _train_and_test(unit, args, cfg, out_dir, plan, t_start, resume=True)


def _train_and_test(unit: Unit, args: argparse.Namespace, cfg: Any, out_dir: Path, plan: dict, t_start: float,
                    resume: bool) -> dict[str, Any]:
    """Train (or continue) one model; unless the call limit stopped it, evaluate its tested checkpoint
    (:func:`_ckpt_name`) on the test volumes."""
    import json

    import torch

    from mambaseg.engine import evaluate_checkpoint, train
    from mambaseg.ops import resolve_backend

    name, model_name, _ = unit

    stop_note = "call limit reached: run the same command again with --resume"
    callbacks = []
    if args.call_limit_s:
        callbacks.append(lambda state: stop_note if time.perf_counter() - t_start > args.call_limit_s else False)
    t_train = time.perf_counter()
    from rich.console import Console

    res = train(cfg, resume=True if resume else None, callbacks=callbacks,
                console=Console(width=200, force_terminal=False, log_path=False), show_progress=False)
    train_s = time.perf_counter() - t_train
    stop_reason = (res.metrics.get("train") or {}).get("stop_reason")
    plan["calls"].append({"train_s": round(train_s, 1), "epochs_done": res.epochs, "stop_reason": stop_reason})
    (out_dir / "acdc_plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    if stop_reason == stop_note and res.epochs < plan["epochs"]:
        return {"model": model_name, "run": name, "unfinished": True, "epochs_done": res.epochs,
                "epochs": plan["epochs"],
                "calls": plan["calls"], "note": stop_note}
    tested = out_dir / "checkpoints" / _ckpt_name(args)
    t_eval = time.perf_counter()
    test = evaluate_checkpoint(tested, split="test", device=args.device, batch_size=32)
    test_tta = (evaluate_checkpoint(tested, split="test", device=args.device, batch_size=32, tta=args.tta)
                if args.tta != "none" else None)
    # the same weights with post-processed volumes (an extra number beside the plain ones, not a selection)
    test_pp = (evaluate_checkpoint(tested, split="test", device=args.device, batch_size=32, tta=args.tta,
                                   postprocess=args.postprocess) if args.postprocess != "none" else None)
    eval_s = time.perf_counter() - t_eval
    return {
        "model": model_name,
        "run": name,
        "recipe": plan["recipe"],
        "member_overrides": plan.get("member_overrides", []),
        "params": res.metrics["model"]["params"],
        "data": _data_facts(plan, args),
        "train_on_val": bool(args.train_on_val),
        "overrides": plan["overrides"],
        "probe_ms_per_step": plan["probe_ms_per_step"],
        "scan_backend": resolve_backend(None, args.device.startswith("cuda")),
        "scan_backend_note": plan["scan_backend_note"],
        "epochs": plan["epochs"],
        "epochs_done": res.epochs,
        "stop_reason": stop_reason,
        "calls": plan["calls"],
        "steps": res.steps,
        "train_images_per_second": res.images_per_second,
        "best_epoch": res.best_epoch,
        "best_val": res.metrics,
        "test": test,
        **({f"test_tta_{args.tta}": test_tta} if test_tta is not None else {}),
        **({f"test_tta_{args.tta}_pp": test_pp} if test_pp is not None else {}),
        "history": res.history,
        "wall_s": {"probe_and_setup": t_train - t_start, "train_incl_val": train_s, "test_eval": eval_s,
                   "total": time.perf_counter() - t_start,
                   "train_incl_val_all_calls": round(sum(c["train_s"] for c in plan["calls"]), 1),
                   "note": "this call's times; a resumed run's earlier calls are in 'calls'"},
        "gpu_shared_with": [n for n, _, _ in units(args) if n != name] if args.parallel else [],
        "environment": environment(),
        "torch_cuda_max_mem_gib": (torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else None,
    }


def _save(name: str, res: dict[str, Any], args: argparse.Namespace) -> Path:
    """Write the result JSON (and copy it with the run's logs to ``--copy-to``) as soon as a model is done."""
    import shutil

    path = _save_json(f"acdc_{name}{args.tag}.json", res, args)
    if args.copy_to:
        run = _run_dir(name, args)
        for f in ("train.log", "history.json", "metrics.json", "config.yaml", "progress.png"):
            if (run / f).is_file():
                shutil.copy2(run / f, Path(args.copy_to) / f"acdc_{name}{args.tag}_{f}")
    return path


def _run_and_save(unit: Unit, args: argparse.Namespace, barrier: Any = None) -> dict[str, Any]:
    try:
        res = run_one(unit, args, barrier)
    except Exception:
        if barrier is not None:
            barrier.abort()  # do not leave the other process waiting
        res = {"model": unit[1], "run": unit[0], "error": traceback.format_exc()}
    res["result_file"] = str(_save(unit[0], res, args))
    return res


def _worker(unit: Unit, args: argparse.Namespace, barrier: Any, q: Any) -> None:
    q.put((unit[0], _run_and_save(unit, args, barrier)))


def _lost_run(name: str, model: str, exitcode: int, args: argparse.Namespace) -> dict[str, Any]:
    """The failed record (saved like any result) of a run whose process ended without reporting."""
    why = (f"killed by signal {-exitcode}" + (" (SIGKILL: out of memory?)" if exitcode == -9 else "")
           if exitcode < 0 else f"exit code {exitcode}")
    res = {"model": model, "run": name, "error": f"the process of run {name!r} ended without a result: {why}"}
    res["result_file"] = str(_save(name, res, args))
    return res


def _collect(procs: dict[str, Any], q: Any, on_dead: Any, poll_s: float = 2.0) -> dict[str, Any]:
    """The result of every process in ``procs`` (run name -> started process) as it arrives on ``q``. A process that
    ends with a non-zero exit code without reporting (killed: -9 is SIGKILL, e.g. the out-of-memory killer) gets
    ``on_dead(name, exitcode)`` instead, so the others' results are kept and the job does not wait forever."""
    import queue

    results: dict[str, Any] = {}
    while len(results) < len(procs):
        try:
            name, res = q.get(timeout=poll_s)
            results[name] = res
        except queue.Empty:
            for name, p in procs.items():  # exit code 0 always reported first (the queue is flushed at exit)
                if name not in results and p.exitcode not in (None, 0):
                    results[name] = on_dead(name, p.exitcode)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=".gpucache/acdc_224.npz")
    ap.add_argument("--models", default="msvmunet,heteromedseg")
    ap.add_argument("--recipe", default="{model}_acdc", help="recipe name template (e.g. {model}_acdc_best)")
    ap.add_argument("--tta", default="none", help="also evaluate the test volumes with this TTA (flip)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="training wall-clock budget per model")
    ap.add_argument("--epochs", type=int, default=None, help="fix the epochs instead of the probe")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    ap.add_argument("--validations", type=int, default=5, help="validations during training")
    ap.add_argument("--val-s", type=float, default=8.0, help="budgeted seconds per validation")
    ap.add_argument("--overhead", type=float, default=1.2, help="epoch time = steps x probe x overhead")
    ap.add_argument("--warmup", type=int, default=50, help="warm-up optimizer steps")
    ap.add_argument("--hard-stop", type=float, default=1.3,
                    help="stop training after this multiple of --budget-s even if epochs remain")
    ap.add_argument("--eta-min", type=float, default=1e-6)
    ap.add_argument("--workers", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=True,
                    help="train the models at the same time on the one GPU (separate processes)")
    ap.add_argument("--tag", default="", help="suffix of the result file names")
    ap.add_argument("--postprocess", default="none",
                    help="also evaluate the test volumes post-processed (e.g. largest_component), with --tta")
    ap.add_argument("--call-limit-s", type=float, default=None,
                    help="stop cleanly (last.pt written) after the epoch that ends this many seconds after the start "
                         "of this process, so that a run longer than one command's time limit continues with --resume")
    ap.add_argument("--resume", action="store_true",
                    help="continue a run that --call-limit-s stopped (same --runs; its saved config and plan are used)")
    ap.add_argument("--copy-to", default=None, help="also copy each result JSON and the run logs here")
    ap.add_argument("--member", action="append", default=[], metavar="NAME=OVERRIDES",
                    help="one run of the (single) --models entry with extra overrides, e.g. "
                         "'msvm=data.augmentation=msvmunet;train.seed=2' (repeatable; ';' separates overrides; "
                         "the run is named <model>-NAME)")
    ap.add_argument("--train-on-val", action="store_true",
                    help="train on the training slices AND every slice of the 20 val volumes (data.train_splits="
                         "[train,val]), test the final weights (last.pt): nothing is selected, val scores are "
                         "in-sample")
    ap.add_argument("--ensemble", action="store_true",
                    help="when every run is done, also evaluate them together (probabilities averaged) on the val "
                         "and test volumes")
    args = ap.parse_args(argv)
    todo = units(args)
    if args.ensemble and len(todo) < 2:
        raise SystemExit("--ensemble needs two or more runs (--member ... or several --models)")
    results: dict[str, Any] = {}
    if args.parallel and len(todo) > 1:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        barrier = ctx.Barrier(len(todo)) if args.epochs is None else None
        procs = {u[0]: ctx.Process(target=_worker, args=(u, args, barrier, q)) for u in todo}
        for p in procs.values():
            p.start()
        model_of = {u[0]: u[1] for u in todo}

        def dead(name: str, code: int) -> dict[str, Any]:
            if barrier is not None:
                barrier.abort()  # a survivor waiting at the shared start must not wait for it
            return _lost_run(name, model_of[name], code, args)

        results = _collect(procs, q, dead)
        for p in procs.values():
            p.join()
    else:
        for u in todo:
            results[u[0]] = _run_and_save(u, args)
    rc = 0
    for m, res in results.items():
        path = res["result_file"]
        if "error" in res:
            rc = 1
            print(f"[{m}] FAILED:\n{res['error']}")
            continue
        if res.get("unfinished"):
            rc = 3
            print(f"[{m}] UNFINISHED: {res['epochs_done']}/{res['epochs']} epochs; {res['note']}")
            continue
        t = res["test"]
        per = {c: (round(v.get("dice", float("nan")), 4), round(v.get("hd95", float("nan")), 2))
               for c, v in (t.get("classes") or {}).items()}
        nan_pol = (t.get("policies") or {}).get("nan", {})
        print(f"[{m}] test mean Dice {t.get('dice'):.4f} HD95 {t.get('hd95'):.2f} ({t.get('empty_policy')}); "
              f"nan-policy Dice {nan_pol.get('mean_dice')} HD95 {nan_pol.get('mean_hd95')}; per class {per}; "
              f"best epoch {res['best_epoch']}/{res['epochs']}; wall {res['wall_s']['total']:.0f} s -> {path}")
    if args.ensemble and rc == 0:
        ens = ensemble(results, args)
        print(f"[ensemble of {len(results)}] test mean Dice {ens['test']['dice']:.4f} HD95 {ens['test']['hd95']:.2f}"
              + (f"; flip TTA {ens[f'test_tta_{args.tta}']['dice']:.4f}" if args.tta != "none" else "")
              + "; members " + ", ".join(f"{m['run']} {m['test_dice']:.4f}" for m in ens["members"])
              + f" -> {ens['result_file']}")
    print(f"results in {RESULTS}")
    return rc


def ensemble(results: dict[str, dict], args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the finished runs together: each run's tested checkpoint (``best.pt`` selected on the VALIDATION
    volumes, or ``last.pt`` with ``--train-on-val``), their softmax probabilities averaged per slice
    (:func:`mambaseg.engine.evaluate_checkpoint` with a list), on the val and test volumes; no choice is made on
    the test volumes. Writes ``acdc_<model>_ensemble<tag>.json``."""
    from mambaseg.engine import evaluate_checkpoint

    names = list(results)
    ckpts = [results[n]["test"]["checkpoint"] for n in names]  # the checkpoint each run was tested with
    t0 = time.perf_counter()
    ev = {"val": evaluate_checkpoint(ckpts, split="val", device=args.device, batch_size=32),
          "test": evaluate_checkpoint(ckpts, split="test", device=args.device, batch_size=32)}
    if args.tta != "none":
        ev[f"test_tta_{args.tta}"] = evaluate_checkpoint(ckpts, split="test", device=args.device, batch_size=32,
                                                         tta=args.tta)
    model = "+".join(sorted({results[n]["model"] for n in names}))
    record = {
        "what": f"ensemble of {len(names)} ACDC runs ({', '.join(names)}): softmax probabilities of their "
                f"{_ckpt_name(args)} averaged per slice",
        "model": model,
        "ensemble": True,
        "recipe": results[names[0]]["recipe"],
        "train_on_val": bool(args.train_on_val),
        "selection_rule": f"each member's {_ckpt_name(args)}, selected by: {_selection(args)}; all members "
                          "averaged, none chosen or weighted on the test volumes",
        "members": [{"run": n, "member_overrides": results[n].get("member_overrides", []),
                     "best_epoch": results[n]["best_epoch"], "epochs": results[n]["epochs"],
                     "val_dice": results[n]["best_val"]["dice"], "test_dice": results[n]["test"]["dice"],
                     **({f"test_tta_{args.tta}_dice": results[n][f"test_tta_{args.tta}"]["dice"]}
                        if f"test_tta_{args.tta}" in results[n] else {}),
                     "result_file": Path(results[n]["result_file"]).name} for n in names],
        **ev,
        "eval_s": round(time.perf_counter() - t0, 1),
        "environment": environment(),
    }
    record["result_file"] = str(_save_json(f"acdc_{model}_ensemble{args.tag}.json", record, args))
    return record


def _save_json(name: str, record: dict, args: argparse.Namespace) -> Path:
    """Write a result JSON to the results folder, and a copy to ``--copy-to``."""
    import shutil

    path = write_json(name, record)
    if args.copy_to:
        Path(args.copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(args.copy_to) / path.name)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
