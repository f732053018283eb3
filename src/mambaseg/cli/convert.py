"""``mambaseg convert``: official checkpoints (ImageNet encoders, the papers' trained networks) -> our checkpoint
(the library side: :func:`mambaseg.convert.convert_checkpoint`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from mambaseg.cli._common import CLIError, console, handle_errors

__all__ = ["convert"]


def _parse_options(items: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise CLIError(f"--option expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            opts[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            opts[k.strip()] = v
    return opts


def _print_formats() -> None:
    from rich.table import Table

    from mambaseg.models._convert import list_converters

    table = Table(title="checkpoint formats (--from)")
    table.add_column("format", style="bold", no_wrap=True)
    table.add_column("converts", ratio=1)
    table.add_column("published at", ratio=1, overflow="fold")  # URLs kept whole, folded over lines
    for info in list_converters():
        table.add_row(info.name, info.description, info.source)
    console.print(table)


def _formats_json() -> str:
    from mambaseg.models._convert import list_converters
    from mambaseg.utils.files import json_text

    return json_text([{"name": i.name, "description": i.description, "source": i.source} for i in list_converters()])


@handle_errors
def convert(
    src: Optional[Path] = typer.Argument(None, help="Official weights file (.pth/.pt/.ckpt/.safetensors)."),
    fmt: Optional[str] = typer.Option(None, "--from", help="Source format (see --list)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Checkpoint to write (.pt)."),
    partial: bool = typer.Option(False, "--partial", help="Accept the gaps the format documents (e.g. a decoder)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Re-initialise the classifier for N."),
    in_chans: Optional[int] = typer.Option(None, "--in-chans", help="Adapt the stem to C input channels."),
    stem: str = typer.Option("auto", "--stem", help="Stem adaptation: auto (sum for 1 channel), sum, mean, repeat."),
    arch: Optional[str] = typer.Option(None, "--arch", help="SliceMamba genes: arch.pkl, a JSON file or '3,3,1,...'."),
    key: Optional[str] = typer.Option(None, "--key", help="Container entry holding the weights (e.g. model_ema)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Converter option key=value (repeatable), e.g. "
                                      "target=vmbunet."),
    list_formats: bool = typer.Option(False, "--list", help="List the formats and where they are published."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files (refused otherwise)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report (with --list: the formats) as JSON."),
) -> None:
    """Convert an official checkpoint into a mambaseg checkpoint, printing loaded/missing/unexpected/reshaped keys.

    An existing --out is never replaced without --overwrite, and never when it is the input file itself."""
    if list_formats:
        if as_json:
            typer.echo(_formats_json())
        else:
            _print_formats()
        return
    if src is None or fmt is None or out is None:
        raise CLIError("convert needs IN, --from FORMAT and --out OUT (mambaseg convert --list shows the formats)")
    opts = _parse_options(option)
    if arch is not None:
        arch_path = Path(arch)
        if arch_path.suffix == ".json" and arch_path.is_file():
            opts["arch"] = json.loads(arch_path.read_text())
        else:
            opts["arch"] = arch
    from mambaseg.convert import convert_checkpoint

    report = convert_checkpoint(src, fmt, out, partial, num_classes=num_classes, in_chans=in_chans, stem=stem,
                                key=key, overwrite=overwrite, **opts)
    if as_json:
        from mambaseg.utils.files import json_text

        typer.echo(json_text({**report.to_dict(), "out": str(out)}))
        return
    console.print(report.summary(), highlight=False, markup=False, soft_wrap=True)
    console.print(f"wrote {out}", highlight=False, markup=False, soft_wrap=True)
