"""Checks a training run makes before its first optimizer step, so that nothing fails (or goes silently wrong)
after an epoch of work.

* :func:`check_resume_config`: a resumed run may change only the options that do not alter what is being trained
  (:data:`RESUME_MUTABLE`: epochs, step/time limits, workers, device, logging and checkpoint cadence, ...); any
  other difference from the checkpoint's stored config is refused, naming each option with its stored and given
  values, instead of being recorded in ``config.yaml`` while the restored optimizer trains with the old one.
* :func:`check_best_metric`: ``train.best_metric`` must name a scalar the task's evaluator produces (checked on
  the evaluator's :meth:`~mambaseg.engine.Evaluator.dry_result`).
* :func:`check_label_map`: the task's label map has one entry per class the model predicts.
* :func:`check_samples`: every sample of the training and validation splits is read once (2-D masks, training
  slices, validation volumes) and every problem is reported together, naming the file; masks that are all
  background in a whole split are reported as a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mambaseg.data.files import DatasetError

__all__ = ["MetricNameError", "RESUME_MUTABLE", "check_best_metric", "check_label_map", "check_resume_config",
           "check_samples"]

#: config fields a resumed run may change (applied and recorded in config.yaml); every other field is fixed
RESUME_MUTABLE = frozenset({
    "description",
    "train.epochs", "train.max_steps", "train.time_limit_s", "train.device", "train.out", "train.log_every",
    "train.checkpoint_every", "train.checkpoint_interval_s", "train.async_checkpoints", "train.val_every",
    "train.val_batch_size", "train.compile", "train.cuda_graph", "train.scan_backend", "train.find_unused_parameters",
    "train.init_from",
    "data.path", "data.num_workers", "data.persistent_workers", "data.validate",
})

class MetricNameError(KeyError, ValueError):
    """``train.best_metric`` names no scalar of the evaluator's results."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


#: fields whose value ``auto`` is resolved from the data when a run starts; the resolved value is what a checkpoint
#: stores, so ``auto`` given on resume means "as stored"
RESOLVED_FROM_DATA = frozenset({"loss.name"})

#: most problem lines one pre-flight message lists
MAX_PROBLEMS = 50


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and prefix.count(".") < 1:  # sections, then whole field values
                out.update(_flatten(v, key + "."))
            else:
                out[key] = v
    return out


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _norm(x) for k, x in v.items()}
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    return v


def _message(exc: BaseException) -> str:
    """The text of an exception: a ``KeyError``'s own message (``str()`` of one is its repr, in quotes), any other's
    ``str()``; never cut (a message may end in a quoted name: ``... of case 'patient019_frame01'``)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0].strip()
    return str(exc).strip()


def check_resume_config(stored: dict[str, Any] | None, given: dict[str, Any], where: str | Path) -> list[str]:
    """Compare a resumed run's config with the one stored in its checkpoint.

    Args:
        stored: the checkpoint's ``config`` entry.
        given: ``config_to_dict`` of the config the run is resumed with.
        where: the checkpoint (named in the message).

    Returns:
        ``"field: stored -> given"`` lines of the changed fields that a resumed run applies.

    Raises:
        ValueError: a field outside :data:`RESUME_MUTABLE` differs; the message names every one with both values.
    """
    if not stored:
        return []
    old, new = _flatten(stored), _flatten(given)
    fixed, applied = [], []
    for key in sorted(set(old) & set(new)):
        if _norm(old[key]) == _norm(new[key]):
            continue
        if key in RESOLVED_FROM_DATA and new[key] == "auto":
            continue
        line = f"{key} (stored {old[key]!r}, given {new[key]!r})"
        (applied if key in RESUME_MUTABLE else fixed).append(line)
    if fixed:
        allowed = ", ".join(sorted(RESUME_MUTABLE))
        raise ValueError(
            f"cannot resume {where} with changed options; these cannot change in a resumed run (the restored "
            f"weights, optimizer and schedule depend on them):\n"
            + "\n".join(f"  - {f}" for f in fixed)
            + f"\nresume without them, or start a new run in another --out. Options that may change on resume: "
            f"{allowed}"
        )
    return applied


def check_best_metric(evaluator: Any, name: str) -> None:
    """Raise ``ValueError`` when ``train.best_metric`` is not a scalar of the evaluator's results."""
    from mambaseg.engine.evaluator import lookup_metric

    dry = evaluator.dry_result() if evaluator is not None and hasattr(evaluator, "dry_result") else None
    if dry is None:
        return
    try:
        lookup_metric(dry, name)
    except KeyError as exc:
        msg = _message(exc)
        raise MetricNameError(f"train.best_metric={name!r}: {msg}; nothing was trained") from None


def check_label_map(label_map: dict[str, Any], num_classes: int, data: Any) -> None:
    """Raise ``ValueError`` when the label map does not have one value per predicted class (binary: two)."""
    expected = 2 if num_classes == 1 else num_classes
    if len(label_map) != expected:
        raise ValueError(
            f"{data}: the label map {dict(label_map)} has {len(label_map)} entries but the task predicts "
            f"{num_classes} class channel(s) (expected {expected} entries: background first); check "
            f"data.label_values / the dataset's label description"
        )
    values = list(label_map.values())
    if len(set(map(str, values))) != len(values):
        raise ValueError(f"{data}: the label map {dict(label_map)} gives two classes the same value")


def _readers(ds: Any) -> tuple[str, Callable[[int], tuple[str, np.ndarray | None]]] | None:
    """``(kind, read(i) -> (name, labels))`` for the dataset types the library builds; ``None`` for others."""
    from mambaseg.data.cache import ArrayDataset2D
    from mambaseg.data.files import LOSSY_EXTENSIONS, mask_to_labels, read_mask
    from mambaseg.data.folder2d import FolderDataset2D
    from mambaseg.data.volumetric import SliceDataset2D, VolumeDataset

    if isinstance(ds, FolderDataset2D):  # images were decoded by the dataset validation pass (data.validate)
        def read_folder(i: int) -> tuple[str, np.ndarray | None]:
            pair = ds._pairs[i]
            if pair.mask is None:
                raise DatasetError(f"{pair.image}: image without mask")
            raw = read_mask(pair.mask)
            lab = mask_to_labels(raw, binary=ds.binary, label_values=ds.label_values,
                                 lossy=pair.mask.suffix.lower() in LOSSY_EXTENSIONS, path=pair.mask)
            return str(pair.mask), lab

        return "mask", read_folder
    if isinstance(ds, SliceDataset2D):
        def read_slice(i: int) -> tuple[str, np.ndarray | None]:
            _, lab = ds.load(i)
            return ds.paths[i] or ds.ids[i], lab

        return "slice", read_slice
    if isinstance(ds, VolumeDataset):
        def read_volume(i: int) -> tuple[str, np.ndarray | None]:
            vol = ds[i]
            name = vol.path or ds.paths[i] or vol.id
            if vol.label is None:
                raise DatasetError(f"{name}: volume without a label; a validation volume needs one")
            if tuple(vol.label.shape) != tuple(vol.label_shape):
                raise DatasetError(f"{name}: label shape {tuple(vol.label.shape)} differs from the image's "
                                   f"{tuple(vol.label_shape)}")
            if np.issubdtype(vol.image.dtype, np.floating) and not np.isfinite(vol.image).all():
                n = int(np.count_nonzero(~np.isfinite(vol.image)))
                raise DatasetError(f"{name}: the image holds {n} non-finite voxel(s) (NaN/inf)")
            return name, vol.label

        return "volume", read_volume
    if isinstance(ds, ArrayDataset2D):
        return "cached mask", lambda i: (f"{ds.source or 'cache'}[{ds.ids[i]}]", np.asarray(ds.masks[i]))
    return None


#: Pillow modes of grey images (replicated to 3 channels for an RGB model, :func:`mambaseg.data.files.read_image`)
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def _grey_among_colour(ds: Any, split: str, data: Any) -> list[str]:
    """A warning when a 3-channel folder split mixes grey images with colour ones (the grey ones are replicated to
    3 channels without a word; a grey photo in a colour set is often a file from another source). Reads only the
    image headers. A split of grey images only is a grey dataset, not a mistake: no warning."""
    from PIL import Image

    from mambaseg.data.folder2d import FolderDataset2D

    if not isinstance(ds, FolderDataset2D) or ds.in_chans != 3:
        return []
    grey = []
    for pair in ds._pairs:
        try:
            with Image.open(pair.image) as im:
                if im.mode in GREY_MODES:
                    grey.append(pair.image)
        except OSError:  # unreadable images are the dataset validation's to report
            continue
    if not grey or len(grey) == len(ds._pairs):
        return []
    names = ", ".join(p.name for p in grey[:3]) + (", ..." if len(grey) > 3 else "")
    return [f"warning: {len(grey)} of {len(ds._pairs)} images of the {split} split of {data} are grey ({names}) "
            "among colour ones; they are repeated to 3 channels. Check that they belong to this dataset"]


def check_samples(datasets: dict[str, Any], data: Any, *,
                  progress: Callable[[str, int, int], None] | None = None) -> list[str]:
    """Read every sample of the given splits once; raise one :class:`DatasetError` listing every problem.

    Returns:
        warning lines (a split whose masks are all background).
    """
    problems: list[str] = []
    warnings_: list[str] = []
    checked = 0
    for split, ds in datasets.items():
        if ds is None:
            continue
        found = _readers(ds)
        if found is None:
            continue
        kind, read = found
        n = len(ds)
        foreground = 0
        for i in range(n):
            try:
                _, lab = read(i)
            except (DatasetError, ValueError, OSError, KeyError) as exc:
                text = _message(exc)
                problems.append(f"[{split}] {text}")
                continue
            finally:
                checked += 1
                if progress is not None:
                    progress(split, i + 1, n)
            if lab is not None:
                foreground += int(np.count_nonzero(lab))
        warnings_ += _grey_among_colour(ds, split, data)
        if n and foreground == 0 and not any(p.startswith(f"[{split}]") for p in problems):
            warnings_.append(
                f"warning: every {kind} of the {split} split of {data} is background only (no foreground pixel in "
                f"{n} sample(s)); the model can only learn to predict background and the validation metrics are "
                f"meaningless: check the mask files, data.binary and data.label_values"
            )
    if problems:
        # one problem of a volume is met once per slice of it: list it once, with its count
        n_found = len(problems)
        counts: dict[str, int] = {}
        for p in problems:
            counts[p] = counts.get(p, 0) + 1
        problems = [p if c == 1 else f"{p} ({c} samples)" for p, c in counts.items()]
        distinct = f" ({len(problems)} different)" if len(problems) < n_found else ""
        shown = problems[:MAX_PROBLEMS]
        more = [f"  ... and {len(problems) - MAX_PROBLEMS} more"] if len(problems) > MAX_PROBLEMS else []
        raise DatasetError(
            f"pre-flight check of {data}: {checked} sample(s) read, {n_found} problem(s){distinct}; nothing was "
            f"trained:\n" + "\n".join(f"  - {p}" for p in shown) + ("\n" + "\n".join(more) if more else "")
        )
    return warnings_

