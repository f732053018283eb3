"""``mambaseg predict``: masks (and overlays) for an image, a folder of images, or 3-D volumes."""

from __future__ import annotations

from pathlib import Path

import typer

from mambaseg.cli._common import FOLD_CHECKPOINT_HELP, CLIError, console, handle_errors
from mambaseg.cli.threads import THREADS_HELP, apply_threads


@handle_errors
def predict(
    checkpoint: list[Path] = typer.Option(..., "--checkpoint", "-k", help="best.pt / best.safetensors of a run; "
                                          "repeat it (or name a CV root: its folds' --fold-checkpoint) to average "
                                          "the probabilities of several."),
    input: Path = typer.Option(..., "--input", "-i", help="An image file or a folder of images, or a volume file or "
                               "a folder of volumes (nnU-Net channel files <case>_0000, <case>_0001, ... for a "
                               "checkpoint of several channels)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (masks/ and overlays/ are created)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", help="Images per forward pass."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Also write colour overlays."),
    threshold: float = typer.Option(0.5, "--threshold", help="Probability threshold (binary models)."),
    intensity: str = typer.Option("auto", "--intensity", help="3-D inputs: intensity mapping to [0, 1] "
                                  "(auto = as the training data, minmax, ct, none)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files (refused otherwise)."),
    tta: str = typer.Option("none", "--tta", help="Test-time augmentation: none or flip (mirrorings averaged in "
                            "probability space; volumes slice by slice)."),
    postprocess: str = typer.Option("none", "--postprocess", help="Post-processing of each mask / whole volume: "
                                    "none, or a comma-separated list of largest_component (keep each class's "
                                    "largest connected component) and fill_holes."),
    fold_checkpoint: str = typer.Option("last", "--fold-checkpoint", help=FOLD_CHECKPOINT_HELP),
    save_probabilities: bool = typer.Option(False, "--save-probabilities", help="Also write each prediction's "
                                            "probabilities, float16 .npz: OUT/probabilities/<name>.npz (images, at "
                                            "their size), OUT/probabilities/<id>.npz (volumes, at the network size)."),
    threads: str = typer.Option("auto", "--threads", help=THREADS_HELP),
) -> None:
    """Predict masks; writes OUT/masks/<name>.png (label-map values, e.g. 0/255) and OUT/overlays/<name>.png.

    A 3-D volume (.nii/.nii.gz/.h5/.npz/.npy) is predicted slice by slice and written as OUT/<id>_pred.<ext>
    (NIfTI keeps the source geometry, qform/sform codes included; h5/npz store its spacing and affine), or to OUT
    itself when OUT is a volume file name. A 4-D NIfTI (X, Y, Z, 1) gives a 3-D label map. A checkpoint trained on an
    nnU-Net dataset of several channels reads one file per channel, <case>_0000, <case>_0001, ..., grouped by case
    and written as OUT/<case>_pred.<ext>.

    Existing output files are never replaced without --overwrite; OUT/masks may not be the input data's own masks
    folder; inputs sharing a name (a.jpg, a.png) are written as a_jpg.png and a_png.png."""
    from mambaseg.utils.progress import ProgressReporter

    apply_threads(threads, device)
    if batch_size < 1:
        raise CLIError(f"--batch-size must be a positive integer, got {batch_size}")
    if not input.exists():
        raise CLIError(f"--input {str(input)!r} does not exist")

    from mambaseg.inference import load_ensemble

    predictor = load_ensemble(checkpoint, tta=tta, device=device, threshold=threshold, postprocess=postprocess,
                              which=fold_checkpoint)
    with ProgressReporter(console, "predicting") as bar:
        written = predictor.predict_path(input, out, batch_size=batch_size, overlays=overlays, intensity=intensity,
                                         overwrite=overwrite, progress=bar, save_probabilities=save_probabilities)
    if written and written[0].parent.name == "masks":
        console.print(f"wrote {len(written)} mask(s) to {Path(out) / 'masks'}"
                      + (f" and overlays to {Path(out) / 'overlays'}" if overlays else ""), highlight=False)
    else:
        for w in written:
            console.print(f"wrote {w}", highlight=False)
