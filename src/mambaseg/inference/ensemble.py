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
cross-validation roots (every ``ROOT/fold_*/checkpoints/best.pt``); the checkpoints must agree on the input size,
normalisation, channels and label map (the message names the first that differs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from mambaseg.inference.postprocess import parse_postprocess

__all__ = ["TTA_MODES", "ProbabilityEnsemble", "expand_checkpoints", "flip_dims", "load_ensemble", "tta_mode"]

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


class ProbabilityEnsemble(nn.Module):
    """Average of the probabilities of ``models`` over the mirrorings of ``tta``; returns logits of the average.

    Args:
        models: trained networks returning logits (B, C, H, W), all with the same C.
        tta: ``"none"`` or ``"flip"``.
    """

    def __init__(self, models: Sequence[nn.Module], tta: str | None = "none") -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)
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
        for model in self.members:
            for dims in self.flips:
                xi = torch.flip(x, dims) if dims else x
                logits = model(xi).float()
                if dims:
                    logits = torch.flip(logits, dims)
                p = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
                total = p if total is None else total + p
                n += 1
        assert total is not None
        return total / n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.probabilities(x)
        if p.shape[1] == 1:
            return torch.logit(p.clamp(_EPS, 1.0 - _EPS))
        return torch.log(p.clamp_min(_EPS))


def expand_checkpoints(paths: Sequence[str | Path], *, which: str = "best") -> list[Path]:
    """Checkpoint files from files and cross-validation roots (a folder with ``fold_*/checkpoints/<which>.pt``,
    expanded in fold order). Any other folder is passed on as it is, so loading it fails with the checkpoint loader's
    message (which names the file to pass).

    Raises:
        FileNotFoundError: a path does not exist, or a cross-validation root has no fold checkpoint yet.
    """
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
            out += folds
        elif list(p.glob("fold_*")):
            raise FileNotFoundError(f"--checkpoint {str(p)!r}: no fold of this cross-validation root has "
                                    f"checkpoints/{which}.pt yet")
        else:  # any other folder: the checkpoint loader names it and says which file to pass
            out.append(p)
    if not out:
        raise FileNotFoundError("no checkpoint given")
    return out


def _fold_index(d: Path) -> int:
    try:
        return int(d.name.split("_", 1)[1])
    except (IndexError, ValueError):
        return 1 << 30


def _same(a: Any, b: Any) -> bool:
    return a == b or (a is None and b is None)


def load_ensemble(checkpoints: Sequence[str | Path], *, tta: str | None = "none", device: str | torch.device = "auto",
                  threshold: float = 0.5, which: str = "best", postprocess: Any = None) -> Any:
    """A :class:`~mambaseg.inference.Predictor` over one or several checkpoints (files or CV roots) with ``tta``.

    One checkpoint without TTA gives exactly :func:`mambaseg.load`'s predictor (the plain model, no wrapper).
    """
    from mambaseg.checkpoint import CheckpointError, build_model, load_checkpoint
    from mambaseg.inference.predictor import Predictor

    flip_dims(tta)  # validate the mode and the post-processing before looking for or loading anything
    parse_postprocess(postprocess)
    files = expand_checkpoints(checkpoints, which=which)
    if len(files) == 1 and tta_mode(tta) == "none":
        return Predictor.from_checkpoint(files[0], device=device, threshold=threshold, postprocess=postprocess)
    first = Predictor.from_checkpoint(files[0], device="cpu", threshold=threshold)
    models = [first.model]
    ref = load_checkpoint(files[0], map_location="cpu")
    for f in files[1:]:
        ck = load_checkpoint(f, map_location="cpu")
        for key in ("image_size", "normalization", "label_map"):
            if not _same(ck.get(key), ref.get(key)):
                raise CheckpointError(f"{f}: {key} {ck.get(key)!r} differs from {ref.get(key)!r} of {files[0]}; "
                                      "only checkpoints trained on the same task with the same preprocessing can be "
                                      "ensembled")
        try:
            models.append(build_model(ck))
        except CheckpointError as e:
            raise CheckpointError(f"{f}: {e}") from e
    ens = ProbabilityEnsemble(models, tta=tta)
    info = dict(first.info)
    info.update({"checkpoint": [str(f) for f in files], "ensemble": len(files), "tta": ens.tta})
    return Predictor(ens, image_size=first.image_size, normalization=first.normalization,
                     label_map=first.label_map, device=device, threshold=threshold, info=info,
                     postprocess=postprocess)
