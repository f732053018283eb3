"""Console output when stdout is not a terminal (nohup, SLURM, CI): a header, plain progress lines, summaries."""

from __future__ import annotations

import io
import json

from rich.console import Console
from typer.testing import CliRunner

from mambaseg.cli import app
from mambaseg.cli.evaluate import summary_line
from mambaseg.utils.progress import ProgressReporter

runner = CliRunner()
TINY = ["--model", "vmunet_tiny", "--set", "model.kwargs.dims=8", "--set", "model.kwargs.d_state=2",
        "--image-size", "32", "--batch-size", "2", "--threads", "1"]


def test_plain_lines_when_not_a_terminal():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    with ProgressReporter(console, "evaluating test (volumes)", total=40, every_s=3600) as bar:
        for i in range(1, 41):
            bar(i, 40)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("evaluating test (volumes): 1/40 (2%)")
    assert lines[-1].startswith("evaluating test (volumes): 40/40 (100%)")
    assert len(lines) == 2  # the first and the last; others only every `every_s` seconds


def test_train_and_evaluate_print_header_and_progress_lines(tmp_path):
    from mambaseg.data import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "syn", n_train=4, n_val=2, size=(32, 32), seed=0)
    out = tmp_path / "run"
    # on the CPU on every machine: the header line below is the CPU one (on a GPU machine auto would pick CUDA)
    res = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), "--epochs", "1", *TINY,
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    text = res.output
    assert "start: model vmunet_tiny (" in text and "params" in text and "steps/epoch" in text
    assert "device cpu (1 threads)" in text and "loss bce_dice" in text
    assert "epoch 1: 1/2 (50%)" in text and "epoch 1: 2/2 (100%)" in text  # plain step lines
    assert text.index("start: model") < text.index("epoch 1: 1/2")
    ev = runner.invoke(app, ["evaluate", "--checkpoint", str(out / "checkpoints" / "best.pt"), "--out",
                             str(tmp_path / "ev"), "--threads", "1", "--device", "cpu"])
    assert ev.exit_code == 0, ev.output
    assert "evaluating val (images): 2/2 (100%)" in ev.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert [r["id"] for r in m["per_image"]] == sorted(r["id"] for r in m["per_image"])
    assert len(m["per_image"]) == m["n_images"] == 2 and set(m["per_image"][0]) >= {"id", "dsc", "iou"}


def test_volume_summary_line_is_meaningful():
    r = {"dice": 0.8123, "hd95": 3.5, "hd95_units": "voxels", "n_volumes": 40,
         "classes": {"RV": {"dice": 0.7}, "Myo": {"dice": 0.8}, "LV": {"dice": 0.9}}}
    line = summary_line("test", r)
    assert line == "test: mean dice 0.8123  mean hd95 3.50 voxels  (RV 0.7000  Myo 0.8000  LV 0.9000)  (40 volumes)"
    assert "nan" not in line and "None" not in line
    assert summary_line("val", {"dice": 0.5, "iou": 0.4, "per_case_dice": 0.45, "n_images": 3}) == \
        "val: dice 0.5000  iou 0.4000  per-case dice 0.4500  (3 images)"
