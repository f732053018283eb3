"""``mambaseg predict``: masks (and overlays) for an image or a folder of images, at their original size."""

from __future__ import annotations

from pathlib import Path

import typer

from mambaseg.cli._common import console, handle_errors


def _predict_volumes(predictor, input: Path, out: Path, batch_size: int, intensity: str) -> bool:
    """3-D inputs (NIfTI/h5/npz/npy volume, or a folder holding only such files): slice-wise prediction written
    as label volumes with the source geometry (:mod:`mambaseg.inference.volume`). Returns False for 2-D inputs."""
    from mambaseg.inference.volume import is_volume_path, predict_volume_file

    if input.is_file():
        vols = [input] if is_volume_path(input) else []
    elif input.is_dir():
        entries = sorted(p for p in input.iterdir() if p.is_file() and not p.name.startswith("."))
        vols = [p for p in entries if is_volume_path(p)]
        if len(vols) != len(entries):
            vols = []
    else:
        vols = []
    if not vols:
        return False
    values = list(predictor.label_map.values())
    if intensity == "auto":
        from mambaseg.inference.volume import intensity_for_checkpoint

        intensity = intensity_for_checkpoint(predictor.info.get("training") or {})
    for v in vols:
        target = out if len(vols) == 1 or not is_volume_path(out) else out.parent
        written = predict_volume_file(predictor.model, v, target, image_size=predictor.image_size,
                                      normalization=predictor.normalization, batch_size=batch_size,
                                      device=predictor.device, label_values=values, scale=intensity)
        console.print(f"wrote {written}", highlight=False)
    return True


@handle_errors
def predict(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-k", help="best.pt / best.safetensors of a run."),
    input: Path = typer.Option(..., "--input", "-i", help="An image file or a folder of images."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (masks/ and overlays/ are created)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", help="Images per forward pass."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Also write colour overlays."),
    threshold: float = typer.Option(0.5, "--threshold", help="Probability threshold (binary models)."),
    intensity: str = typer.Option("auto", "--intensity", help="3-D inputs: intensity mapping to [0, 1] "
                                  "(auto = as the training data, minmax, ct, none)."),
) -> None:
    """Predict masks; writes OUT/masks/<name>.png (label-map values, e.g. 0/255) and OUT/overlays/<name>.png.

    A 3-D volume (.nii/.nii.gz/.h5/.npz/.npy) is predicted slice by slice and written as OUT/<id>_pred.<ext>
    (NIfTI keeps the source geometry), or to OUT itself when OUT is a volume file name."""
    from rich.progress import Progress

    from mambaseg.inference import list_images, load

    predictor = load(checkpoint, device=device, threshold=threshold)
    if _predict_volumes(predictor, input, out, batch_size, intensity):
        return
    files = list_images(input)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("predicting", total=len(files))
        written = predictor.predict_folder(input, out, batch_size=batch_size, overlays=overlays,
                                           progress=lambda done, total: bar.update(task, completed=done))
    console.print(f"wrote {len(written)} mask(s) to {Path(out) / 'masks'}"
                  + (f" and overlays to {Path(out) / 'overlays'}" if overlays else ""), highlight=False)
