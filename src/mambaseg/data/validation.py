"""Pre-training validation pass over a 2-D folder dataset.

Every image and mask is decoded once. Each problem names the file and what was expected:

==================  ==========================================================================
kind                meaning
==================  ==========================================================================
``unreadable``      the file cannot be decoded (corrupt, truncated, not an image)
``size_mismatch``   image and mask differ in width/height
``mask_values``     a mask holds values other than the expected ones (binary: {0,255}/{0,1})
``missing_mask``    an image has no mask (matched by stem, ISIC ``_segmentation`` suffix allowed)
``orphan_mask``     a mask matches no image (usually a naming mistake)
``duplicate_id``    two files share one stem (e.g. ``a.png`` and ``a.jpg``)
==================  ==========================================================================

Without ``skip_bad`` any problem raises :class:`~mambaseg.data.DatasetError` listing all of them; with
``skip_bad`` the returned report lists every skipped file and the datasets leave those pairs out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mambaseg.data.files import LOSSY_EXTENSIONS, DatasetError, Pair, list_split, mask_to_labels, read_image, read_mask

__all__ = ["Problem", "ValidationReport", "check_pair", "validate_dataset"]


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset."""

    kind: str
    split: str
    id: str
    path: Path
    message: str

    def __str__(self) -> str:
        return f"[{self.split}] {self.message}"


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_dataset`.

    Attributes:
        root: dataset root.
        checked: number of image files examined per split.
        problems: every problem found.
        skipped: the problems whose files were skipped (all of them when ``skip_bad``; else empty).
        notes: informational lines (e.g. "no val folder, val is carved from train").
    """

    root: Path
    checked: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad_ids(self, split: str) -> set[str]:
        """Ids of ``split`` that have at least one problem (orphan masks excluded: they have no image)."""
        return {p.id for p in self.problems if p.split == split and p.kind != "orphan_mask"}

    def summary(self, limit: int | None = None) -> str:
        total = sum(self.checked.values())
        head = f"dataset {self.root}: {total} image(s) checked, {len(self.problems)} problem(s)"
        lines = [head]
        shown = self.problems if limit is None else self.problems[:limit]
        lines += [f"  - {p}" for p in shown]
        if limit is not None and len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s) because of the problems above (skip_bad=True)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def check_pair(
    pair: Pair,
    split: str,
    *,
    binary: bool = True,
    label_values: Sequence[int] | None = None,
    in_chans: int = 3,
) -> list[Problem]:
    """Decode one image/mask pair and return its problems (empty list when it is fine)."""
    out: list[Problem] = []
    try:
        img = read_image(pair.image, in_chans)
    except DatasetError as exc:
        out.append(Problem("unreadable", split, pair.id, pair.image, str(exc)))
        img = None
    if pair.mask is None:
        out.append(
            Problem(
                "missing_mask",
                split,
                pair.id,
                pair.image,
                f"{pair.image}: image without mask; expected a mask named {pair.id}.<ext> or "
                f"{pair.id}_segmentation.<ext> in the masks folder",
            )
        )
        return out
    try:
        raw = read_mask(pair.mask)
    except DatasetError as exc:
        out.append(Problem("unreadable", split, pair.id, pair.mask, str(exc)))
        return out
    if img is not None and img.shape[:2] != raw.shape:
        (ih, iw), (mh, mw) = img.shape[:2], raw.shape
        out.append(
            Problem(
                "size_mismatch",
                split,
                pair.id,
                pair.mask,
                f"{pair.mask}: mask is {mw}x{mh} (WxH) but its image {pair.image.name} is {iw}x{ih}; "
                "expected the same size",
            )
        )
    try:
        mask_to_labels(
            raw,
            binary=binary,
            label_values=label_values,
            lossy=pair.mask.suffix.lower() in LOSSY_EXTENSIONS,
            path=pair.mask,
        )
    except DatasetError as exc:
        out.append(Problem("mask_values", split, pair.id, pair.mask, str(exc)))
    return out


def validate_dataset(
    root: str | Path,
    splits: Iterable[str] = ("train", "val"),
    *,
    binary: bool = True,
    skip_bad: bool = False,
    label_values: Sequence[int] | None = None,
    in_chans: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> ValidationReport:
    """Check every file of the given splits of ``root``.

    Args:
        root: dataset root (``ROOT/<split>/{images,masks}``).
        splits: split folders to check. A missing ``val`` (carved from ``train``) or ``test`` folder is
            noted, not an error; a missing ``train`` folder raises.
        binary: masks must be binary ({0,255} or {0,1}; JPEG masks are thresholded at 127).
        skip_bad: return the report listing the skipped files instead of raising.
        label_values: for multi-class masks, the allowed raw values (value ``label_values[k]`` = class k).
        in_chans: channels the images are read with (1 or 3).
        progress: optional callback ``progress(done, total)`` called after each pair.

    Returns:
        :class:`ValidationReport`.

    Raises:
        DatasetError: any problem was found and ``skip_bad`` is False (the message lists all of them), or
            the layout itself is wrong (no ``train`` folder, no ``images``/``masks`` sub-folder).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    report = ValidationReport(root=root)
    listings = []
    for split in splits:
        d = root / split
        if not d.is_dir():
            if split == "train":
                raise DatasetError(f"{root}: no 'train' split folder; expected ROOT/train/{{images,masks}}")
            if split == "val":
                report.notes.append("no val folder: the validation ids are carved from train (resolve_splits)")
            else:
                report.notes.append(f"no {split} folder: skipped")
            continue
        listings.append((split, list_split(d)))
    total = sum(len(lst.pairs) for _, lst in listings)
    done = 0
    for split, lst in listings:
        report.checked[split] = len(lst.pairs)
        for stem, paths in lst.duplicates:
            names = ", ".join(p.name for p in paths)
            report.problems.append(
                Problem(
                    "duplicate_id",
                    split,
                    stem,
                    paths[0],
                    f"{paths[0].parent}: several files share the id {stem!r} ({names}); expected one file per id",
                )
            )
        for pair in lst.pairs:
            report.problems.extend(
                check_pair(pair, split, binary=binary, label_values=label_values, in_chans=in_chans)
            )
            done += 1
            if progress is not None:
                progress(done, total)
        for m in lst.orphan_masks:
            report.problems.append(
                Problem(
                    "orphan_mask",
                    split,
                    m.stem,
                    m,
                    f"{m}: mask without image; expected an image with the stem {m.stem!r} (or without its "
                    "'_segmentation'/'_mask' suffix) in the images folder",
                )
            )
    if report.problems:
        if not skip_bad:
            raise DatasetError(report.summary())
        report.skipped = list(report.problems)
    return report
