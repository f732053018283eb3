"""K-fold cross-validation: train the folds, save out-of-fold predictions, score them pooled.

Layout of a cross-validation root ``ROOT`` (``--out``)::

    ROOT/splits_final.json            the folds (mambaseg.data.folds), written once, reused
    ROOT/fold_i/split.json            fold i's train/val ids (its data.split_file)
    ROOT/fold_i/...                   a normal run directory (checkpoints/, metrics.json, train.log, ...)
    ROOT/fold_i/oof/<ckpt>/masks/<id>.png           held-out predictions (label-map pixel values)
    ROOT/fold_i/oof/<ckpt>/probabilities/<id>.npz   their probabilities, float16 ("probabilities": (C', H, W),
                                                    C' = 1 foreground probability for binary tasks, else softmax)
    ROOT/fold_i/oof/<ckpt>_tta_<tta>/...            the same made with test-time augmentation (``--tta flip``)
    ROOT/cv_metrics.json              written by evaluate_cv: pooled + per-case metrics of all held-out cases

Volumetric layouts (ACDC, Synapse, nnU-Net raw, ``volcache``; a case is a volume, one patient's ``_frameNN`` phases
are held out together, see :mod:`mambaseg.data.folds`) keep instead::

    ROOT/fold_i/oof/<ckpt>/masks/<id>.npz           "label": uint8 (D, H, W) class indices at the size of the
                                                    volume's ground truth, with the volume's "spacing" (D, H, W) and
                                                    "affine" (a NIfTI source's) where it has them, as mambaseg
                                                    predict writes npz (:func:`mambaseg.inference.volume
                                                    .write_prediction`); roots saved before hold "labels" only
    ROOT/fold_i/oof/<ckpt>/probabilities/<id>.npz   "probabilities": float16 (C, D, h, w) softmax at the network
                                                    size (labels = argmax per slice, then nearest-neighbour zoom, as
                                                    :func:`mambaseg.inference.volume.predict_volume` does)

and are scored per volume: per-class Dice/IoU/HD95/NSD of each volume; ``per_case_dice`` (the mean over volumes
of each class, then over classes) is the number ``mambaseg evaluate`` reports for a volumetric split.

``<ckpt>`` is ``last`` and ``best``: ``last`` = the final weights (no selection), ``best`` = the checkpoint chosen on
the fold's validation split, which IS the held-out fold, so its out-of-fold score is optimistically biased (the
selection used the cases it reports); ``cv_metrics.json`` states which one was scored and this rule. Predictions are
made at the resolution of the stored ground truth: the original image size for folder datasets, the cached
(network) size for ``npz2d`` caches. Scoring reads the saved predictions and each fold's ``config.yaml``, not the
checkpoints, so a root whose checkpoints were removed (or that was copied without them) can still be scored.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mambaseg.configs import RunConfig
from mambaseg.data.folds import (
    FOLDS_FILE,
    fold_split_file,
    iter_cases,
    load_folds,
    pool_groups,
    resolve_folds,
)
from mambaseg.data.layouts import case_pool, dataset_folds, detect_layout, layout_of
from mambaseg.inference.ensemble import flip_dims, tta_mode
from mambaseg.utils.files import atomic_write_json, atomic_write_npz

__all__ = ["OOF_CHECKPOINTS", "SELECTION_RULES", "cv_record", "evaluate_cv", "fold_complete", "fold_config",
           "fold_label", "folds_label", "oof_dir", "predict_oof", "resolve_cv_folds", "train_folds"]

OOF_CHECKPOINTS = ("last", "best")
SELECTION_RULES = {
    "last": "final weights of each fold (no checkpoint selection; every held-out case is unseen by training and "
            "selection)",
    "best": "checkpoint of each fold chosen on its validation split = the held-out fold itself (optimistic: the "
            "selection saw the cases it reports)",
}


def fold_label(i: int, k: int) -> str:
    """How console lines and messages name fold ``i`` of ``k``: ``"fold 0 of 3 (0-based)"`` (folds are numbered
    0..k-1, as ``--fold`` and the ``fold_<i>`` folders are)."""
    return f"fold {i} of {k} (0-based)"


def folds_label(folds: Sequence[int], k: int) -> str:
    """Several folds of ``k`` in words: ``"fold(s) [1, 2] of 3 (0-based)"``."""
    return f"fold(s) {list(folds)} of {k} (0-based)"


def oof_dir(run_dir: str | Path, which: str, tta: str | None = None) -> Path:
    """Where fold ``run_dir`` keeps the out-of-fold predictions of its ``which`` checkpoint: ``oof/<which>``, or
    ``oof/<which>_tta_<tta>`` for predictions made with test-time augmentation."""
    return Path(run_dir) / "oof" / (which if tta_mode(tta) == "none" else f"{which}_tta_{tta}")


def _wanted(checkpoints: Sequence[str], tta: str | None) -> list[tuple[str, str | None]]:
    """(checkpoint, tta) of every out-of-fold prediction a fold must have: each checkpoint plain and, with a TTA
    mode, also with it."""
    checkpoints = tuple(checkpoints)
    if not checkpoints or any(c not in OOF_CHECKPOINTS for c in checkpoints):
        raise ValueError(f"checkpoints must be a non-empty selection of {OOF_CHECKPOINTS}, got {checkpoints!r}")
    return [(w, t) for w in checkpoints for t in ([None] if tta_mode(tta) == "none" else [None, tta])]


def fold_complete(run_dir: str | Path, checkpoints: Sequence[str] = OOF_CHECKPOINTS, tta: str | None = None) -> bool:
    """Whether fold ``run_dir`` finished training (``metrics.json``) and saved every wanted out-of-fold prediction
    (``oof.json`` of each of ``checkpoints``, plain and, with ``tta``, with that TTA)."""
    run_dir = Path(run_dir)
    return (run_dir / "metrics.json").is_file() and all(
        (oof_dir(run_dir, w, t) / "oof.json").is_file() for w, t in _wanted(checkpoints, tta))


def _parse_fold(fold: int | str | Sequence[int], k: int) -> list[int]:
    if isinstance(fold, (list, tuple)):  # several folds, in this order
        return [i for f in fold for i in _parse_fold(f, k)]
    if str(fold) == "all":
        return list(range(k))
    try:
        i = int(fold)
    except (TypeError, ValueError):
        raise ValueError(f"--fold must be an integer in 0..{k - 1} or 'all', got {fold!r}") from None
    if not 0 <= i < k:
        raise ValueError(f"--fold {i} is out of range for --folds {k} (0..{k - 1} or 'all')")
    return [i]


def fold_config(cfg: RunConfig, root: str | Path, fold: int, split_file: Path) -> RunConfig:
    """The config of fold ``fold``: run directory ``ROOT/fold_<fold>``, data split = that fold's split file, and
    ``data.train_splits`` = ``[train]`` (the fold's training cases already include those of every split in the
    pool; ``train_folds`` says so when a recipe asked for more)."""
    c = copy.deepcopy(cfg)
    c.train.out = str(Path(root) / f"fold_{fold}")
    c.data.split_file = str(split_file)
    c.data.train_splits = ["train"]
    return c


def resolve_cv_folds(cfg: RunConfig, folds: int) -> dict[str, Any]:
    """The folds of the cross-validation rooted at ``cfg.train.out`` over the train + val cases of ``cfg.data``:
    ``ROOT/splits_final.json`` read and checked, or drawn with ``data.split_seed`` and written."""
    if cfg.data.path is None:
        raise ValueError("cross-validation needs a dataset: pass --data PATH")
    layout = cfg.data.layout or detect_layout(cfg.data.path)
    pool = case_pool(cfg.data.path, layout)
    return resolve_folds(cfg.train.out, pool, k=folds, seed=cfg.data.split_seed, data=str(cfg.data.path),
                         layout=layout, groups=pool_groups(pool), given=dataset_folds(cfg.data.path, layout))


def train_folds(cfg: RunConfig, *, folds: int, fold: int | str | Sequence[int] = "all", resume: bool = False,
                console: Any = None, show_progress: bool = True, tta: str | None = None, device: str | None = None,
                checkpoints: Sequence[str] = OOF_CHECKPOINTS) -> list[Any]:
    """Train fold(s) of a ``folds``-fold cross-validation rooted at ``cfg.train.out`` and save their out-of-fold
    predictions.

    The folds come from ``ROOT/splits_final.json`` (made from the train + val cases with ``data.split_seed`` the first
    time). With ``fold="all"`` (or a list of folds) the folds run in sequence; a fold that already has its
    ``metrics.json`` and its out-of-fold predictions is skipped, an unfinished one is continued when ``resume``
    (refused otherwise). With ``tta`` (``"flip"``) the held-out cases are also predicted with that test-time
    augmentation (``oof/<ckpt>_tta_<tta>``); a finished fold that lacks those predictions gets them without training
    again. ``checkpoints`` names the checkpoints whose out-of-fold predictions are made (default both ``last`` and
    ``best``; ``("last",)`` for a root whose finished folds were copied without their checkpoints before every
    prediction of ``best`` was written: those cannot be made any more, and only ``last`` is the unselected result).

    Returns:
        The :class:`~mambaseg.engine.TrainResult` of each fold trained now.
    """
    from mambaseg.engine.trainer import train

    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ValueError(f"--folds must be an integer >= 2, got {folds!r}")
    todo = _parse_fold(fold, folds)
    flip_dims(tta)  # an unknown mode fails before any fold trains
    root = Path(cfg.train.out)
    record = resolve_cv_folds(cfg, folds)
    wanted = _wanted(checkpoints, tta)
    if list(cfg.data.train_splits) != ["train"] and console is not None:
        console.print(f"data.train_splits={list(cfg.data.train_splits)}: each fold trains on every case of the pool "
                      "that it does not hold out (train_splits=[train] in the folds)", highlight=False)
    results = []
    for i in todo:
        fcfg = fold_config(cfg, root, i, fold_split_file(root, record, i))
        run_dir = Path(fcfg.train.out)
        if fold_complete(run_dir, checkpoints, tta):
            if console is not None:
                console.print(f"{fold_label(i, folds)}: already trained and predicted ({run_dir}); skipped",
                              highlight=False)
            continue
        has_run = (run_dir / "checkpoints" / "last.pt").is_file()
        finished = (run_dir / "metrics.json").is_file()
        if console is not None:
            n_tr, n_va = len(record["folds"][i]["train"]), len(record["folds"][i]["val"])
            console.print(f"{fold_label(i, folds)}: {n_tr} training cases, {n_va} held out -> {run_dir}",
                          highlight=False)
        rank = int(os.environ.get("RANK", "0"))  # under torchrun only the main process predicts
        if not finished:
            if has_run and not resume:
                raise ValueError(f"{run_dir} holds an unfinished fold; pass --resume to continue it")
            results.append(train(fcfg, resume=True if has_run else None, console=console,
                                 show_progress=show_progress))
            rank = results[-1].rank
        if rank == 0:
            for which, t in wanted:
                if not (oof_dir(run_dir, which, t) / "oof.json").is_file() or not finished:
                    predict_oof(run_dir, which, tta=t, device=device or fcfg.train.device)
    return results


def _held_out_dataset(cfg: RunConfig, path: str, layout: str, ids: Sequence[str], in_chans: int = 3,
                      split_file: str | Path | None = None) -> Any:
    """The held-out cases of a fold, read at their stored resolution: a 2-D dataset for ``folder2d``/``npz2d``,
    else (volumetric layouts) the fold's ``val`` :class:`~mambaseg.data.volumetric.VolumeDataset`, opened by the
    layout with the fold's ``split_file``."""
    if layout == "folder2d":
        from mambaseg.data.folder2d import FolderDataset2D

        return FolderDataset2D(path, "val", image_size=tuple(cfg.data.image_size), augment=False, normalization=None,
                               binary=cfg.data.binary, label_values=None if cfg.data.binary else cfg.data.label_values,
                               ids=list(ids), in_chans=in_chans)
    if layout == "npz2d":
        from mambaseg.data.cache import ArrayDataset2D
        from mambaseg.data.folds import take_cases

        with np.load(path, allow_pickle=False) as z:
            part = take_cases({k: z[k] for k in z.files}, list(ids), path)
        return ArrayDataset2D(part["images"], part["masks"], [str(s) for s in part["ids"]],
                              image_size=tuple(int(s) for s in part["images"].shape[1:3]), augment=False)
    from mambaseg.data.layouts import open_task
    from mambaseg.data.volumetric import VolumeDataset

    if split_file is None:
        raise ValueError(f"the held-out volumes of a {layout!r} fold need its split file")
    c = copy.deepcopy(cfg)
    c.data.split_file, c.data.augment, c.data.train_splits = str(split_file), False, ["train"]
    volumes = open_task(path, c, splits=("val",), layout=layout).datasets["val"]
    if not isinstance(volumes, VolumeDataset):
        raise ValueError(f"cross-validation supports folder2d, npz2d and volumetric layouts, not {layout!r}")
    if sorted(volumes.ids) != sorted(ids):
        raise ValueError(f"{split_file}: its held-out cases differ from the fold's in {FOLDS_FILE}")
    return volumes


def predict_oof(run_dir: str | Path, which: str = "last", *, data: str | None = None, tta: str | None = None,
                device: str = "auto", batch_size: int = 4) -> Path:
    """Predict the held-out cases of one fold with its ``which`` checkpoint and write ``RUN/oof/<which>/``.

    Writes ``masks/<id>.png`` (label-map pixel values; a volume's ``masks/<id>.npz`` with its geometry, as
    ``mambaseg predict`` writes npz), ``probabilities/<id>.npz`` (float16) and ``oof.json`` (ids, checkpoint, epoch,
    tta, resolution, input channels) to :func:`oof_dir` and returns that folder.
    """
    from mambaseg.checkpoint import load_checkpoint
    from mambaseg.configs import config_from_dict
    from mambaseg.data.splits import read_split_file
    from mambaseg.inference.ensemble import load_ensemble
    from mambaseg.inference.volume import write_prediction

    if which not in OOF_CHECKPOINTS:
        raise ValueError(f"which must be one of {OOF_CHECKPOINTS}, got {which!r}")
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoints" / f"{which}.pt"
    out = oof_dir(run_dir, which, tta)
    if not ckpt_path.is_file():
        if (run_dir / "metrics.json").is_file() and not (out / "oof.json").is_file():
            hint = f"run without tta={tta!r} or " if tta_mode(tta) != "none" else ""
            raise FileNotFoundError(
                f"{run_dir} is trained (metrics.json) but neither {out}/oof.json nor checkpoints/{which}.pt exists "
                f"(copied without its checkpoints?): {hint}leave {which!r} out of the checkpoints to predict, or "
                f"delete {run_dir} to train the fold again")
        raise FileNotFoundError(f"{ckpt_path} does not exist; train the fold first")
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    cfg = config_from_dict(ckpt.get("config") or {})
    path = str(data or cfg.data.path)
    if not cfg.data.split_file:
        raise ValueError(f"{ckpt_path}: not a cross-validation fold (no data.split_file in its config)")
    split = Path(cfg.data.split_file)
    if not split.is_file():
        split = run_dir / "split.json"
    recorded = (ckpt.get("task") or {}).get("layout")
    layout = layout_of(path, recorded) if data else recorded or detect_layout(path)
    pool = case_pool(path, layout)
    ids = read_split_file(split, pool)["val"]
    in_chans = int((ckpt.get("task") or {}).get("in_chans") or 3)
    dataset = _held_out_dataset(cfg, path, layout, ids, in_chans, split)
    predictor = load_ensemble([ckpt_path], tta=tta, device=device)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "probabilities").mkdir(parents=True, exist_ok=True)
    volumetric = _is_volumes(dataset)
    if volumetric:
        for vol in dataset:
            labels, prob = _volume_oof(predictor, vol, batch_size=batch_size)
            write_prediction(out / "masks" / f"{vol.id}.npz", labels, vol)  # "label" + the volume's geometry
            atomic_write_npz(out / "probabilities" / f"{vol.id}.npz", probabilities=prob)
    cases = [] if volumetric else list(iter_cases(dataset))
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        logits = predictor.predict_logits([img for _, img, _ in chunk])
        for (case, _, _), lg in zip(chunk, logits):
            predictor.write_mask(lg, out / "masks" / f"{case}.png", out / "probabilities" / f"{case}.npz")
    atomic_write_json(out / "oof.json", {
        "checkpoint": str(ckpt_path), "epoch": ckpt.get("epoch"), "which": which, "rule": SELECTION_RULES[which],
        "tta": tta or "none", "ids": list(ids), "data": path, "layout": layout, "in_chans": in_chans,
        "resolution": _resolution(layout, volumetric),
        "label_map": predictor.label_map,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return out


def _is_volumes(dataset: Any) -> bool:
    from mambaseg.data.volumetric import VolumeDataset

    return isinstance(dataset, VolumeDataset)


def _volume_oof(predictor: Any, vol: Any, batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A held-out volume's labels at its own size and float16 probabilities at the network size, by the fold's
    predictor (:func:`mambaseg.inference.volume.predict_volume_probabilities`)."""
    from mambaseg.inference.volume import predict_volume_probabilities

    return predict_volume_probabilities(predictor.model, vol, image_size=predictor.image_size,
                                        normalization=predictor.normalization, batch_size=batch_size,
                                        device=predictor.device, amp_dtype=predictor.amp_dtype)


def resize_probabilities(prob: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Probabilities ``(..., h, w)`` (a 2-D case's (C, h, w), a volume's (C, D, h, w)) resized to ``size`` (H, W),
    each plane bilinearly, as the predictor resizes logits back to an image's own size."""
    import torch
    import torch.nn.functional as F

    size = tuple(int(s) for s in size)
    flat = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32)).reshape(1, -1, *prob.shape[-2:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*prob.shape[:-2], *size).numpy()


def _labels_for_truth(prob: np.ndarray, shape: Sequence[int], volumetric: bool) -> np.ndarray:
    """Labels of one case's probabilities at its ground truth's ``shape``: a 2-D case's (C, h, w) resized bilinearly
    when its size differs, then the one labelling rule; a volume's (C, D, h, w) labelled per slice and zoomed
    (:func:`volume_labels_from_probabilities`)."""
    import torch

    from mambaseg.metrics import labels_from_probabilities

    if volumetric:
        return volume_labels_from_probabilities(prob, tuple(shape[1:]))
    if tuple(prob.shape[-2:]) != tuple(shape):
        prob = resize_probabilities(prob, shape)
    return labels_from_probabilities(torch.from_numpy(prob)[None])[0].numpy()


def _labels_at_truth_size(path: Path, shape: Sequence[int], volumetric: bool) -> np.ndarray:
    """:func:`_labels_for_truth` of a fold's saved out-of-fold probabilities (``path``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the fold's saved prediction has another size than the ground "
                                f"truth {tuple(shape)}, and scoring it at that size needs the saved probabilities")
    with np.load(path, allow_pickle=False) as z:
        return _labels_for_truth(z["probabilities"].astype(np.float32), shape, volumetric)


def mean_probabilities(members: dict[Any, np.ndarray], volumetric: bool) -> np.ndarray:
    """The mean of one case's saved probabilities over an ensemble's members (keyed by their file, for messages).

    Members trained at different sizes (a mix of recipes, or of caches) saved theirs at different sizes: a 2-D case's
    (C, h, w) at its cache's size (at the image's own size when trained on image files), a volume's (C, D, h, w) at
    the network size. Each is resized to the largest h and w (bilinear, per plane) before the mean, as
    :class:`~mambaseg.inference.ProbabilityEnsemble` resizes a smaller member's logits to the ensemble's size.

    Raises:
        ValueError: naming the file whose array cannot be averaged with the first member's (another number of
            classes, or of slices).
    """
    (first, ref), *_ = members.items()
    for fp, p in members.items():
        if p.shape[:-2] != ref.shape[:-2] or p.ndim != ref.ndim:
            raise ValueError(f"{fp}: probabilities of shape {p.shape} cannot be averaged with {first}'s "
                             f"{ref.shape}" + (" (classes and slices must agree)" if volumetric else
                                               " (classes must agree)"))
    size = (max(p.shape[-2] for p in members.values()), max(p.shape[-1] for p in members.values()))
    total = np.zeros(ref.shape[:-2] + size, dtype=np.float32)
    for p in members.values():
        total += p if p.shape[-2:] == size else resize_probabilities(p, size)
    return total / len(members)


def volume_labels_from_probabilities(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, D, h, w) probabilities at the network size -> (D, H, W) labels at ``size``: the one labelling rule
    (:func:`mambaseg.metrics.labels_from_probabilities`) per slice, then a nearest-neighbour zoom, as
    :func:`~mambaseg.inference.volume.predict_volume` does with logits."""
    import torch

    from mambaseg.data.volumetric import zoom_labels
    from mambaseg.metrics import labels_from_probabilities

    lab = labels_from_probabilities(torch.from_numpy(np.moveaxis(probs, 1, 0).astype(np.float32))).numpy()
    return np.stack([zoom_labels(s, size) for s in lab])


def _fold_setup(run_dir: Path, which: str) -> tuple[RunConfig, int]:
    """A fold's resolved config (its ``config.yaml``, written by the trainer before the first step) and input channels
    (from its saved predictions' ``oof.json``, else the checkpoint's task, else 3)."""
    from mambaseg.configs import load_config

    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir / 'config.yaml'} does not exist: {run_dir} is not a fold's run directory")
    oof_json = oof_dir(run_dir, which) / "oof.json"
    in_chans = (json.loads(oof_json.read_text()) if oof_json.is_file() else {}).get("in_chans")
    ckpt_path = run_dir / "checkpoints" / f"{which}.pt"
    if in_chans is None and ckpt_path.is_file():  # predictions saved before oof.json recorded it
        from mambaseg.checkpoint import load_checkpoint

        in_chans = (load_checkpoint(ckpt_path, map_location="cpu").get("task") or {}).get("in_chans")
    return load_config(run_dir / "config.yaml"), int(in_chans or 3)


def evaluate_cv(root: str | Path | Sequence[str | Path], *, which: str = "last", data: str | None = None,
                out: str | Path | None = None, tta: str | None = None, device: str = "auto", spacing: Any = None,
                nsd_tolerance: float = 2.0, empty_policy: str = "auto",
                postprocess: str | Sequence[str] | None = None) -> dict[str, Any]:
    """Score the pooled out-of-fold predictions of every fold of ``root`` against the ground truth.

    Several roots (cross-validations of the same cases with the same folds, e.g. one recipe trained with several
    seeds) are scored as an ensemble: each held-out case's saved probabilities are averaged over the roots and turned
    into labels by the one rule of :func:`mambaseg.metrics.labels_from_probabilities` (nnU-Net chooses ensembles of
    configurations the same way). Every member must have saved the predictions scored (``oof/<which>`` or, with
    ``tta``, ``oof/<which>_tta_<tta>``); ``out`` is then required.

    Args:
        root: cross-validation root (holds ``splits_final.json`` and ``fold_*/``), or a list of them (ensemble).
        which: ``last`` or ``best`` checkpoint's predictions (see :data:`SELECTION_RULES`).
        data: the dataset (default: the one recorded in ``splits_final.json``), read by its own layout: e.g. the
            image folder a cache the folds trained on was built from. 2-D predictions saved at another size than
            a ground truth (the cache's) are scored at the ground truth's: their saved probabilities resized
            bilinearly, then the one 0.5/argmax rule.
        out: where to write ``cv_metrics.json`` (default ``root``).
        tta: ``flip``: score the mirroring-TTA predictions, read from ``oof/<which>_tta_flip`` where a fold saved
            them (``train --folds K --tta flip``), else made now from the fold's checkpoint (in memory);
            default: score the saved ``oof/<which>/masks``.
        spacing, nsd_tolerance, empty_policy: see :func:`mambaseg.metrics.score.score_cases` (``empty_policy``:
            ``"transunet"`` by default, the rule ``evaluate`` and training's validation use; ``"nan"`` or ``"one"``).
        postprocess: post-processing of every predicted mask before scoring
            (:func:`mambaseg.inference.postprocess.postprocess_labels`; recorded in the result). Choosing it by this
            score is a selection on the scored cases.

    Returns:
        The ``cv_metrics.json`` content: pooled and per-case metrics, per-fold Dice, worst cases, selection rule.
    """
    from mambaseg.data.files import mask_to_labels, read_mask
    from mambaseg.inference.ensemble import load_ensemble
    from mambaseg.inference.postprocess import parse_postprocess
    from mambaseg.inference.volume import read_label_volume

    steps = parse_postprocess(postprocess)
    roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
    if not roots:
        raise ValueError("evaluate_cv needs at least one cross-validation root")
    if which not in OOF_CHECKPOINTS:
        raise ValueError(f"--oof must be one of {OOF_CHECKPOINTS}, got {which!r}")
    if len(roots) > 1:
        return _evaluate_cv_ensemble(roots, which=which, data=data, out=out, tta=tta, spacing=spacing,
                                     nsd_tolerance=nsd_tolerance, empty_policy=empty_policy, steps=steps)
    root = roots[0]
    record, path, layout = cv_record(root, data)
    folds = record["folds"]
    saved = [(oof_dir(root / f"fold_{i}", which, tta) / "oof.json").is_file() for i in range(len(folds))]
    ckpts = [root / f"fold_{i}" / "checkpoints" / f"{which}.pt" for i in range(len(folds))]
    if tta_mode(tta) != "none":
        missing = [i for i, (ok, c) in enumerate(zip(saved, ckpts)) if not ok and not c.is_file()]
        if missing:
            raise FileNotFoundError(f"{root}: {folds_label(missing, len(folds))} have neither saved {tta}-TTA "
                                    f"predictions ({oof_dir('fold_i', which, tta)}) nor checkpoints/{which}.pt to "
                                    "make them")
    else:
        missing = [i for i in range(len(folds)) if not (root / f"fold_{i}" / "metrics.json").is_file()]
        if missing:
            raise FileNotFoundError(f"{root}: {folds_label(missing, len(folds))} have not finished training (no "
                                    f"metrics.json); train them (mambaseg train --folds {len(folds)} --fold all "
                                    f"--out {root}) first")
    cfg, in_chans = _fold_setup(root / "fold_0", which)
    label_values = None if cfg.data.binary else cfg.data.label_values
    held_out, volumetric, num_classes, class_names = _held_out_folds(cfg, path, layout, record, in_chans, root)

    def cases() -> Any:
        for i in range(len(folds)):
            predictor = (load_ensemble([ckpts[i]], tta=tta, device=device)
                         if tta_mode(tta) != "none" and not saved[i] else None)
            oof = oof_dir(root / f"fold_{i}", which, tta) / "masks"
            for case, gt, image, own in _truths(held_out(i)):  # own: the case's voxel spacing
                if predictor is not None:  # TTA predictions not saved: made now
                    pred = _volume_oof(predictor, image)[0] if volumetric else predictor.predict(image)
                    yield case, pred, gt, i, own
                    continue
                mp = oof / (f"{case}.npz" if volumetric else f"{case}.png")
                if not mp.is_file():
                    raise FileNotFoundError(f"{mp} is missing: predict the held-out cases of "
                                            f"{fold_label(i, len(folds))} first "
                                            f"(mambaseg train --folds {len(folds)} --fold {i} --resume "
                                            f"--out {root})")
                if volumetric:  # "label" (or "labels", written before the predict writer was used)
                    pred = read_label_volume(mp)[0]
                else:
                    pred = mask_to_labels(read_mask(mp), binary=cfg.data.binary, label_values=label_values, path=mp)
                if pred.shape != gt.shape:  # predicted at the cached size, scored at the truth's
                    pred = _labels_at_truth_size(oof.parent / "probabilities" / f"{case}.npz", gt.shape, volumetric)
                yield case, pred, gt, i, own

    summary = _score_oof(cases(), num_classes=num_classes, spacing=spacing, nsd_tolerance=nsd_tolerance,
                         empty_policy=empty_policy, steps=steps, class_names=class_names)
    summary = {"root": str(root), "data": path, "layout": layout, "k": len(folds), "seed": record.get("seed"),
               "checkpoint": which, "selection_rule": SELECTION_RULES[which], "tta": tta or "none",
               **_unit(layout, volumetric), **summary}
    atomic_write_json(Path(out or root) / "cv_metrics.json", summary)
    return summary


def _split_of(root: Path, record: dict[str, Any], i: int) -> Path:
    """Fold ``i``'s split file for scoring: the one in its run directory when it holds out the fold's cases (a root
    may be read-only), else written from ``splits_final.json``."""
    from mambaseg.data.files import DatasetError
    from mambaseg.data.splits import read_split_ids

    path = root / f"fold_{i}" / "split.json"
    try:
        if sorted(read_split_ids(path)["val"]) == sorted(map(str, record["folds"][i]["val"])):
            return path
    except DatasetError:
        pass
    return fold_split_file(root, record, i)


def _held_out_folds(cfg: RunConfig, path: str, layout: str, record: dict[str, Any], in_chans: int,
                    root: Path) -> tuple[Any, bool, int, list[str] | None]:
    """``held_out(i)``, fold ``i``'s held-out dataset (fold 0's opened once, here), whether its cases are volumes,
    and the class count and names scored."""
    folds = record["folds"]

    def open_fold(i: int) -> Any:
        return _held_out_dataset(cfg, path, layout, folds[i]["val"], in_chans, _split_of(root, record, i))

    first = open_fold(0)
    return (lambda i: first if i == 0 else open_fold(i)), _is_volumes(first), *_classes(cfg, first)


def _truths(dataset: Any) -> Any:
    """``(case, ground truth, image, spacing)`` of every held-out case: a 2-D image's mask and the image, or a
    volume's labels, the volume itself (to be predicted without reading it again) and its voxel spacing."""
    if _is_volumes(dataset):
        for vol in dataset:
            if vol.label is None:
                raise ValueError(f"{vol.path or vol.id}: a held-out volume without labels cannot be scored")
            yield vol.id, np.asarray(vol.label), vol, vol.spacing
        return
    for case, img, gt in iter_cases(dataset):
        yield case, gt, img, None


def _classes(cfg: RunConfig, dataset: Any) -> tuple[int, list[str] | None]:
    """The class count scored (1 for binary tasks) and the class names (background first) of the held-out cases:
    a volume dataset's label names, else the config's binary flag and label values (no names)."""
    if _is_volumes(dataset):
        names = {0: "background", **dataset.label_names}
        return dataset.num_classes, [names.get(c, f"class_{c}") for c in range(dataset.num_classes)]
    return (1 if cfg.data.binary else len(cfg.data.label_values or [])), None


def _unit(layout: str, volumetric: bool) -> dict[str, str]:
    out = {"resolution": _resolution(layout, volumetric)}
    if volumetric:
        out["unit"] = ("volume: per-class Dice/IoU/HD95/NSD per volume; per_case_dice = mean over volumes per class, "
                       "then over classes (the number mambaseg evaluate reports for volumes); dice = pooled over all "
                       "voxels")
    return out


def _resolution(layout: str, volumetric: bool = False) -> str:
    if volumetric:
        return ("labels at the size of each volume's ground truth (the source volume's; a volcache's val volumes at "
                "their original size, volumes rebuilt from its training slices at the cached size); probabilities "
                "at the network size")
    return "original image size" if layout == "folder2d" else "cached (network) size"


def cv_record(root: Path, data: str | None) -> tuple[dict, str, str]:
    """A root's saved folds, its dataset path (``data`` or the recorded one, which must exist) and layout."""
    if not (root / FOLDS_FILE).is_file():
        raise FileNotFoundError(f"{root} is not a cross-validation root: no {FOLDS_FILE} (train with --folds K)")
    record = load_folds(root / FOLDS_FILE)
    if data:  # another copy or form of the cases (e.g. the folder a cache was built from): its own layout
        if not Path(data).exists():
            raise FileNotFoundError(f"--data {str(data)!r} does not exist (the dataset to score {root} against)")
        return record, str(data), layout_of(str(data), record.get("layout"))
    path = str(record.get("data") or "")
    if not path or not Path(path).exists():
        raise FileNotFoundError(f"the dataset {path!r} of {root / FOLDS_FILE} does not exist; pass --data PATH")
    return record, path, record.get("layout") or detect_layout(path)


def _evaluate_cv_ensemble(roots: list[Path], *, which: str, data: str | None, out: str | Path | None,
                          tta: str | None, spacing: Any, nsd_tolerance: float, empty_policy: str,
                          steps: tuple[str, ...]) -> dict[str, Any]:
    """Pooled out-of-fold scores of the probability average of several cross-validations (see evaluate_cv)."""
    if out is None:
        raise ValueError("scoring an ensemble of cross-validations needs an output folder (--out)")
    if len(set(r.resolve() for r in roots)) != len(roots):
        raise ValueError(f"the same cross-validation root is named twice: {[str(r) for r in roots]}")
    record, path, layout = cv_record(roots[0], data)
    folds = record["folds"]
    for r in roots[1:]:
        other = cv_record(r, data)[0]
        if [sorted(f["val"]) for f in other["folds"]] != [sorted(f["val"]) for f in folds]:
            raise ValueError(f"{r} holds out other cases than {roots[0]} (another split seed or k); an ensemble of "
                             f"cross-validations needs the same folds")
    cfg, in_chans = _fold_setup(roots[0] / "fold_0", which)
    held_out, volumetric, num_classes, class_names = _held_out_folds(cfg, path, layout, record, in_chans, roots[0])

    def cases() -> Any:
        for i in range(len(folds)):
            for case, gt, _, own in _truths(held_out(i)):  # own: the case's voxel spacing
                members = {}
                for r in roots:
                    fp = oof_dir(r / f"fold_{i}", which, tta) / "probabilities" / f"{case}.npz"
                    if not fp.is_file():
                        how = ("every finished fold saves them" if tta_mode(tta) == "none" else
                               f"train --folds K --tta {tta} saves them, also for finished folds")
                        raise FileNotFoundError(f"{fp} is missing: an ensemble scores the saved probabilities of "
                                                f"every member ({how})")
                    with np.load(fp, allow_pickle=False) as z:
                        members[fp] = z["probabilities"].astype(np.float32)
                pred = _labels_for_truth(mean_probabilities(members, volumetric), gt.shape, volumetric)
                yield case, pred, gt, i, own

    summary = _score_oof(cases(), num_classes=num_classes, spacing=spacing, nsd_tolerance=nsd_tolerance,
                         empty_policy=empty_policy, steps=steps, class_names=class_names)
    summary = {"root": [str(r) for r in roots], "members": len(roots), "data": path, "layout": layout,
               "k": len(folds), "seed": record.get("seed"), "checkpoint": which,
               "selection_rule": SELECTION_RULES[which] + f"; probabilities averaged over {len(roots)} "
                                                          f"cross-validations",
               "tta": tta or "none", **_unit(layout, volumetric), **summary}
    atomic_write_json(Path(out) / "cv_metrics.json", summary)
    return summary


def _score_oof(cases: Any, *, num_classes: int, spacing: Any, nsd_tolerance: float,
               empty_policy: str, steps: tuple[str, ...] = (), class_names: Any = None) -> dict[str, Any]:
    """score_cases over ``(case, pred, gt, fold, spacing)`` items (predictions post-processed by ``steps``; a case's
    own voxel spacing, where it has one, replaces ``spacing``), each case and worst case tagged with its fold."""
    from mambaseg.inference.postprocess import postprocess_labels
    from mambaseg.metrics.score import score_cases

    fold_of: dict[str, int] = {}
    no_spacing: list[str] = []  # cases without their own spacing (scored in ``spacing``, or voxels)

    def tagged() -> Any:
        for case, pred, gt, i, own in cases:
            fold_of[case] = i
            if own is None:
                no_spacing.append(case)
            yield case, postprocess_labels(np.asarray(pred), steps), gt, own  # None: score_cases takes spacing

    result = score_cases(tagged(), num_classes=num_classes, spacing=spacing, nsd_tolerance=nsd_tolerance,
                         empty_policy=empty_policy, class_names=class_names)
    mixed: dict[str, str] = {}
    if spacing is None and no_spacing and len(no_spacing) < len(fold_of):
        names = ", ".join(no_spacing[:5]) + (", ..." if len(no_spacing) > 5 else "")
        mixed["spacing"] = (f"{len(no_spacing)} of {len(fold_of)} held-out volumes have no voxel spacing ({names}; "
                            "e.g. volumes rebuilt from the training slices of a volcache written before format /2, "
                            "which stores no spacing for them; rebuild the cache): their HD95/NSD are in voxels, "
                            "the others' in mm, so the means mix units; score "
                            "against a dataset with every volume's spacing (--data, e.g. the source of the cache) "
                            "for mm")
        warnings.warn(mixed["spacing"], RuntimeWarning, stacklevel=3)
    per_fold: dict[int, list[float]] = {}
    for row in result["cases"]:
        row["fold"] = fold_of[row["id"]]
        if isinstance(row["dice"], float):
            per_fold.setdefault(row["fold"], []).append(row["dice"])
    for w in result["worst"]:
        w["fold"] = fold_of[w["id"]]
    return {
        "postprocess": list(steps),
        "per_fold_mean_dice": {str(k): float(np.mean(v)) for k, v in sorted(per_fold.items())},
        **result,
        **mixed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
