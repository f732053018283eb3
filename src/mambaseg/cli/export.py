"""``mambaseg export``: a registered model or a checkpoint to ONNX, optionally checked against onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mambaseg.cli._common import CLIError, console, handle_errors, parse_image_size


@handle_errors
def export(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Registered model name (fresh weights)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-k", help="best.pt / best.safetensors of a run."),
    format: str = typer.Option("onnx", "--format", "-f", help="Output format (onnx)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file, e.g. model.onnx."),
    check: bool = typer.Option(False, "--check", help="Run onnxruntime beside eager: max abs diff (< 1e-4) and "
                               "median latency of both."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="H,W of the exported input (default: the "
                                             "model's native size or the checkpoint's training size)."),
    in_chans: Optional[int] = typer.Option(None, "--in-chans", help="Input channels for --model (default native)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Output classes for --model (default 1)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset."),
    exporter: str = typer.Option("auto", "--exporter", help="auto (TorchScript, dynamo when onnxruntime cannot load "
                                 "that graph), torchscript or dynamo (needs onnxscript)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads for the --check timings."),
    repeats: int = typer.Option(10, "--repeats", help="Timed runs for --check (median after a warm-up)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files (refused otherwise)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Export to ONNX (the traceable PyTorch scan graph, fixed input shape); --check verifies it with onnxruntime.

    The file carries mambaseg.* metadata (input size, normalisation, labels rule, label map: docs/cpu_inference.md).
    An existing --out is never replaced without --overwrite, and never when it is the --checkpoint itself."""
    import importlib.util

    from mambaseg.export import export_metadata, export_onnx, load_for_export
    from mambaseg.utils.files import json_text

    if format.lower() != "onnx":
        raise CLIError(f"--format {format!r} is not supported; the only format is onnx")
    if (model is None) == (checkpoint is None):
        raise CLIError("give exactly one of --model or --checkpoint")
    if checkpoint is not None and (num_classes is not None or in_chans is not None):
        given = " and ".join(o for o, v in (("--num-classes", num_classes), ("--in-chans", in_chans)) if v is not None)
        raise CLIError(f"{given} apply to --model; a --checkpoint keeps the classes and channels it was trained with")
    num_classes = 1 if num_classes is None else num_classes
    if checkpoint is not None:
        _check_checkpoint(checkpoint, out)
    if importlib.util.find_spec("onnx") is None:
        raise CLIError("export needs onnx (it writes the file's metadata): pip install 'mambaseg[onnx]'")
    if check and importlib.util.find_spec("onnxruntime") is None:
        raise CLIError("--check needs onnxruntime: pip install 'mambaseg[onnx]'")
    size = parse_image_size(image_size)
    from mambaseg.checkpoint import CheckpointError

    try:
        net, shape, desc = load_for_export(model, checkpoint, num_classes=num_classes, in_chans=in_chans, size=size)
    except CheckpointError as e:
        raise CLIError(f"--checkpoint: {e}") from None
    metadata = export_metadata(net, shape, checkpoint)
    report = export_onnx(net, out, shape, opset=opset, exporter=exporter, check=check, repeats=repeats,
                         threads=threads, metadata=metadata, overwrite=overwrite)
    if as_json:
        typer.echo(json_text(report.to_dict()))
        return
    console.print(f"wrote {report.path} ({report.bytes / 2**20:.1f} MiB) from {desc}, input "
                  f"{list(report.input_shape)}, opset {report.opset}, {report.exporter} exporter, "
                  f"{report.export_seconds:.1f} s", highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    if check:
        console.print(f"onnxruntime parity: max abs diff {report.max_abs_diff:.2e} vs eager (torch scan), "
                      f"{report.max_abs_diff_auto:.2e} vs eager (auto scan backend)", highlight=False)
        console.print(f"latency on {report.threads} thread(s), median of {repeats}: eager {report.eager_ms:.1f} ms, "
                      f"onnxruntime {report.onnxruntime_ms:.1f} ms", highlight=False)


def _check_checkpoint(checkpoint: Path, out: Path) -> None:
    """--out is not the --checkpoint file (an export would replace the trained weights). Whether it is a checkpoint at
    all is load_checkpoint's to say (named with --checkpoint below)."""
    from mambaseg.utils.files import same_file

    if same_file(out, checkpoint):
        raise CLIError(f"--out {str(out)!r} is the --checkpoint file itself; the export would replace the trained "
                       "weights: choose another --out (e.g. model.onnx)")

