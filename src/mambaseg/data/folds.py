"""K-fold case splits for cross-validation, saved once and reused (nnU-Net's ``splits_final.json`` idea).

The pool of cases is every labelled case of the training and validation splits of a 2-D dataset (a folder
``ROOT/{train,val}`` or an ``npz2d`` cache holding ``train`` and ``val``); ``test`` is never part of it. The pool is
shuffled with ``numpy.random.default_rng(seed)`` and dealt into ``k`` folds whose sizes differ by at most one; fold
``i`` validates on its own cases and trains on all the others. The folds are written once to
``RUN_ROOT/splits_final.json``::

    {"format": "mambaseg-folds/1", "k": 5, "seed": 0, "data": "...", "layout": "folder2d",
     "folds": [{"train": [...], "val": [...]}, ...]}

and read back by every later fold and by the evaluation, after checking that they still describe the same pool
(same k, same seed, same case ids). The fold's ``{"train", "val"}`` lists are also written to
``RUN_ROOT/fold_i/split.json``, the ``data.split_file`` of that fold's run (folder datasets and ``npz2d`` caches
both accept a split file whose ids cover their train + val pool).

Volumetric layouts (ACDC, Synapse, nnU-Net raw, ``volcache``): a case is a volume. The pool is every labelled volume
of the training and validation splits, whether stored as a volume (ACDC ``val.list``, nnU-Net ``imagesTr``) or as
training slices named ``<case>_slice<z>`` (ACDC ``train_slices.list``, Synapse ``train_npz``), which are stacked back
into their volume when the case is held out (:func:`mambaseg.data.volumetric.fold_datasets`). Cases that differ only
by a ``_frame<NN>`` suffix (the cardiac phases of one ACDC patient, ``patient003_frame01`` and ``..._frame02``) are one
group and are always held out together (:func:`case_group`), as nnU-Net's ACDC folds do: a fold never trains on one
phase of a patient whose other phase it reports. Out-of-fold volumes are scored per volume (``mambaseg evaluate
--cv``; the training loop, a higher tier, reads these folds, never the other way round).

An nnU-Net raw folder that brings its own ``splits_final.json`` (nnU-Net's list of ``{"train", "val"}``) is
cross-validated on those folds, as nnU-Net would (``--folds`` must then equal their number).

Without ``--folds``, the train/val carve of a volumetric dataset that has no validation split of its own (nnU-Net raw
without ``splits_final.json``, Synapse without ``lists/val_vol.txt``) holds out whole groups by the same rule
(:func:`carve_groups`).

Each layout says what its pool is (``cases`` of :class:`mambaseg.data.layouts.DataLayout`, read by
:func:`mambaseg.data.layouts.case_pool`); its opener honours a fold's split file (``data.split_file``, read by
:func:`mambaseg.data.splits.read_split_file`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from mambaseg.data.files import DatasetError
from mambaseg.data.splits import _carve, read_split_file
from mambaseg.utils.files import atomic_write_json

__all__ = [
    "FOLDS_FILE",
    "FOLDS_FORMAT",
    "carve_groups",
    "case_group",
    "fold_split_file",
    "iter_cases",
    "load_folds",
    "make_folds",
    "npz_pool",
    "pool_groups",
    "resolve_folds",
    "select_pool",
    "take_cases",
]

FOLDS_FORMAT = "mambaseg-folds/1"
FOLDS_FILE = "splits_final.json"


def case_group(case: str) -> str:
    """The group a case is held out with: its id without a trailing ``_frame<NN>`` (the phases of one patient)."""
    return re.sub(r"_frame\d+$", "", str(case))


def carve_groups(cases: Sequence[str], val_fraction: float, seed: int, where: str | Path = "") -> list[str]:
    """The validation cases of a seeded train/val carve that holds out whole groups (:func:`case_group`, the rule of
    the folds): the phases of one patient land on the same side, never one in train and the other in val.

    The groups, in order of first appearance in ``cases``, are shuffled with ``numpy.random.default_rng(seed)`` and
    the first ``round(val_fraction * n_groups)`` of them (at least 1, at most ``n_groups - 1``) are held out. When no
    two cases share a group this is a plain per-case carve of ``cases`` in the order given.

    Args:
        cases: distinct case ids.
        val_fraction: share of the groups held out, in (0, 1).
        seed: seed of the shuffle.
        where: the dataset, named in the error.

    Returns:
        the held-out cases, sorted.

    Raises:
        ValueError: ``val_fraction`` outside (0, 1).
        DatasetError: fewer than 2 groups (nothing can be held out while keeping a group to train on).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cases = [str(c) for c in cases]
    units = list(dict.fromkeys(case_group(c) for c in cases))
    if len(cases) < 2:
        raise DatasetError(f"{where or 'the dataset'}: {len(cases)} labelled case(s); need at least 2 to carve a "
                           "validation split")
    if len(units) < 2:
        raise DatasetError(f"{where or 'the dataset'}: the {len(cases)} labelled cases are one patient ({units[0]!r}; "
                           "cases differing only by a _frame<NN> suffix are held out together); need at least 2 "
                           "patients to carve a validation split")
    held = set(_carve(units, val_fraction, int(seed))[1])  # the per-case carve of resolve_splits, over groups
    return sorted(c for c in cases if case_group(c) in held)


def make_folds(case_ids: list[str], k: int, seed: int,
               groups: Mapping[str, str] | None = None) -> list[dict[str, list[str]]]:
    """Deal ``case_ids`` into ``k`` folds after a seeded shuffle.

    Args:
        case_ids: distinct case ids (order does not matter: they are sorted first).
        k: number of folds, ``2 <= k <= len(case_ids)`` (``<=`` the number of groups with ``groups``).
        seed: seed of ``numpy.random.default_rng``.
        groups: ``{case: group}``; cases of one group go to the same fold (the sorted groups are shuffled and
            dealt instead of the cases). ``None``: every case is its own group.

    Returns:
        ``[{"train": sorted ids, "val": sorted ids}, ...]`` (``k`` entries); every id is in exactly one ``val``.
    """
    ids = sorted(str(c) for c in case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("case ids must be distinct for a fold split")
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"the number of folds (--folds) must be an integer >= 2, got {k!r}")
    units = sorted({groups[i] for i in ids}) if groups is not None else ids
    if k > len(units):
        what = "groups of cases (patients)" if groups is not None else "cases"
        raise ValueError(f"--folds {k} needs at least {k} {what}; the pool has {len(units)}")
    perm = np.random.default_rng(int(seed)).permutation(len(units))
    dealt = [{units[j] for j in perm[i::k]} for i in range(k)]
    held = [sorted(i for i in ids if (groups[i] if groups is not None else i) in d) for d in dealt]
    return [{"train": sorted(set(ids) - set(v)), "val": v} for v in held]


def load_folds(path: str | Path) -> dict[str, Any]:
    """Read and check a ``splits_final.json`` (folds disjoint, covering the same pool)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"fold file {path} cannot be read as JSON ({exc})") from None
    folds = record.get("folds") if isinstance(record, dict) else None
    if not isinstance(folds, list) or not folds or not all(
            isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("val"), list) for f in folds):
        raise DatasetError(f"fold file {path}: expected an object with 'folds': "
                           "[{'train': [...], 'val': [...]}, ...]")
    held = [str(i) for f in folds for i in f["val"]]
    if len(set(held)) != len(held):
        raise DatasetError(f"fold file {path}: a case is held out by two folds")
    for i, f in enumerate(folds):
        if set(map(str, f["train"])) | set(map(str, f["val"])) != set(held):
            raise DatasetError(f"fold file {path}: fold {i} does not cover the pool of cases (train + val)")
    return record


def resolve_folds(root: str | Path, pool: list[str], *, k: int, seed: int, data: str = "",
                  layout: str = "", groups: Mapping[str, str] | None = None,
                  given: list[dict[str, list[str]]] | None = None) -> dict[str, Any]:
    """The folds of a cross-validation root: read ``ROOT/splits_final.json`` if it exists (checking it matches
    ``pool``, ``k`` and ``seed``), else take the dataset's own folds ``given``
    (:func:`mambaseg.data.layouts.dataset_folds`; they must be ``k`` and partition ``pool``) or make them (cases of
    one of ``groups`` in one fold), and write the file.

    Raises:
        DatasetError: the saved file was made for other cases, another k or another seed (the message says which
            and how to start over).
    """
    path = Path(root) / FOLDS_FILE
    if path.is_file():
        record = load_folds(path)
        have = sorted(str(i) for f in record["folds"] for i in f["val"])
        problems = []
        if int(record.get("k", len(record["folds"]))) != k:
            problems.append(f"k={record.get('k')} (asked: {k})")
        if int(record.get("seed", seed)) != seed:
            problems.append(f"seed={record.get('seed')} (asked: {seed})")
        if have != sorted(pool):
            new, gone = sorted(set(pool) - set(have)), sorted(set(have) - set(pool))
            problems.append(f"other cases ({len(new)} not in the file, e.g. {new[:3]}; {len(gone)} in the file but "
                            f"not in the data, e.g. {gone[:3]})")
        if problems:
            raise DatasetError(f"{path} was made with {'; '.join(problems)}; use another --out, or delete the file "
                               "(and the folds trained on it) to start a new cross-validation")
        return record
    record = {"format": FOLDS_FORMAT, "k": k, "seed": seed, "data": str(data), "layout": layout,
              "n_cases": len(pool), "note": "seeded k-fold split over the train + val cases; test is never used",
              "folds": make_folds(pool, k, seed, groups) if given is None else _check_given(given, pool, k, data)}
    if given is not None:
        record["note"] = "the dataset's own folds (its splits_final.json), taken as they are; test is never used"
    elif groups is not None:
        record["n_groups"] = len(set(groups.values()))
        record["grouping"] = ("cases differing only by a _frame<NN> suffix (one patient's phases) are one group, "
                              "held out together")
    atomic_write_json(path, record)
    return record


def _check_given(given: list[dict[str, list[str]]], pool: list[str], k: int, data: str) -> list[dict[str, list[str]]]:
    where = f"{data}/splits_final.json" if data else "the dataset's splits_final.json"
    if len(given) < 2:
        raise DatasetError(f"{where} holds {len(given)} fold, too few to cross-validate (--folds needs >= 2): train "
                           f"without --folds to use its train/val split, or move the file away to draw {k} folds")
    if len(given) != k:
        raise DatasetError(f"{where} holds {len(given)} folds; pass --folds {len(given)} to use them (or move the "
                           f"file away to draw {k} folds)")
    for i, f in enumerate(given):
        both = sorted(set(f["train"]) & set(f["val"]))
        if both:
            raise DatasetError(f"{where}: fold {i} lists {len(both)} case(s) in both train and val: {both[:5]}")
    held = [c for f in given for c in f["val"]]
    if sorted(held) != sorted(pool) or len(set(held)) != len(held):
        raise DatasetError(f"{where}: its val lists must hold out every labelled case exactly once "
                           f"({len(held)} held out, {len(set(held))} distinct, {len(pool)} cases)")
    for i, f in enumerate(given):
        if sorted(f["train"]) != sorted(set(pool) - set(f["val"])):
            raise DatasetError(f"{where}: fold {i} does not train on every case it does not hold out")
    return [{"train": sorted(f["train"]), "val": sorted(f["val"])} for f in given]


def fold_split_file(root: str | Path, record: dict[str, Any], fold: int) -> Path:
    """Write (or rewrite, same content) ``ROOT/fold_<fold>/split.json`` = that fold's train/val ids; return it."""
    folds = record["folds"]
    if not 0 <= fold < len(folds):
        raise ValueError(f"--fold {fold} is out of range for {len(folds)} folds (0..{len(folds) - 1})")
    path = Path(root) / f"fold_{fold}" / "split.json"
    atomic_write_json(path, {"format": "mambaseg-splits/1", "fold": fold, "k": len(folds),
                             "train": folds[fold]["train"], "val": folds[fold]["val"]})
    return path


def pool_groups(pool: list[str]) -> dict[str, str] | None:
    """``{case: case_group(case)}`` when some cases share a group (e.g. ACDC phases), else ``None``."""
    groups = {c: case_group(c) for c in pool}
    return groups if len(set(groups.values())) < len(pool) else None


def take_cases(arrays: dict[str, np.ndarray], ids: list[str], path: str | Path = "") -> dict[str, np.ndarray]:
    """The arrays (``images``, ``masks``, ``orig_sizes`` when stored, ``ids``) of the cases ``ids`` of an ``npz2d``
    cache, looked up in its train + val pool, in the order given.

    Raises:
        DatasetError: an id is not in the pool (names up to five).
    """
    pool_splits = [s for s in ("train", "val") if f"{s}_ids" in arrays]
    where = {i: (s, j) for s in pool_splits for j, i in enumerate(str(x) for x in arrays[f"{s}_ids"])}
    unknown = [i for i in ids if i not in where]
    if unknown:
        raise DatasetError(f"{path}: {len(unknown)} case id(s) not in the cache's train/val splits: {unknown[:5]}")
    rows = [where[i] for i in ids]
    part: dict[str, np.ndarray] = {}
    for key in ("images", "masks", "orig_sizes"):
        if rows and all(f"{s}_{key}" in arrays for s in pool_splits):
            part[key] = np.stack([arrays[f"{s}_{key}"][j] for s, j in rows])
    part["ids"] = np.asarray(list(ids))
    return part


def npz_pool(arrays: Any) -> list[str]:
    """The ids of an ``npz2d`` cache's ``train`` then ``val`` cases (its cross-validation pool), from its arrays or
    the open file."""
    return [str(i) for s in ("train", "val") if f"{s}_ids" in arrays for i in arrays[f"{s}_ids"]]


def select_pool(arrays: dict[str, np.ndarray], split_file: str | Path, path: str | Path,
                splits: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """``npz2d`` with a split file: the arrays of each wanted split (``train``/``val``) taken by id from the cache's
    train + val pool (:func:`take_cases`); ``test`` stays as stored. The split file must cover exactly that pool."""
    sel = read_split_file(split_file, npz_pool(arrays))
    return {split: take_cases(arrays, sel[split], path) for split in splits if split in ("train", "val")}


def iter_cases(dataset: Any) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(id, image, mask)`` of every case of a 2-D dataset at the resolution its ground truth is stored at:
    a :class:`~mambaseg.data.FolderDataset2D` gives the original image (uint8, or float32 in [0, 1] for 16-bit
    files) and mask; an ``npz2d`` :class:`~mambaseg.data.cache.ArrayDataset2D` the cached (network-size) arrays.
    Masks are class indices."""
    if hasattr(dataset, "load_pair"):
        for i, case in enumerate(dataset.ids):
            img, mask = dataset.load_pair(i)
            yield case, img, mask
    elif hasattr(dataset, "images") and hasattr(dataset, "masks"):
        for i, case in enumerate(dataset.ids):
            yield case, dataset.images[i], np.asarray(dataset.masks[i])
    else:
        raise TypeError(f"{type(dataset).__name__} is not a 2-D dataset with stored cases (FolderDataset2D or "
                        "ArrayDataset2D)")
