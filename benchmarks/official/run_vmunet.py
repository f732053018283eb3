"""Run the OFFICIAL VM-UNet training script (JCruan519/VM-UNet ``train.py`` ``main(config)`` with its ISIC config
``configs/config_setting.py``) on PH2, timed from the outside.

Nothing of the official loop is rewritten: ``train.main`` runs as released (train_one_epoch, val_one_epoch every
epoch, ``best.pth`` on a lower val loss, ``latest.pth`` with optimizer and scheduler every epoch, then
test_one_epoch of the best weights on the val loader). The driver only
- overrides config values the script hard-codes: ``data_path`` (our PH2 layout from ``prepare_data.py``),
  ``work_dir`` (a temporary folder), ``model_config['load_ckpt_path'] = None`` (from scratch: no ImageNet VMamba
  weights, as our recipe), and ``epochs`` when ``--epochs`` is given;
- wraps, in the ``train`` module's namespace, ``DataLoader`` (time spent waiting for training batches),
  ``train_one_epoch`` / ``val_one_epoch`` / ``test_one_epoch``, ``get_optimizer`` (a step hook stamps the first
  optimizer step) and ``torch.save`` (checkpoint time);
- provides stand-ins for packages the GPU machine lacks, which the ISIC path imports but does not need, or needs
  only for logging: ``tensorboardX`` (-> ``torch.utils.tensorboard.SummaryWriter``), ``thop`` (``profile`` runs the
  one forward pass thop runs and reports 0 FLOPs), ``SimpleITK`` and ``medpy`` (Synapse-only helpers; empty).

Writes one JSON object (``--result``) with the run's clock (time to first step, per-epoch phases, wall time to the
final metrics) and the metrics the official code logs (pooled over all val pixels at threshold 0.5).

Usage (GPU machine; normally started by ``benchmarks/recipe_wall.py``)::

    python benchmarks/official/run_vmunet.py --data /tmp/recipe_wall/ph2_official/vmunet \\
        --work /tmp/recipe_wall/official_vmunet --scan-build /tmp/recipe_wall/ss_build --result r.json
"""

from __future__ import annotations

import _harness as H  # first: stamps this process's start

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

KEYS = ("loss", "miou", "f1_or_dsc", "accuracy", "specificity", "sensitivity")


def parse_metrics(msg: str) -> dict[str, float]:
    out = {}
    for key in KEYS:
        m = re.search(rf"\b{key}: ([-+0-9.eE]+|nan)", msg)
        if m:
            out[key] = float(m.group(1))
    return out


class Capture(logging.Handler):
    """Keeps the official logger's val/test lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.val: list[tuple[int, dict[str, float]]] = []
        self.test: dict[str, float] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("val epoch:"):
            m = re.match(r"val epoch: (\d+)", msg)
            self.val.append((int(m.group(1)) if m else -1, parse_metrics(msg)))
        elif msg.startswith("test of best model"):
            self.test = parse_metrics(msg)


def missing_package_shims(cpu_smoke: bool) -> list[str]:
    import torch

    notes = []
    if not H.have("tensorboardX"):
        from torch.utils.tensorboard import SummaryWriter

        H.stub_module("tensorboardX", SummaryWriter=SummaryWriter)
        notes.append("tensorboardX missing: stand-in module exposing torch.utils.tensorboard.SummaryWriter")
    if not H.have("thop"):
        def profile(model: Any, inputs: tuple, **_: Any) -> tuple[float, float]:
            # thop.profile runs one forward pass (eval mode, no grad) with counting hooks; do the pass, count nothing
            was_training = model.training
            model.eval()
            if not cpu_smoke:
                with torch.no_grad():
                    model(*inputs)
            model.train(was_training)
            return 0.0, float(sum(p.numel() for p in model.parameters()))

        H.stub_module("thop", profile=profile)
        notes.append("thop missing: stand-in profile() runs the same single no-grad forward pass and reports 0 FLOPs")
    for name in ("SimpleITK", "medpy"):
        if not H.have(name):
            H.stub_module(name, __path__=[])
            if name == "medpy":
                H.stub_module("medpy.metric", __path__=[])
            notes.append(f"{name} missing: empty stand-in (imported by utils.py, used only on the Synapse path)")
    return notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with train/ and val/ (prepare_data.py vmunet/)")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (checkpoints, logs)")
    ap.add_argument("--scan-build", default=None, help="folder holding the built selective_scan_cuda")
    ap.add_argument("--t0", type=float, default=None, help="parent's time.time() just before starting this process")
    ap.add_argument("--epochs", type=int, default=None, help="override config.epochs (300)")
    ap.add_argument("--result", default=None, help="write the result JSON here")
    ap.add_argument("--cpu-smoke", action="store_true", help="test on the CPU: stand-in scan, small inputs")
    ap.add_argument("--cpu-smoke-size", type=int, default=64)
    args = ap.parse_args(argv)

    clock = H.RunClock(args.t0)
    notes: list[str] = []
    if args.cpu_smoke:
        notes += H.cpu_smoke_patches()
    notes.append(H.install_official_scan(args.scan_build, args.cpu_smoke))
    notes += missing_package_shims(args.cpu_smoke)
    H.official_path("vmunet")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # the official code writes relative paths

    import torch

    import train as official  # type: ignore[import-not-found]  # JCruan519/VM-UNet train.py

    clock.mark("imports_done")
    config = official.setting_config
    config.data_path = str(args.data.resolve()) + "/"
    config.work_dir = str(work / "results") + "/"
    config.model_config = dict(config.model_config, load_ckpt_path=None)
    if args.epochs is not None:
        config.epochs = args.epochs
    overrides = {"data_path": config.data_path, "work_dir": config.work_dir, "model_config.load_ckpt_path": None,
                 "epochs": config.epochs}
    if args.cpu_smoke:
        from torchvision import transforms  # the stand-in where torchvision is missing

        import utils as U  # type: ignore[import-not-found]

        s = args.cpu_smoke_size
        config.train_transformer = transforms.Compose([U.myNormalize(config.datasets, train=True), U.myToTensor(),
                                                       U.myResize(s, s)])
        config.test_transformer = transforms.Compose([U.myNormalize(config.datasets, train=False), U.myToTensor(),
                                                      U.myResize(s, s)])
        overrides["cpu_smoke_transforms"] = f"normalize, to-tensor, resize {s} (no augmentation)"

    # --- timing hooks (wrappers in the official module's namespace; no official file is edited) ---
    base_loader = official.DataLoader

    class TimedLoader(base_loader):  # type: ignore[misc, valid-type]
        def __iter__(self):  # the training loader only (shuffle=True); val batches count as validation
            it = super().__iter__()
            return H.TimedIter(it, clock) if getattr(self, "_rw_train", False) else it

    def make_loader(*a: Any, **k: Any) -> Any:
        loader = TimedLoader(*a, **k)
        loader._rw_train = bool(k.get("shuffle"))
        return loader

    official.DataLoader = make_loader

    train_one_epoch = official.train_one_epoch

    def timed_train(*a: Any, **k: Any) -> Any:
        clock.mark("loop_start")
        clock.epoch_start()
        data_before, t = clock.cur["time_data"], time.time()
        try:
            return train_one_epoch(*a, **k)
        finally:
            clock.add("time_step", time.time() - t - (clock.cur["time_data"] - data_before))

    official.train_one_epoch = timed_train
    official.val_one_epoch = H.timed(official.val_one_epoch, clock, "time_val")
    torch.save = H.timed(torch.save, clock, "time_ckpt")
    test_one_epoch = official.test_one_epoch

    def timed_test(*a: Any, **k: Any) -> Any:
        clock.end_loop()
        r = test_one_epoch(*a, **k)
        H.sync()
        clock.final_metrics = time.time()
        return r

    official.test_one_epoch = timed_test
    get_optimizer = official.get_optimizer

    def hooked_optimizer(*a: Any, **k: Any) -> Any:
        opt = get_optimizer(*a, **k)
        opt.register_step_post_hook(lambda *_: clock.step_done())
        return opt

    official.get_optimizer = hooked_optimizer
    cap = Capture()
    logging.getLogger("train").addHandler(cap)

    error = None
    try:
        official.main(config)
    except Exception as exc:  # report what ran, then fail
        error = f"{type(exc).__name__}: {exc}"
        import traceback

        traceback.print_exc()
    if clock.final_metrics is None:
        clock.end_loop()
        clock.final_metrics = time.time()
    best = sorted((work / "results" / "checkpoints").glob("best-epoch*.pth"))
    best_epoch = None
    if best:
        m = re.match(r"best-epoch(\d+)-loss([0-9.]+)\.pth", best[-1].name)
        best_epoch = int(m.group(1)) if m else None
    last_val = next(((e, m) for e, m in reversed(cap.val) if "f1_or_dsc" in m), (None, {}))
    result = {
        "side": "official",
        "model": "vmunet",
        "code": "JCruan519/VM-UNet train.py main(config), configs/config_setting.py (ISIC config)",
        "commit": _commit("JCruan519/VM-UNet"),
        "settings": {"epochs": config.epochs, "batch_size": config.batch_size, "input_hw": [config.input_size_h,
                     config.input_size_w], "opt": config.opt, "lr": config.lr, "weight_decay": config.weight_decay,
                     "sch": config.sch, "T_max": config.T_max, "amp": config.amp, "num_workers": config.num_workers,
                     "val_interval": config.val_interval, "criterion": type(config.criterion).__name__},
        "overrides": overrides,
        **clock.summary(),
        "metrics": {
            "definition": "official engine.py: confusion matrix over all val pixels, prediction >= 0.5 (pooled)",
            "test_of_best_val_loss_model": cap.test,
            "best_val_loss_epoch": best_epoch,
            "last_metrics_epoch": last_val[0],
            "last_metrics": last_val[1] or None,
            "val_loss_last": cap.val[-1][1].get("loss") if cap.val else None,
        },
        "pooled_dsc_final": (cap.test or {}).get("f1_or_dsc"),
        "notes": notes,
        "error": error,
    }
    H.write_result(result, args.result)
    return 1 if error else 0


def _commit(repo: str) -> str | None:
    try:
        for line in (H.OFFICIAL / "COMMITS.txt").read_text().splitlines():
            name, sha = line.split()
            if name == repo:
                return sha
    except (OSError, ValueError):
        pass
    return None


if __name__ == "__main__":
    sys.exit(main())
