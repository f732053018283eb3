"""Train/val/test split resolution with a seeded, saved validation carve-out.

When a dataset has ``ROOT/val`` the folders are the split. When it has only ``ROOT/train`` (and maybe
``ROOT/test``), a validation subset is drawn from the training ids with a seeded generator and saved as a
JSON file; later calls read that file back, so every run on the dataset selects models on the same
images. The test split is never used to carve or choose anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mambaseg.data.files import DatasetError, list_split

__all__ = ["Splits", "resolve_splits", "default_split_file", "read_split_file", "read_split_ids", "SPLIT_FORMAT"]

SPLIT_FORMAT = "mambaseg-splits/1"


class Splits(dict):
    """``{"train": [...], "val": [...], ("test": [...])}`` of ids, plus where they came from.

    Attributes:
        path: the JSON split file used or written (None when the folders define every split).
        source: ``"folders"`` (ROOT/val exists), ``"file"`` (read from an existing split file) or
            ``"carved"`` (val drawn from train now and written to ``path``).
    """

    def __init__(self, data: dict[str, list[str]], *, path: Path | None, source: str) -> None:
        super().__init__(data)
        self.path = path
        self.source = source


def default_split_file(root: str | Path, *, val_fraction: float, seed: int) -> Path:
    """Where :func:`resolve_splits` stores a carved split by default: inside ``root``, named after the
    fraction and seed so that different settings never overwrite each other."""
    return Path(root) / f"mambaseg_split_val{val_fraction:g}_seed{seed}.json"


def _atomic_write_json(path: Path, obj: dict) -> None:
    from mambaseg.utils.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def read_split_ids(path: str | Path) -> dict[str, list[str]]:
    """The ``{"train", "val"}`` ids of a split file, checked to be lists of ids with none in both, but not against a
    dataset (:func:`read_split_file` does that too); ``DatasetError`` naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"split file {path} cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("train"), list) or not isinstance(data.get("val"), list):
        raise DatasetError(f"split file {path}: expected a JSON object with 'train' and 'val' lists of ids")
    train, val = [str(x) for x in data["train"]], [str(x) for x in data["val"]]
    overlap = sorted(set(train) & set(val))
    if overlap:
        raise DatasetError(f"split file {path}: ids in both train and val: {overlap[:5]}")
    return {"train": train, "val": val}


def _load_split_file(path: Path, train_ids: list[str]) -> dict[str, list[str]]:
    ids = read_split_ids(path)
    train, val = ids["train"], ids["val"]
    have = set(train_ids)
    listed = set(train) | set(val)
    if listed != have:
        new, gone = sorted(have - listed), sorted(listed - have)
        raise DatasetError(
            f"split file {path} does not match the training images on disk ({len(new)} not in the file, e.g. "
            f"{new[:3]}; {len(gone)} in the file but missing on disk, e.g. {gone[:3]}); delete the file to "
            "carve a new split or pass another split_file"
        )
    return {"train": train, "val": val}


def read_split_file(path: str | Path, pool: list[str]) -> dict[str, list[str]]:
    """The ``{"train", "val"}`` ids of a split file (e.g. a cross-validation fold's ``split.json``), checked to be
    disjoint and to cover exactly ``pool`` (the dataset's train + val cases); ``DatasetError`` naming the file."""
    return _load_split_file(Path(path), [str(i) for i in pool])


def _carve(ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    n = len(ids)
    n_val = int(round(val_fraction * n))
    n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = set(perm[:n_val].tolist())
    train = [x for i, x in enumerate(ids) if i not in val_idx]
    val = [x for i, x in enumerate(ids) if i in val_idx]
    return train, val


def resolve_splits(
    root: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 42,
    split_file: str | Path | None = None,
) -> Splits:
    """Ids of the train/val(/test) splits of a folder dataset.

    * ``ROOT/val`` exists and no ``split_file`` is given: the folders are the splits.
    * otherwise the pool of ids is ``ROOT/train`` (plus ``ROOT/val`` when it exists, i.e. when an explicit
      ``split_file`` asks for a custom split): if ``split_file`` exists its ``train``/``val`` lists are used,
      after checking they cover exactly the pool; if not, ``round(val_fraction * n)`` ids (at least 1, at
      most n - 1) are drawn with ``numpy.random.default_rng(seed)`` as validation ids and the split is
      written atomically to ``split_file`` (default: :func:`default_split_file`, inside ``root``) for reuse.

    ``test`` is listed from ``ROOT/test`` when it exists and is never used for carving.

    Args:
        root: dataset root holding ``train/`` (and optionally ``val/``, ``test/``).
        val_fraction: share of training ids moved to validation when carving, in (0, 1).
        seed: seed of the carve.
        split_file: JSON file to read or write.

    Returns:
        :class:`Splits` (a dict of sorted id lists; ``.path`` names the split file, if any).

    Raises:
        DatasetError: ``root/train`` is missing, too small to carve, the split file does not match the
            images, or the split file cannot be written (pass a writable ``split_file``).
    """
    root = Path(root)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not (root / "train").is_dir():
        raise DatasetError(f"{root}: no 'train' split folder; expected ROOT/train/{{images,masks}}")
    train_ids = list_split(root / "train").ids
    out: dict[str, list[str]] = {}
    val_dir = root / "val"
    if val_dir.is_dir() and split_file is None:
        out = {"train": train_ids, "val": list_split(val_dir).ids}
        path, source = None, "folders"
    else:
        if val_dir.is_dir():
            # explicit split file next to an existing val folder: it must cover train+val folders' ids
            val_ids = list_split(val_dir).ids
            pool = sorted(train_ids + val_ids)
        else:
            pool = train_ids
        path = Path(split_file) if split_file is not None else default_split_file(
            root, val_fraction=val_fraction, seed=seed
        )
        if path.is_file():
            out = _load_split_file(path, pool)
            source = "file"
        else:
            if len(pool) < 2:
                raise DatasetError(
                    f"{root / 'train'}: {len(pool)} image(s); need at least 2 to carve a validation split"
                )
            train, val = _carve(pool, val_fraction, seed)
            out = {"train": train, "val": val}
            record = {
                "format": SPLIT_FORMAT,
                "root": str(root.resolve()),
                "val_fraction": val_fraction,
                "seed": seed,
                "note": "val carved from train by mambaseg.data.resolve_splits; test is never used",
                "train": train,
                "val": val,
            }
            try:
                _atomic_write_json(path, record)
            except OSError as exc:
                raise DatasetError(
                    f"cannot write the split file {path} ({exc}); pass split_file= a writable path"
                ) from None
            source = "carved"
    out = {k: sorted(v) for k, v in out.items()}
    if (root / "test").is_dir():
        out["test"] = list_split(root / "test").ids
    return Splits(out, path=path, source=source)
