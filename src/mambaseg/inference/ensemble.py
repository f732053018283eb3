"""Ensembles of checkpoints and mirroring test-time augmentation, averaged in probability space.

:class:`ProbabilityEnsemble` wraps one or several trained models: for each model and each mirrored copy of the
input (``tta="flip"``: as is, horizontal, vertical, both; each output mirrored back) it computes probabilities
(sigmoid for one output channel, softmax for several) and averages them with equal weights. Its ``forward`` returns
the logits OF THAT AVERAGE (``logit(p)`` for one channel, ``log(p)`` for several), so everything that consumes a
model's logits (the 2-D predictor and its upsampling to the original size, the slice-wise volume predictor, the
evaluators) applies the library's one labels rule (:func:`mambaseg.metrics.labels_from_logits`) to the averaged
probabilities without a second code path: ``sigmoid(logit(p)) >= t`` is ``p >= t`` and the argmax of ``log(p)`` is
the argmax of ``p``. Probabilities are clamped to ``[eps, 1 - eps]`` (``eps = 1e-7``) before the logarithm.

:func:`load_ensemble` builds a :class:`~mambaseg.inference.Predictor` from several checkpoints and/or
cross-validation roots (every ``ROOT/fold_*/checkpoints/last.pt``, or ``best.pt``); the checkpoints must agree on
the channels and label map (the message names the first that differs). They may differ in their input normalisation
(the folds of a cross-validation each measure their mean/std on their own training cases) and in their input size
(a mix of recipes, e.g. VM-UNet at 256x256 with DermoMamba at 192x256):

- the predictor (and any evaluator) resizes the input to the ensemble's input size, the largest height and width of
  the members (:func:`ensemble_input_size`), and normalises it as the first member was trained;
- a member trained at another size gets the input resized to its own (area when shrinking, as training resizes;
  bilinear otherwise) and its logits resized back (bilinear) before the probabilities are averaged;
- a member trained with another normalisation maps the input to its own (:class:`Renormalize`, exact: both are
  per-channel affine maps of the same ``[0, 1]`` image).

So a member of the ensemble's size sees exactly its training input; a smaller one sees the image resampled twice
(to the ensemble's size, then to its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.inference.postprocess import parse_postprocess
from mambaseg.metrics import probabilities_from_logits

__all__ = ["FOLD_CHECKPOINTS", "TTA_MODES", "ProbabilityEnsemble", "Renormalize", "Resize", "ensemble_input_size",
           "ensemble_of_checkpoints", "expand_checkpoints", "flip_dims", "load_ensemble", "tta_mode"]

TTA_MODES = ("none", "flip")
_EPS = 1e-7


def tta_mode(tta: str | None) -> str:
    """The TTA mode a ``tta`` argument names: ``None``, ``""`` and ``"none"`` are ``"none"`` (validated by
    :func:`flip_dims`)."""
    return "none" if tta in (None, "", "none") else str(tta)


def flip_dims(tta: str | None, ndim: int = 2) -> list[tuple[int, ...]]:
    """The mirrorings of a TTA mode as ``torch.flip`` dims of an (B, C, H, W) tensor: ``none`` -> ``[()]``;
    ``flip`` -> identity, horizontal (W), vertical (H), both."""
    mode = tta_mode(tta)
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r} (--tta); valid: {', '.join(TTA_MODES)}")
    if mode == "none":
        return [()]
    if ndim != 2:
        raise ValueError(f"tta='flip' mirrors the two image axes of (B, C, H, W) inputs, got {ndim} spatial axes")
    return [(), (-1,), (-2,), (-2, -1)]


class Renormalize(nn.Module):
    """Maps an input normalised as ``source`` to the same image normalised as ``target`` (per channel, exact).

    ``x_target = (x_source * std_s + mean_s - mean_t) / std_t``; ``None`` stands for the ``[0, 1]`` image itself
    (mean 0, std 1). Works on (B, C, ...) tensors of any number of spatial axes.

    Args:
        source: the :class:`~mambaseg.data.Normalization` (or its dict, or ``None``) the input arrives in.
        target: the one the wrapped model was trained with.
    """

    def __init__(self, source: Any, target: Any) -> None:
        super().__init__()
        ms, ss = _mean_std(source)
        mt, st = _mean_std(target)
        channels = {len(v) for v in (ms, mt) if v is not None}
        if len(channels) > 1:
            raise ValueError(f"Renormalize: the normalisations have {sorted(channels)} channels")
        c = channels.pop() if channels else 1
        ms, ss = (ms or [0.0] * c), (ss or [1.0] * c)
        mt, st = (mt or [0.0] * c), (st or [1.0] * c)
        scale = [a / b for a, b in zip(ss, st)]  # computed in float64 (Python floats), stored as float32
        shift = [(a - b) / d for a, b, d in zip(ms, mt, st)]
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.scale.numel():
            raise ValueError(f"Renormalize: expected {self.scale.numel()} channel(s), got input of shape "
                             f"{tuple(x.shape)}")
        view = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.scale.view(view).to(x.dtype) + self.shift.view(view).to(x.dtype)


class Resize(nn.Module):
    """Resizes (B, C, H, W) inputs to ``size`` (h, w): area averaging when both sides shrink (as the training
    transforms do with OpenCV's INTER_AREA), bilinear with half-pixel centres otherwise (INTER_LINEAR)."""

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        if x.shape[-2] >= self.size[0] and x.shape[-1] >= self.size[1]:
            return F.interpolate(x, size=self.size, mode="area")
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def _mean_std(norm: Any) -> tuple[list[float] | None, list[float] | None]:
    if norm is None:
        return None, None
    if isinstance(norm, dict):
        return [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]]
    return [float(v) for v in norm.mean], [float(v) for v in norm.std]


class ProbabilityEnsemble(nn.Module):
    """Average of the probabilities of ``models`` over the mirrorings of ``tta``; returns logits of the average.

    Args:
        models: trained networks returning logits (B, C, H, W), all with the same C.
        tta: ``"none"`` or ``"flip"``.
        inputs: optional, one module (or ``None`` for the input as it is) per model, applied to the input before
            that model: a :class:`Resize` and/or a :class:`Renormalize` where a member was trained at another size
            or with another normalisation. A member whose logits come out at another size than the input's is
            resized back (bilinear) before its probabilities enter the mean.
    """

    def __init__(self, models: Sequence[nn.Module], tta: str | None = "none",
                 inputs: Sequence[nn.Module | None] | None = None) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        if inputs is not None and len(inputs) != len(models):
            raise ValueError(f"an ensemble of {len(models)} models got {len(inputs)} input maps")
        self.members = nn.ModuleList(models)
        self.inputs = nn.ModuleList([m if m is not None else nn.Identity() for m in (inputs or [None] * len(models))])
        self.tta = tta_mode(tta)
        self.flips = flip_dims(self.tta)
        specs = [dict(getattr(m, "mambaseg_spec", None) or {}) for m in models]
        self.mambaseg_spec = specs[0]
        for k in ("num_classes", "in_chans"):
            values = {s.get(k) for s in specs if s.get(k) is not None}
            if len(values) > 1:
                raise ValueError(f"the ensembled models disagree on {k}: {sorted(values)}")

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Mean probabilities (B, C, H, W) over members and mirrorings (sigmoid if C == 1, else softmax)."""
        total: torch.Tensor | None = None
        n = 0
        for model, to_input in zip(self.members, self.inputs):
            xm = to_input(x)
            for dims in self.flips:
                xi = torch.flip(xm, dims) if dims else xm
                logits = model(xi).float()
                if dims:
                    logits = torch.flip(logits, dims)
                if logits.shape[-2:] != x.shape[-2:]:
                    logits = F.interpolate(logits, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
                p = probabilities_from_logits(logits)
                total = p if total is None else total + p
                n += 1
        assert total is not None
        return total / n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.probabilities(x)
        if p.shape[1] == 1:
            return torch.logit(p.clamp(_EPS, 1.0 - _EPS))
        return torch.log(p.clamp_min(_EPS))


#: which checkpoint of each fold a cross-validation root stands for: ``last`` (the final weights: what
#: ``evaluate --cv`` scores by default, and nnU-Net's ``checkpoint_final``) or ``best`` (chosen on the fold's own
#: held-out cases, so its cross-validation score is optimistic)
FOLD_CHECKPOINTS = ("last", "best")


def expand_checkpoints(paths: Sequence[str | Path], *, which: str = "last") -> list[Path]:
    """Checkpoint files from files and cross-validation roots (a folder with ``fold_*/checkpoints/<which>.pt``,
    expanded in fold order; ``which`` in :data:`FOLD_CHECKPOINTS`). Any other folder is passed on as it is, so
    loading it fails with the checkpoint loader's message (which names the file to pass).

    Raises:
        FileNotFoundError: a path does not exist, or a cross-validation root has no fold checkpoint yet.
        ValueError: ``which`` is not one of :data:`FOLD_CHECKPOINTS`.
    """
    if which not in FOLD_CHECKPOINTS:
        raise ValueError(f"--fold-checkpoint must be one of {', '.join(FOLD_CHECKPOINTS)}, got {which!r}")
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            out.append(p)
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"--checkpoint {str(p)!r} does not exist")
        folds = sorted(p.glob(f"fold_*/checkpoints/{which}.pt"), key=lambda f: _fold_index(f.parent.parent))
        if folds:
            # a fold is finished when its run wrote metrics.json (a running fold already has a last.pt)
            done = {_fold_index(f.parent.parent) for f in folds if (f.parent.parent / "metrics.json").is_file()}
            missing = _missing_folds(p, done)
            if missing:  # an ensemble of the folds that happen to be there would not be the root's
                raise FileNotFoundError(
                    f"--checkpoint {str(p)!r}: fold(s) {missing} of this cross-validation root have not finished "
                    f"(no metrics.json) or have no checkpoints/{which}.pt; to ensemble the others, name their "
                    f"checkpoints one by one (--checkpoint {p / 'fold_0' / 'checkpoints' / (which + '.pt')} ...)")
            out += folds
        elif list(p.glob("fold_*")):
            raise FileNotFoundError(f"--checkpoint {str(p)!r}: no fold of this cross-validation root has "
                                    f"checkpoints/{which}.pt yet")
        else:  # any other folder: the checkpoint loader names it and says which file to pass
            out.append(p)
    if not out:
        raise FileNotFoundError("no checkpoint given")
    return out


def _missing_folds(root: Path, present: set[int]) -> list[int]:
    """Fold indices of ``root`` without a checkpoint: 0..k-1 by its ``splits_final.json`` (:func:`load_folds`;
    every fold folder when the file is absent or not a valid fold file), minus ``present``."""
    from mambaseg.data.files import DatasetError
    from mambaseg.data.folds import FOLDS_FILE, load_folds

    try:
        expected = set(range(len(load_folds(root / FOLDS_FILE)["folds"])))
    except DatasetError:
        expected = {_fold_index(d) for d in root.glob("fold_*") if d.is_dir()}
    return sorted(expected - present)


def _fold_index(d: Path) -> int:
    try:
        return int(d.name.split("_", 1)[1])
    except (IndexError, ValueError):
        return 1 << 30


def ensemble_input_size(checkpoints: Sequence[Any]) -> tuple[int, int]:
    """The input size of an ensemble: the largest height and the largest width of the checkpoints' ``image_size``
    (checkpoint dicts, or any dicts with an ``image_size``)."""
    sizes = [tuple(int(v) for v in ck["image_size"]) for ck in checkpoints]
    return max(h for h, _ in sizes), max(w for _, w in sizes)


def ensemble_of_checkpoints(files: Sequence[Path], first: nn.Module, *,
                            tta: str | None = "none") -> tuple[ProbabilityEnsemble, tuple[int, int]]:
    """:class:`ProbabilityEnsemble` of ``first`` (already built from ``files[0]``) and the models of ``files[1:]``,
    and the input size it takes (:func:`ensemble_input_size`; inputs normalised as ``files[0]`` was trained).

    The members must agree with ``files[0]`` on the label map. A member trained at another size than the ensemble's
    gets a :class:`Resize` to its own; one trained with another normalisation a :class:`Renormalize` from the
    first's to its own (see the module docstring).

    Raises:
        CheckpointError: naming the file that differs (or cannot be built) and what differs.
    """
    from mambaseg.checkpoint import CheckpointError, build_model, load_checkpoint

    models: list[nn.Module] = []
    meta: list[dict[str, Any]] = []  # what each member needs besides its weights (one state dict in memory at a time)
    for f in files:
        ck = load_checkpoint(f, map_location="cpu")
        if not ck.get("image_size"):
            raise CheckpointError(f"{f}: no 'image_size' entry; cannot preprocess inputs")
        if meta and not _same(ck.get("label_map"), meta[0]["label_map"]):
            raise CheckpointError(f"{f}: label_map {ck.get('label_map')!r} differs from {meta[0]['label_map']!r} of "
                                  f"{files[0]}; only checkpoints trained on the same task can be ensembled")
        try:
            models.append(first if not meta else build_model(ck))
        except CheckpointError as e:
            raise CheckpointError(f"{f}: {e}") from e
        meta.append({k: ck.get(k) for k in ("image_size", "label_map", "normalization")})
        del ck
    size = ensemble_input_size(meta)
    inputs: list[nn.Module | None] = []
    for f, m in zip(files, meta):
        maps: list[nn.Module] = []
        if tuple(int(v) for v in m["image_size"]) != size:
            maps.append(Resize(m["image_size"]))
        if not _same(m["normalization"], meta[0]["normalization"]):
            try:
                maps.append(Renormalize(meta[0]["normalization"], m["normalization"]))
            except ValueError as e:
                raise CheckpointError(f"{f}: {e}") from e
        inputs.append(None if not maps else maps[0] if len(maps) == 1 else nn.Sequential(*maps))
    return ProbabilityEnsemble(models, tta=tta, inputs=inputs), size


def _same(a: Any, b: Any) -> bool:
    return a == b or (a is None and b is None)


def load_ensemble(checkpoints: Sequence[str | Path], *, tta: str | None = "none", device: str | torch.device = "auto",
                  threshold: float = 0.5, which: str = "last", postprocess: Any = None) -> Any:
    """A :class:`~mambaseg.inference.Predictor` over one or several checkpoints (files or CV roots, each standing
    for its folds' ``which`` checkpoints) with ``tta``.

    One checkpoint without TTA gives exactly :func:`mambaseg.load`'s predictor (the plain model, no wrapper).
    """
    from mambaseg.inference.predictor import Predictor

    flip_dims(tta)  # validate the mode and the post-processing before looking for or loading anything
    parse_postprocess(postprocess)
    files = expand_checkpoints(checkpoints, which=which)
    if len(files) == 1 and tta_mode(tta) == "none":
        return Predictor.from_checkpoint(files[0], device=device, threshold=threshold, postprocess=postprocess)
    first = Predictor.from_checkpoint(files[0], device="cpu", threshold=threshold)
    ens, size = ensemble_of_checkpoints(files, first.model, tta=tta)
    info = dict(first.info)
    info.update({"checkpoint": [str(f) for f in files], "ensemble": len(files), "tta": ens.tta})
    return Predictor(ens, image_size=size, normalization=first.normalization,
                     label_map=first.label_map, device=device, threshold=threshold, info=info,
                     postprocess=postprocess)
