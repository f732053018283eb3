"""Run the OFFICIAL DermoMamba training script (hnkhai25/DermoMamba ``config/train.py``: PyTorch Lightning
``Trainer(**PARAMS).fit(Segmentor(DermoMamba()), train_dataset, test_dataset)``, with the data loaders of
``datasets/datasets.py``) on PH2, timed from the outside.

The official training config runs as released: PARAMS (200 epochs, ``precision=16`` i.e. fp16 mixed precision, cudnn
benchmark, a progress bar, TensorBoard logging every step, no sanity validation), ``Segmentor`` (Adam 1e-4,
ReduceLROnPlateau on ``val_dice``, Guide Fusion Loss, validation after every epoch), ``ModelCheckpoint`` (best
``val_dice``, weights only), and the loaders of ``datasets/datasets.py`` (batch 4, 2 workers, prefetch 8, drop_last;
val batch 1). The released code cannot run as is; the driver makes the smallest changes from the outside (no
official file is edited), each listed in the result's ``notes``:

- ``datasets/datasets.py`` loads ``./data/ISIC2018_train.npz`` at import and splits it with
  ``train_test_split(test_size=520, random_state=257)``: the driver runs in a folder whose ``data/`` holds PH2 in
  that format (``prepare_data.py``) and replaces ``sklearn.model_selection.train_test_split`` by our ph2_dev split
  (80 train / 20 val), so that both sides see the same images;
- ``ISICLoader.__getitem__`` returns only the image (the mask is dropped): the driver wraps it to also return the
  mask, computed by the official augmentation of that call and converted as the official lines do
  (``np.asarray(mask, np.int64)[np.newaxis]``);
- ``config/train.py`` uses ``train_dataset`` / ``test_dataset`` without defining them: the driver provides the two
  loaders of ``datasets/datasets.py`` under those names (``builtins``);
- ``module/VSSBlock.py`` calls ``F.silu`` without importing ``torch.nn.functional as F``: the driver sets
  ``module.VSSBlock.F``;
- ``module/model/proposed_net.py`` imports ``model.encoder``: ``.official/dermomamba/module`` is put on ``sys.path``.

Timing hooks: ``pytorch_lightning.Trainer`` is replaced by a subclass that appends one callback (epoch, batch and
validation time stamps, first optimizer step) and times ``save_checkpoint``; with ``--epochs`` it overrides
``max_epochs``. After the run (outside the timed wall) the driver also computes the pooled val DSC/IoU (one
confusion matrix over all val pixels, sigmoid > 0.5) of the last and of the best-``val_dice`` weights, comparable
with mambaseg's ``pooled`` metrics.

Usage (GPU machine; normally started by ``benchmarks/recipe_wall.py``)::

    python benchmarks/official/run_dermomamba.py --data /tmp/recipe_wall/ph2_official/dermomamba \\
        --work /tmp/recipe_wall/official_dermomamba --scan-build /tmp/recipe_wall/ss_build --result r.json
"""

from __future__ import annotations

import _harness as H  # first: stamps this process's start

import argparse  # noqa: E402
import builtins  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402


def patch_split(npz: Path) -> None:
    """``train_test_split`` -> the ph2_dev split stored by prepare_data.py (train first, ``n_train`` of them)."""
    import sklearn.model_selection as ms

    n_train = int(np.load(npz)["n_train"])

    def ph2_split(x: Any, y: Any, *_: Any, **__: Any) -> list:
        return [x[:n_train], x[n_train:], y[:n_train], y[n_train:]]

    ms.train_test_split = ph2_split


def patch_getitem(ds_mod: Any) -> None:
    """``ISICLoader.__getitem__`` returning ``(image, mask)``: the official getter runs unchanged; the mask that
    its augmentation produced is kept and converted as the official code does before its ``return image,``."""
    import torch
    from PIL import Image

    cls = ds_mod.ISICLoader
    official_getitem = cls.__getitem__
    official_augment = cls.augment

    def getitem(self: Any, idx: int) -> tuple:
        kept: dict[str, Any] = {}
        if self.transform:
            def augment(image: Any, mask: Any) -> tuple:
                image, mask = official_augment(self, image, mask)
                kept["mask"] = mask
                return image, mask

            self.augment = augment  # instance attribute: this call only
            try:
                out = official_getitem(self, idx)
            finally:
                del self.augment
            mask = kept["mask"]
        else:
            out = official_getitem(self, idx)
            mask = Image.fromarray(self.masks[idx])
        mask = np.asarray(mask, np.int64)
        return out[0], torch.from_numpy(mask[np.newaxis])

    cls.__getitem__ = getitem


def pooled(model: Any, loader: Any, amp: bool) -> dict[str, float]:
    """Pooled DSC/IoU over all pixels of ``loader`` (sigmoid > 0.5)."""
    import torch

    # Lightning moves the module back to the CPU when fit() ends; the official scan runs on CUDA only
    dev = torch.device("cuda") if torch.cuda.is_available() else next(model.parameters()).device
    model.to(dev)
    tp = fp = fn = 0
    model.eval()
    with torch.no_grad():
        for image, mask in loader:
            with torch.autocast(dev.type, dtype=torch.float16, enabled=amp and dev.type == "cuda"):
                logits = model(image.to(dev))
            pred = torch.sigmoid(logits.float()) > 0.5
            gt = mask.to(dev) > 0
            tp += int((pred & gt).sum())
            fp += int((pred & ~gt).sum())
            fn += int((~pred & gt).sum())
    return {"dsc": 2 * tp / max(2 * tp + fp + fn, 1), "iou": tp / max(tp + fp + fn, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="prepare_data.py's dermomamba/ (holds data/*.npz)")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder: the official code runs in it")
    ap.add_argument("--scan-build", default=None, help="folder holding the built selective_scan_cuda")
    ap.add_argument("--t0", type=float, default=None, help="parent's time.time() just before starting this process")
    ap.add_argument("--epochs", type=int, default=None, help="override max_epochs (200)")
    ap.add_argument("--precision", default=None, help="override PARAMS precision (official: 16); CPU smoke: 32")
    ap.add_argument("--result", default=None, help="write the result JSON here")
    ap.add_argument("--cpu-smoke", action="store_true", help="test on the CPU: stand-in scan")
    ap.add_argument("--cpu-smoke-tiny-model", action="store_true",
                    help="CPU smoke: replace DermoMamba by a 2-layer conv net (tests the loop, hooks, loss, "
                         "checkpointing; the real model at 192x256 needs many GB on the CPU)")
    args = ap.parse_args(argv)

    clock = H.RunClock(args.t0)
    notes: list[str] = []
    if args.cpu_smoke:
        notes += H.cpu_smoke_patches()
    notes.append(H.install_official_scan(args.scan_build, args.cpu_smoke))
    H.official_path("dermomamba", "module")
    work = args.work.resolve()
    (work / "data").mkdir(parents=True, exist_ok=True)
    npz = work / "data" / "ISIC2018_train.npz"
    src = args.data.resolve() / "data" / "ISIC2018_train.npz"
    if not npz.exists():
        try:
            os.link(src, npz)
        except OSError:
            shutil.copyfile(src, npz)
    os.chdir(work)  # the official code reads ./data/... and writes ./weight/..., ./lightning_logs/

    import torch
    import pytorch_lightning as pl

    patch_split(npz)
    notes.append("sklearn train_test_split(test_size=520, random_state=257) replaced by the ph2_dev split "
                 "(80 train / 20 val)")
    ds_mod = importlib.import_module("datasets.datasets")  # official: loads the npz, builds both DataLoaders
    patch_getitem(ds_mod)
    notes.append("ISICLoader.__getitem__ returned only the image: wrapped to also return its (augmented) mask")
    builtins.train_dataset = ds_mod.train_dataset  # type: ignore[attr-defined]
    builtins.test_dataset = ds_mod.test_dataset  # type: ignore[attr-defined]
    notes.append("config/train.py's undefined train_dataset/test_dataset: the loaders of datasets/datasets.py")
    vss = importlib.import_module("module.VSSBlock")
    if not hasattr(vss, "F"):
        vss.F = torch.nn.functional
        notes.append("module/VSSBlock.py uses F without importing it: module.VSSBlock.F = torch.nn.functional")
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
    if "verbose" not in inspect.signature(plateau.__init__).parameters:
        class PlateauAcceptingVerbose(plateau):  # type: ignore[misc, valid-type]
            def __init__(self, *a: Any, verbose: bool = False, **k: Any) -> None:
                super().__init__(*a, **k)

        torch.optim.lr_scheduler.ReduceLROnPlateau = PlateauAcceptingVerbose
        notes.append(f"config/segmentor.py passes verbose=True to ReduceLROnPlateau, which torch {torch.__version__} "
                     "no longer accepts: a subclass drops the argument (no LR-change messages)")
    if args.cpu_smoke and args.cpu_smoke_tiny_model:
        net = importlib.import_module("module.model.proposed_net")
        real = net.DermoMamba()
        notes.append(f"CPU smoke: DermoMamba built ({sum(p.numel() for p in real.parameters())} params), then "
                     "replaced by a 2-layer conv net for the training loop")
        del real

        class TinyNet(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                                torch.nn.Conv2d(8, 1, 3, padding=1))

            def forward(self, x: Any) -> Any:
                return self.body(x)

        net.DermoMamba = TinyNet
    clock.mark("imports_done")

    state: dict[str, Any] = {}

    class Clock(pl.Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            clock.mark("loop_start")
            clock.epoch_start()
            self.t = time.time()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            now = time.time()
            clock.add("time_data", now - self.t)
            self.t = now

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            clock.step_done()
            now = time.time()
            clock.add("time_step", now - self.t)
            self.t = now

        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            self.v = time.time()

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            clock.add("time_val", time.time() - self.v)

    base = pl.Trainer

    class TimedTrainer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **k: Any) -> None:
            state["official_params"] = {key: (v if isinstance(v, (int, float, str, bool)) else type(v).__name__
                                              if not isinstance(v, list) else [type(c).__name__ for c in v])
                                        for key, v in k.items()}
            if args.epochs is not None:
                k["max_epochs"] = args.epochs
            if args.precision is not None:
                k["precision"] = args.precision
            state["overrides"] = {"max_epochs": k.get("max_epochs"), "precision": k.get("precision")}
            k["callbacks"] = list(k.get("callbacks") or []) + [Clock()]
            super().__init__(*a, **k)
            state["trainer"] = self

        def save_checkpoint(self, *a: Any, **k: Any) -> Any:
            t = time.time()
            try:
                return super().save_checkpoint(*a, **k)
            finally:
                clock.add("time_ckpt", time.time() - t)

    pl.Trainer = TimedTrainer
    error = None
    try:
        importlib.import_module("config.train")  # official: builds the model and Trainer, runs trainer.fit
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        import traceback

        traceback.print_exc()
    H.sync()
    clock.end_loop()
    clock.final_metrics = time.time()
    trainer = state.get("trainer")
    metrics: dict[str, Any] = {"definition_official": "metric/metrics.py: val_dice = soft Dice of sigmoid "
                               "probabilities per batch (batch 1 = per image), averaged over the val images by "
                               "Lightning; val_iou = IoU at sigmoid > 0.5 per image, averaged"}
    if trainer is not None:
        metrics["last_epoch"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        ckpt_cb = trainer.checkpoint_callback
        metrics["best_val_dice"] = float(ckpt_cb.best_model_score) if ckpt_cb and ckpt_cb.best_model_score \
            is not None else None
        # after the timed wall: pooled metrics comparable with mambaseg's
        amp = str(trainer.precision).startswith("16")
        seg = trainer.lightning_module
        if seg is not None and error is None:
            try:  # after the timed wall: a failure here must not lose the timing
                metrics["pooled_last"] = pooled(seg, ds_mod.test_dataset, amp)
                if ckpt_cb is not None and ckpt_cb.best_model_path:
                    ck = torch.load(ckpt_cb.best_model_path, map_location="cpu", weights_only=False)
                    seg.load_state_dict(ck["state_dict"])
                    metrics["pooled_best"] = pooled(seg, ds_mod.test_dataset, amp)
                    metrics["best_epoch"] = int(ck.get("epoch", -1)) + 1
            except Exception as exc:  # noqa: BLE001 - reported in the result
                import traceback

                traceback.print_exc()
                metrics["pooled_error"] = f"{type(exc).__name__}: {exc}"
            metrics["definition_pooled"] = ("computed by this driver after the run: one confusion matrix over all "
                                            "val pixels, sigmoid > 0.5, at the training precision")
    result = {
        "side": "official",
        "model": "dermomamba",
        "code": "hnkhai25/DermoMamba config/train.py (Lightning Trainer.fit), config/segmentor.py, "
                "datasets/datasets.py",
        "commit": _commit("hnkhai25/DermoMamba"),
        "settings": {"official_params": state.get("official_params"), "overrides": state.get("overrides"),
                     "batch_size": getattr(ds_mod.train_dataset, "batch_size", None),
                     "num_workers": getattr(ds_mod.train_dataset, "num_workers", None),
                     "input_hw": list(np.load(npz)["image"].shape[1:3]), "optimizer": "Adam 1e-4",
                     "scheduler": "ReduceLROnPlateau(max, 0.5, 5) on val_dice", "loss": "Guide_Fusion_Loss",
                     "lightning": pl.__version__},
        **clock.summary(),
        "metrics": metrics,
        "pooled_dsc_final": (metrics.get("pooled_best") or {}).get("dsc"),
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
