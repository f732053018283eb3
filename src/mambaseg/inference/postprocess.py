"""Post-processing of predicted label maps (2-D images or 3-D volumes), one foreground class at a time.

Steps, applied in this order whatever order they are named in:

* ``largest_component``: keep only the largest connected component of each foreground class; the pixels of its
  other components become background (0). Connectivity is full (8 neighbours in 2-D, 26 in 3-D); of two equally
  large components the one met first in C order is kept. nnU-Net offers the same step and decides on the
  cross-validation whether to use it; here the choice is the user's (``evaluate --cv --postprocess`` shows what it
  does to the out-of-fold predictions, and choosing by that number is a selection on those cases).
* ``fill_holes``: background pixels enclosed by a foreground class (not connected to the border through background)
  take that class. Pixels of another foreground class are never changed.

A single lesion per image (dermoscopy) or one connected organ are the cases these steps are meant for; they can
remove true lesions where an image holds several.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["POSTPROCESS_STEPS", "parse_postprocess", "postprocess_labels"]

POSTPROCESS_STEPS = ("largest_component", "fill_holes")


def parse_postprocess(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Steps from ``None``, ``"none"``, ``"largest_component,fill_holes"`` or a list of names (validated, in the
    order they are applied)."""
    if spec is None:
        return ()
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n and n != "none"]
    bad = [n for n in names if n not in POSTPROCESS_STEPS]
    if bad:
        raise ValueError(f"unknown post-processing step(s) {bad}; valid: none or a comma-separated list of "
                         f"{', '.join(POSTPROCESS_STEPS)}")
    return tuple(s for s in POSTPROCESS_STEPS if s in names)


def postprocess_labels(labels: np.ndarray, steps: str | Sequence[str] | None) -> np.ndarray:
    """Apply the post-processing ``steps`` to a label map (class indices, 0 = background; 2-D or 3-D).

    Returns a new array of the same shape and dtype (the input itself when there is no step).
    """
    steps = parse_postprocess(steps)
    labels = np.asarray(labels)
    if not steps:
        return labels
    if labels.ndim not in (2, 3):
        raise ValueError(f"post-processing takes a 2-D or 3-D label map, got shape {labels.shape}")
    from scipy import ndimage

    out = labels.copy()
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    for c in np.unique(labels):
        if c == 0:
            continue
        mask = labels == c
        if "largest_component" in steps:
            comp, n = ndimage.label(mask, structure=structure)
            if n > 1:
                sizes = np.bincount(comp.ravel())[1:]
                keep = int(np.argmax(sizes)) + 1
                out[mask & (comp != keep)] = 0
                mask = comp == keep
        if "fill_holes" in steps:
            filled = ndimage.binary_fill_holes(mask)
            out[filled & ~mask & (out == 0)] = c
    return out
