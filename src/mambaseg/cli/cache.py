"""``mambaseg cache``: pack a dataset at network size into one ``.npz`` that ``--data`` accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mambaseg.cli._common import CLIError, console, handle_errors, parse_image_size

#: the ``--set`` keys ``cache`` honours: how the masks of a 2-D folder map to classes (the rest of a run's settings
#: apply when training on the cache)
LABEL_KEYS = ("data.binary", "data.label_values")


@handle_errors
def cache(
    data: Path = typer.Option(..., "--data", "-d", help="Dataset root (2-D folders, ACDC, Synapse, nnU-Net raw)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (e.g. .gpucache/ph2_256.npz)."),
    image_size: str = typer.Option("256", "--image-size", help="Network input size: S or H,W."),
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated splits (default: train, val and "
                                         "test where present)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="How a 2-D folder's masks map to classes, as "
                                                  "for train: data.binary=false and data.label_values=[0,85,170,255] "
                                                  "(repeatable; other settings apply when training on the cache)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files (refused otherwise)."),
) -> None:
    """Write a compact cache of a dataset at the network input size (uint8), for machines without the files.

    2-D folders become an npz2d cache (images and masks per split, with the label mapping); volumetric datasets of
    single-channel images a volcache (training slices with the voxel spacing of each training case at the cached
    size, and evaluation volumes, labels of the volumes at their original size with their voxel spacing).
    Train and evaluate on it with ``--data OUT.npz``."""
    from mambaseg.data.layouts import detect_layout, write_cache
    from mambaseg.utils.progress import ProgressReporter

    size = parse_image_size(image_size)
    if size is None:
        raise CLIError("--image-size is required (S or H,W)")
    names = [s.strip() for s in splits.split(",") if s.strip()] if splits else None
    labels = _label_settings(overrides or [])
    root = data.expanduser()
    if not root.exists():
        raise CLIError(f"--data {root}: no such file or folder; expected a dataset root (2-D folders, ACDC, Synapse, "
                       "nnU-Net raw)")
    layout = detect_layout(root)
    if layout != "folder2d" and overrides:
        raise CLIError(f"--set {', '.join(overrides)}: the label settings apply to 2-D folder datasets; {root} is a "
                       f"{layout} dataset, whose classes come from the dataset itself")
    _check_out(out, root, overwrite)
    bars: dict = {}

    def progress(split: str, done: int, total: int) -> None:
        if split not in bars:
            for b in bars.values():
                b.__exit__(None, None, None)
            bars.clear()
            bars[split] = ProgressReporter(console, f"caching {split}", total=total).__enter__()
        bars[split].update(done, total)

    try:
        path, counts = write_cache(root, size, out, names, progress=progress, **labels)
    finally:
        for b in bars.values():
            b.__exit__(None, None, None)
    mib = path.stat().st_size / 2**20
    console.print(f"wrote {path} ({mib:.1f} MiB): " + ", ".join(f"{k} {v}" for k, v in counts.items()),
                  highlight=False)


def _label_settings(overrides: list[str]) -> dict[str, Any]:
    """``binary`` / ``label_values`` of ``--set data.binary=... --set data.label_values=[...]``, parsed and checked by
    the config machinery of ``train --set`` (a 2-D folder run reads ``label_values`` only when ``binary`` is false).

    Raises:
        CLIError: an override of another key, or without ``KEY=VALUE``.
        ConfigError: a value of the wrong type.
    """
    from mambaseg.configs import RunConfig, apply_overrides

    for ov in overrides:
        key = ov.partition("=")[0].strip()
        if "=" not in ov:
            raise CLIError(f"--set {ov}: expected KEY=VALUE, e.g. --set data.binary=false")
        if key not in LABEL_KEYS:
            raise CLIError(f"--set {key}: cache takes {' and '.join(LABEL_KEYS)} only (how a 2-D folder's masks map "
                           "to classes); other settings apply when training on the cache (train --set)")
    cfg = apply_overrides(RunConfig(), list(overrides))
    return {"binary": cfg.data.binary, "label_values": None if cfg.data.binary else cfg.data.label_values}


def _check_out(out: Path, data: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that cannot be written, before any image is read: a name without ``.npz`` (``--data``
    would not recognise the cache), the dataset itself, a folder, an existing file (unless ``--overwrite``), or a
    folder that cannot be created or written to."""
    from mambaseg.utils.files import check_output_file

    out = out.expanduser()
    if out.suffix != ".npz" and not out.is_dir():
        raise CLIError(f"--out {out}: expected a file name ending in .npz (--data recognises a cache by it), e.g. "
                       f"{out.with_name(out.name + '.npz')}")
    try:
        check_output_file(out, overwrite=overwrite, kind="a .npz cache file", example="cache.npz", source=data)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
