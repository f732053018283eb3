"""Volumetric tasks for the trainer: slice-wise per-volume evaluation and the ACDC / Synapse / nnU-Net layouts.

2-D networks are trained on slices and evaluated per 3-D volume (:class:`SlicewiseVolumeEvaluator`): each
validation volume is predicted slice by slice (:func:`mambaseg.inference.volume.predict_volume`: cubic zoom to the
network size, softmax + argmax, nearest zoom back), then per-class Dice and HD95 are computed on the 3-D volume
(:mod:`mambaseg.metrics.volume`) under the named empty-mask policies. The result holds ``dice`` / ``hd95`` (means
over classes under the primary policy, ``"transunet"`` by default), per-class values by NAME, per-volume rows, the
other policies' summaries under ``policies``, the policy rule and the HD95 units.

Layouts registered with :func:`mambaseg.engine.tasks.register_layout`:

* ``acdc``: SSL4MIS h5 layout (``train_slices.list`` + ``data/slices``; ``val.list``/``test.list`` volumes).
* ``synapse``: TransUNet layout (``train_npz``, ``test_vol_h5``, ``lists``); validation = ``lists/val_vol.txt`` or
  held-out training cases (never the test volumes).
* ``nnunet``: nnU-Net raw folder (``dataset.json``, ``imagesTr``, ``labelsTr``); validation = fold 0 of
  ``splits_final.json`` or a seeded carve of the cases.
* ``volcache``: a compact ``.npz`` cache of a volumetric task (``benchmarks/make_acdc_cache.py``): training slices
  and evaluation volumes stored at the network size as uint8, labels of evaluation volumes at their original size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from mambaseg.engine.evaluator import EvalContext, Evaluator
from mambaseg.engine.tasks import DataTask, DataTaskError, register_layout
from mambaseg.utils.distributed import all_gather_objects

if TYPE_CHECKING:
    from mambaseg.configs import RunConfig

__all__ = ["SlicewiseVolumeEvaluator", "VOLCACHE_FORMAT", "dataset_family", "open_volcache", "write_volcache"]

VOLCACHE_FORMAT = "mambaseg-volcache/1"


class SlicewiseVolumeEvaluator(Evaluator):
    """Per-volume, per-class Dice / HD95 of a 2-D model applied slice by slice.

    Args:
        label_names: ``{class_value: name}`` of the foreground classes.
        num_classes: classes incl. background (model output channels).
        image_size: network input (H, W).
        normalization: input normalisation of the slices (``mambaseg.data.Normalization``) or ``None``.
        policies: empty-mask policies to report (``"transunet"``, ``"nan"``).
        primary: the policy of the top-level ``dice``/``hd95`` (used for model selection).
        metric_workers: processes computing the HD95 while the model predicts the next volume (0 = inline).
    """

    name = "volume_slicewise"

    def __init__(
        self,
        label_names: Mapping[int, str],
        num_classes: int,
        *,
        image_size: Sequence[int],
        normalization: Any = None,
        policies: Sequence[str] = ("transunet", "nan"),
        primary: str = "transunet",
        metric_workers: int = 0,
    ) -> None:
        from mambaseg.metrics.hd95 import check_empty_policy

        self.label_names = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}
        self.num_classes = int(num_classes)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.normalization = normalization
        self.policies = [check_empty_policy(p) for p in policies]
        self.primary = check_empty_policy(primary)
        if self.primary not in self.policies:
            self.policies.insert(0, self.primary)
        self.metric_workers = int(metric_workers)

    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: EvalContext) -> dict[str, Any]:
        from mambaseg.data.volumetric import zoom_labels
        from mambaseg.inference.volume import predict_volume
        from mambaseg.metrics.volume import VolumeEvaluator

        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("cannot evaluate on an empty dataset (0 volumes)")
        indices = list(range(ctx.dist.rank, n, ctx.dist.world_size))
        local = VolumeEvaluator(self.label_names, self.num_classes, num_workers=self.metric_workers)
        loss_sum = [0.0]
        n_slices = [0]
        for done, i in enumerate(indices, 1):
            vol = dataset[i]
            if vol.label is None:
                raise ValueError(f"volume {vol.id!r} ({vol.path}) has no label; cannot evaluate")
            label = vol.label

            def on_batch(idx: list[int], x: torch.Tensor, logits: torch.Tensor) -> None:
                if ctx.loss_fn is None:
                    return
                y = np.stack([zoom_labels(label[z], self.image_size) for z in idx]).astype(np.int64)
                yt = torch.from_numpy(y).to(logits.device)
                loss_sum[0] += float(ctx.loss_fn(logits, yt)) * len(idx)
                n_slices[0] += len(idx)

            pred = predict_volume(
                model, vol, image_size=self.image_size, normalization=self.normalization,
                batch_size=max(1, ctx.batch_size), device=ctx.device, amp_dtype=ctx.amp_dtype, on_batch=on_batch,
            )
            local.add(vol.id, pred, label, vol.spacing)
            if ctx.progress is not None:
                ctx.progress(done, len(indices))
        gathered = all_gather_objects((local.stats(), loss_sum[0], n_slices[0]), ctx.dist)
        ev = VolumeEvaluator(self.label_names, self.num_classes)
        for st in sorted((s for g in gathered for s in g[0]), key=lambda s: s.case_id):
            ev.add_stats(st)
        total_loss = sum(g[1] for g in gathered)
        total_slices = sum(g[2] for g in gathered)
        return self.summarize(ev, loss=total_loss / max(total_slices, 1) if ctx.loss_fn is not None else None)

    def summarize(self, ev: Any, *, loss: float | None = None) -> dict[str, Any]:
        """Result dict from a filled :class:`mambaseg.metrics.VolumeEvaluator`."""
        rep = ev.report(self.primary)
        out: dict[str, Any] = {
            "dice": rep["mean_dice"],
            "hd95": rep["mean_hd95"],
            "empty_policy": self.primary,
            "empty_policy_rule": rep["empty_policy_rule"],
            "hd95_units": rep["hd95_units"],
            "protocol": rep["protocol"],
            "n_volumes": rep["num_volumes"],
            "classes": rep["classes"],
            "per_volume": rep["per_volume"],
            "policies": {p: ev.report(p, per_volume=False) for p in self.policies},
        }
        if loss is not None:
            out["loss"] = float(loss)
        return out

    def summary_table(self, summary: dict[str, Any], run_dir: Any) -> Any:
        return volume_summary_table(summary, run_dir)

    def headline(self, result: dict[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for k in ("loss", "dice", "hd95"):
            v = result.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[k] = float(v)
        for name, vals in (result.get("classes") or {}).items():
            v = vals.get("dice")
            if isinstance(v, (int, float)):
                out[f"dice_{name}"] = float(v)
        return out


# ---------------------------------------------------------------------------------------------------------------
# helpers shared by the openers


def _size(cfg: RunConfig) -> tuple[int, int]:
    s = cfg.data.image_size
    return (int(s[0]), int(s[1]))


def _norm(normalization: Any, in_chans: int) -> Any:
    from mambaseg.data.volumetric import paper_normalization

    return normalization if normalization is not None else paper_normalization(in_chans)


def _label_map(label_names: Mapping[int, str]) -> dict[str, int]:
    return {"background": 0, **{str(v): int(k) for k, v in sorted(label_names.items())}}


def _task(
    name: str,
    datasets: dict[str, Dataset],
    label_names: Mapping[int, str],
    num_classes: int,
    in_chans: int,
    cfg: RunConfig,
    normalization: Any,
    info: dict[str, Any],
) -> DataTask:
    ev = SlicewiseVolumeEvaluator(label_names, num_classes, image_size=_size(cfg), normalization=normalization)
    info = {**info, **{f"n_{s}": len(d) for s, d in datasets.items()}}  # type: ignore[arg-type]
    return DataTask(
        name=name,
        datasets=datasets,
        evaluator=ev,
        label_map=_label_map(label_names),
        num_classes=num_classes,
        in_chans=in_chans,
        normalization=normalization,
        info=info,
    )


# ---------------------------------------------------------------------------------------------------------------
# layout: acdc


def _detect_acdc(root: Path) -> bool:
    from mambaseg.data.acdc import is_acdc_root

    return is_acdc_root(root)


@register_layout(
    "acdc",
    detect=_detect_acdc,
    priority=20,
    description="ACDC SSL4MIS h5 layout: train_slices.list + data/slices/*.h5, val.list/test.list + data/*.h5",
)
def open_acdc(root: Path, cfg: RunConfig, *, splits: tuple[str, ...], normalization: Any) -> DataTask:
    """ACDC (SSL4MIS h5): slices for training, volumes for val/test."""
    from mambaseg.data.acdc import ACDC_LABELS, acdc_slices, acdc_volumes

    norm = _norm(normalization, 1)
    ds: dict[str, Dataset] = {}
    for s in splits:
        if s == "train":
            ds[s] = acdc_slices(root, image_size=_size(cfg), augment=cfg.data.augment, normalization=norm)
        elif s in ("val", "test"):
            ds[s] = acdc_volumes(root, s)
        else:
            raise DataTaskError(f"ACDC has splits train, val and test; got {s!r}")
    return _task("acdc", ds, ACDC_LABELS, 4, 1, cfg, norm, {"root": str(root)})


# ---------------------------------------------------------------------------------------------------------------
# layout: synapse


def _detect_synapse(root: Path) -> bool:
    from mambaseg.data.synapse import is_synapse_root

    return is_synapse_root(root)


def _synapse_val_cases(root: Path, cfg: RunConfig) -> list[str]:
    from mambaseg.data.synapse import synapse_train_cases

    cases = synapse_train_cases(root)
    if len(cases) < 2:
        raise DataTaskError(f"{root}: need >= 2 training cases to hold one out for validation (or lists/val_vol.txt)")
    rng = np.random.default_rng(cfg.data.split_seed)
    n_val = min(len(cases) - 1, max(1, round(cfg.data.val_fraction * len(cases))))
    return sorted(cases[i] for i in rng.permutation(len(cases))[:n_val])


@register_layout(
    "synapse",
    detect=_detect_synapse,
    priority=20,
    description="TransUNet Synapse layout: train_npz/*.npz, test_vol_h5/*.npy.h5, lists/{train,test_vol}.txt",
)
def open_synapse(root: Path, cfg: RunConfig, *, splits: tuple[str, ...], normalization: Any) -> DataTask:
    """Synapse (TransUNet npz/h5): slices for training, volumes for val (held out) and test."""
    from mambaseg.data.synapse import (
        SYNAPSE_LABELS,
        synapse_list,
        synapse_slices,
        synapse_volumes,
        synapse_volumes_from_slices,
    )

    norm = _norm(normalization, 1)
    try:
        synapse_list(root, "val_vol.txt")
        val_from_list = True
    except ValueError:
        val_from_list = False
    val_cases: list[str] = [] if val_from_list else _synapse_val_cases(root, cfg)
    info: dict[str, Any] = {"root": str(root), "val": "lists/val_vol.txt" if val_from_list else
                            f"held-out training cases {val_cases}"}
    ds: dict[str, Dataset] = {}
    for s in splits:
        if s == "train":
            ds[s] = synapse_slices(root, exclude_cases=val_cases, image_size=_size(cfg), augment=cfg.data.augment,
                                   normalization=norm)
        elif s == "val":
            ds[s] = (synapse_volumes(root, "val_vol.txt") if val_from_list
                     else synapse_volumes_from_slices(root, val_cases))
        elif s == "test":
            ds[s] = synapse_volumes(root, "test_vol.txt")
        else:
            raise DataTaskError(f"Synapse has splits train, val and test; got {s!r}")
    return _task("synapse", ds, SYNAPSE_LABELS, 9, 1, cfg, norm, info)


# ---------------------------------------------------------------------------------------------------------------
# layout: nnunet


def _detect_nnunet(root: Path) -> bool:
    from mambaseg.data.nnunet import is_nnunet_root

    return is_nnunet_root(root)


@register_layout(
    "nnunet",
    detect=_detect_nnunet,
    priority=20,
    description="nnU-Net raw dataset: dataset.json, imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz",
)
def open_nnunet(root: Path, cfg: RunConfig, *, splits: tuple[str, ...], normalization: Any) -> DataTask:
    """nnU-Net raw (NIfTI): slices of the training cases, volumes of the validation cases."""
    from mambaseg.data.nnunet import NnUNetRaw, nnunet_slices, nnunet_volumes

    raw = NnUNetRaw(root)
    sp = raw.splits(val_fraction=cfg.data.val_fraction, seed=cfg.data.split_seed)
    in_chans = len(raw.channel_names)
    norm = _norm(normalization, in_chans)
    ds: dict[str, Dataset] = {}
    for s in splits:
        if s == "train":
            ds[s] = nnunet_slices(raw, sp["train"], image_size=_size(cfg), augment=cfg.data.augment, normalization=norm)
        elif s == "val":
            ds[s] = nnunet_volumes(raw, sp["val"])
        else:
            raise DataTaskError(
                f"nnU-Net raw datasets have labelled splits train and val only (imagesTs has no labels); got {s!r}"
            )
    return _task("nnunet", ds, raw.label_names, raw.num_classes, in_chans, cfg, norm,
                 {"root": str(root), "val_cases": sp["val"]})


# ---------------------------------------------------------------------------------------------------------------
# layout: volcache


def write_volcache(
    path: str | Path,
    *,
    name: str,
    label_names: Mapping[int, str],
    num_classes: int,
    image_size: Sequence[int],
    train: Dataset | None,
    eval_splits: Mapping[str, Dataset],
) -> Path:
    """Write a compact ``.npz`` cache of a volumetric task (uint8 images at ``image_size``).

    Training slices are stored resized (order-3 image zoom, order-0 labels) without augmentation or normalisation;
    evaluation volumes store each slice zoomed to ``image_size`` and the labels at their ORIGINAL size, so the
    per-volume evaluation (predict at network size, zoom back, compare) is the one on the source data up to the
    8-bit quantisation of the intensities.

    Args:
        path: output ``.npz`` (compressed).
        name: dataset name recorded in the metadata.
        label_names: foreground ``{value: name}``.
        num_classes: classes incl. background.
        image_size: (H, W) of the stored images.
        train: a :class:`~mambaseg.data.volumetric.SliceDataset2D` (or ``None``).
        eval_splits: ``{"val": VolumeDataset, "test": VolumeDataset}``.
    """
    from mambaseg.data.volumetric import zoom_image, zoom_labels

    size = (int(image_size[0]), int(image_size[1]))
    arrays: dict[str, np.ndarray] = {}

    def q(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)

    splits_meta: dict[str, Any] = {}
    if train is not None:
        imgs, labs, ids = [], [], []
        for i in range(len(train)):  # type: ignore[arg-type]
            image, label = train.load(i)  # type: ignore[attr-defined]
            imgs.append(q(zoom_image(image, size, order=3)[..., 0]))
            labs.append(zoom_labels(label.astype(np.uint8), size))
            ids.append(train.ids[i])  # type: ignore[attr-defined]
        arrays["train_images"] = np.stack(imgs)
        arrays["train_labels"] = np.stack(labs)
        arrays["train_ids"] = np.asarray(ids)
        splits_meta["train"] = len(ids)
    for split, vols in eval_splits.items():
        imgs, flat, shapes, ids = [], [], [], []
        for vol in vols:  # type: ignore[attr-defined]
            if vol.num_channels != 1:
                raise ValueError("write_volcache stores single-channel volumes only")
            imgs.extend(q(zoom_image(vol.slice_image(z), size, order=3)[..., 0]) for z in range(vol.spatial_shape[0]))
            flat.append(np.asarray(vol.label, dtype=np.uint8).ravel())
            shapes.append(vol.label_shape)
            ids.append(vol.id)
        arrays[f"{split}_images"] = np.stack(imgs)
        arrays[f"{split}_labels_flat"] = np.concatenate(flat)
        arrays[f"{split}_shapes"] = np.asarray(shapes, dtype=np.int64)
        arrays[f"{split}_ids"] = np.asarray(ids)
        splits_meta[split] = len(ids)
    meta = {
        "format": VOLCACHE_FORMAT,
        "name": name,
        "label_names": {str(k): v for k, v in label_names.items()},
        "num_classes": int(num_classes),
        "image_size": list(size),
        "splits": splits_meta,
        "image_encoding": "uint8 = round(255 * intensity in [0, 1])",
    }
    arrays["vol_meta"] = np.asarray(json.dumps(meta))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return out


class _CacheSliceLoader:
    """Picklable ``loader(i) -> (image in [0, 1], label)`` over the cached uint8 training slices."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[i].astype(np.float32) / 255.0, self.labels[i]


class _CacheVolumeLoader:
    """Picklable ``loader(i) -> Volume`` over cached volumes (images at network size, labels at original size)."""

    def __init__(self, images: np.ndarray, labels_flat: np.ndarray, shapes: np.ndarray, ids: list[str],
                 source: str) -> None:
        self.images, self.flat, self.shapes, self.ids, self.source = images, labels_flat, shapes, ids, source
        self.zoff = np.concatenate([[0], np.cumsum(shapes[:, 0])])
        self.loff = np.concatenate([[0], np.cumsum(np.prod(shapes, axis=1))])

    def __call__(self, i: int) -> Volume:
        from mambaseg.data.volumetric import Volume

        d, h, w = (int(v) for v in self.shapes[i])
        return Volume(
            id=self.ids[i], image=self.images[self.zoff[i]:self.zoff[i + 1]].astype(np.float32) / 255.0,
            label=self.flat[self.loff[i]:self.loff[i + 1]].reshape(d, h, w), spacing=None,
            path=f"{self.source}#{self.ids[i]}", source_format="npz", target_hw=(h, w),
        )


def _detect_volcache(path: Path) -> bool:
    if not (path.is_file() and path.suffix == ".npz"):
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return "vol_meta" in z.files
    except (OSError, ValueError):
        return False


@register_layout(
    "volcache",
    detect=_detect_volcache,
    priority=20,
    description="a .npz volumetric cache with vol_meta (benchmarks/make_acdc_cache.py)",
)
def open_volcache(path: Path, cfg: RunConfig, *, splits: tuple[str, ...], normalization: Any) -> DataTask:
    """Volumetric ``.npz`` cache: training slices and evaluation volumes stored at the network size."""
    from mambaseg.data.volumetric import SliceDataset2D, VolumeDataset

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["vol_meta"]))
    if meta.get("format") != VOLCACHE_FORMAT:
        raise DataTaskError(f"{path}: cache format {meta.get('format')!r}, expected {VOLCACHE_FORMAT!r}")
    label_names = {int(k): str(v) for k, v in meta["label_names"].items()}
    num_classes = int(meta["num_classes"])
    stored = tuple(int(s) for s in meta["image_size"])
    norm = _norm(normalization, 1)
    ds: dict[str, Dataset] = {}
    for s in splits:
        if s == "train":
            if "train_images" not in arrays:
                raise DataTaskError(f"{path}: the cache has no training slices")
            imgs, labs = arrays["train_images"], arrays["train_labels"]
            ids = [str(i) for i in arrays["train_ids"]]

            ds[s] = SliceDataset2D(ids, _CacheSliceLoader(imgs, labs), image_size=_size(cfg), augment=cfg.data.augment,
                                   num_classes=num_classes, label_names=label_names, normalization=norm,
                                   paths=[f"{path}#{i}" for i in ids])
        else:
            if f"{s}_images" not in arrays:
                have = sorted(k[: -len("_shapes")] for k in arrays if k.endswith("_shapes"))
                raise DataTaskError(f"{path}: no split {s!r} in the cache (it has {have})")
            imgs, flat, shapes = arrays[f"{s}_images"], arrays[f"{s}_labels_flat"], arrays[f"{s}_shapes"]
            ids = [str(i) for i in arrays[f"{s}_ids"]]
            loader = _CacheVolumeLoader(imgs, flat, shapes, ids, str(path))
            ds[s] = VolumeDataset(ids, loader, label_names=label_names, num_classes=num_classes)
    if _size(cfg) != stored:
        info_size = f"cache stored at {stored}, resized to {_size(cfg)}"
    else:
        info_size = f"{stored}"
    return _task("volcache", ds, label_names, num_classes, 1, cfg, norm,
                 {"root": str(path), "cache": meta.get("name"), "cache_image_size": info_size})


def dataset_family(path: str | Path) -> str | None:
    """Dataset family of a path for recipe lookup: the detected layout name (``acdc``, ``synapse``, ``nnunet``,
    ``folder2d``...), or for a ``volcache`` file the name of the cached dataset; ``None`` when undetectable."""
    from mambaseg.engine.tasks import detect_layout

    p = Path(path).expanduser()
    try:
        layout = detect_layout(p)
    except (ValueError, OSError):
        return None
    if layout == "volcache":
        with np.load(p, allow_pickle=False) as z:
            return str(json.loads(str(z["vol_meta"])).get("name") or layout)
    return layout


def volume_summary_table(summary: dict[str, Any], run_dir: Path) -> Any:
    """Rich table of a per-volume result: Dice / HD95 per class (by name) and the mean, for every policy."""
    from rich.table import Table

    units = summary.get("hd95_units", "voxels")
    table = Table(title=f"per-volume metrics of the best checkpoint (epoch {summary.get('best_epoch')}), "
                        f"{summary.get('n_volumes')} volumes")
    table.add_column("policy")
    table.add_column("metric")
    names = list((summary.get("classes") or {}).keys())
    for n in names + ["mean"]:
        table.add_column(n, justify="right")

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, (int, float)) else str(v if v is not None else "-")

    policies = summary.get("policies") or {summary.get("empty_policy", "transunet"): summary}
    for pol, rep in policies.items():
        cls = rep.get("classes") or {}
        table.add_row(pol, "Dice", *[fmt(cls.get(n, {}).get("dice")) for n in names], fmt(rep.get("mean_dice")))
        table.add_row(pol, f"HD95 ({units})", *[fmt(cls.get(n, {}).get("hd95")) for n in names],
                      fmt(rep.get("mean_hd95")))
    tr = summary.get("train") or {}
    cap = f"{tr.get('epochs')} epochs, {tr.get('steps')} steps, {tr.get('seconds')} s — " if tr else ""
    table.caption = cap + str(run_dir)
    return table
