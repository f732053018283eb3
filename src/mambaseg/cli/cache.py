"""``mambaseg cache``: pack a dataset at network size into one ``.npz`` that ``--data`` accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mambaseg.cli._common import CLIError, console, handle_errors, parse_image_size


@handle_errors
def cache(
    data: Path = typer.Option(..., "--data", "-d", help="Dataset root (2-D folders, ACDC, Synapse, nnU-Net raw)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (e.g. .gpucache/ph2_256.npz)."),
    image_size: str = typer.Option("256", "--image-size", help="Network input size: S or H,W."),
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated splits (default: train, val and "
                                         "test where present)."),
) -> None:
    """Write a compact cache of a dataset at the network input size (uint8), for machines without the files.

    2-D folders become an npz2d cache (images and masks per split); volumetric datasets a volcache (training
    slices and evaluation volumes, labels of the volumes at their original size). Train and evaluate on it with
    ``--data OUT.npz``."""
    from mambaseg.data.layouts import write_cache
    from mambaseg.utils.progress import ProgressReporter

    size = parse_image_size(image_size)
    if size is None:
        raise CLIError("--image-size is required (S or H,W)")
    names = [s.strip() for s in splits.split(",") if s.strip()] if splits else None
    bars: dict = {}

    def progress(split: str, done: int, total: int) -> None:
        if split not in bars:
            for b in bars.values():
                b.__exit__(None, None, None)
            bars.clear()
            bars[split] = ProgressReporter(console, f"caching {split}", total=total).__enter__()
        bars[split].update(done, total)

    try:
        path, counts = write_cache(data, size, out, names, progress=progress)
    finally:
        for b in bars.values():
            b.__exit__(None, None, None)
    mib = path.stat().st_size / 2**20
    console.print(f"wrote {path} ({mib:.1f} MiB): " + ", ".join(f"{k} {v}" for k, v in counts.items()),
                  highlight=False)
