"""``mambaseg export`` / ``mambaseg convert``: the output file (never the input, never an existing file without
--overwrite, written atomically), user errors as one line naming the option, and ``convert --list``."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mambaseg.checkpoint import load_checkpoint, save_checkpoint
from mambaseg.cli import app
from mambaseg.models import create_model

runner = CliRunner()



def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _error_line(res) -> str:
    """The one ``error: ...`` line of a failed command (no traceback, non-zero exit)."""
    assert res.exit_code not in (0, None), res.output
    text = (res.stderr if res.stderr else res.output).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and "Warning" not in ln and not ln.startswith("  ")]
    assert lines and lines[-1].startswith("error: "), text
    assert "Traceback" not in res.output
    return lines[-1]


@pytest.fixture(scope="module")
def _tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("vmunet_tiny", num_classes=1)
    path = tmp_path_factory.mktemp("ck") / "best.pt"
    save_checkpoint(path, {"model": model.mambaseg_spec, "state_dict": model.state_dict(), "image_size": [64, 64]})
    return path


@pytest.fixture
def checkpoint(_tiny_checkpoint, tmp_path):
    """A tiny VM-UNet checkpoint (64 x 64), a copy of its own for each test."""
    path = tmp_path / "ck" / "best.pt"
    path.parent.mkdir()
    path.write_bytes(_tiny_checkpoint.read_bytes())
    return path


@pytest.fixture(scope="module")
def official_vmunet(tmp_path_factory):
    """A file as VM-UNet's train.py writes it (keys ``vmunet.*``), of the tiny model."""
    torch.manual_seed(0)
    model = create_model("vmunet_tiny", num_classes=1)
    path = tmp_path_factory.mktemp("official") / "best.pth"
    torch.save({"model": {"vmunet." + k: v for k, v in model.state_dict().items()}}, path)
    return path


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------ export


def test_export_refuses_to_replace_its_own_checkpoint(checkpoint, tmp_path):
    before = checkpoint.read_bytes()
    for extra in ([], ["--overwrite"]):
        line = _error_line(_run("export", "--checkpoint", checkpoint, "--out", checkpoint, *extra))
        assert "--out" in line and "--checkpoint" in line, line
        assert checkpoint.read_bytes() == before
    # the same file under another name (a hard link) is the same file
    link = tmp_path / "link.pt"
    link.hardlink_to(checkpoint)
    line = _error_line(_run("export", "--checkpoint", checkpoint, "--out", link, "--overwrite"))
    assert "--out" in line, line
    assert checkpoint.read_bytes() == before
    load_checkpoint(checkpoint)  # still a checkpoint


def test_export_refuses_an_existing_out_unless_overwrite(checkpoint, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    line = _error_line(_run("export", "--checkpoint", checkpoint, "--out", out))
    assert "--out" in line and "already exists" in line and "--overwrite" in line, line
    assert out.read_bytes() == b"keep me"
    res = _run("export", "--checkpoint", checkpoint, "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    import onnx

    onnx.checker.check_model(str(out))
    assert _leftovers(tmp_path) == []


def test_export_writes_atomically(tmp_path, monkeypatch):
    """An export that dies half-way through writing leaves nothing at the output path, and an existing file it was
    to replace unchanged (the ONNX file is written through the one atomic writer)."""
    from mambaseg.export import export_onnx, load_for_export

    def dies_half_way(model, args, f, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half an onnx file")
        raise RuntimeError("killed")

    monkeypatch.setattr(torch.onnx, "export", dies_half_way)
    model, shape, _ = load_for_export("vmunet_tiny", size=(32, 32))
    out = tmp_path / "m.onnx"
    with pytest.raises(RuntimeError, match="killed"):
        export_onnx(model, out, shape, exporter="torchscript", check=False)
    assert not out.exists() and _leftovers(tmp_path) == []
    out.write_bytes(b"previous export")
    with pytest.raises(RuntimeError, match="killed"):
        export_onnx(model, out, shape, exporter="torchscript", check=False, overwrite=True)
    assert out.read_bytes() == b"previous export" and _leftovers(tmp_path) == []


def test_export_out_errors_name_the_option(checkpoint, tmp_path):
    line = _error_line(_run("export", "--checkpoint", checkpoint, "--out", tmp_path))
    assert "--out" in line and "folder" in line and "file" in line, line
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = _error_line(_run("export", "--checkpoint", checkpoint, "--out", blocker / "sub" / "m.onnx"))
    assert "--out" in line and "folder" in line, line


def test_export_of_a_file_that_is_not_a_checkpoint(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("epoch 1 loss 0.5\n")
    line = _error_line(_run("export", "--checkpoint", log, "--out", tmp_path / "m.onnx"))
    assert "--checkpoint" in line and "not a checkpoint" in line, line
    assert "pop from empty list" not in line
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("opset", ["5", "9"])
def test_export_opset_errors_are_short(checkpoint, tmp_path, opset):
    """An unusable --opset: the error is one line naming --opset and the exporter's first line (torch itself may
    still log its TorchScript graph on the process's stdout: that is torch's output, which the library leaves
    alone), and nothing is written."""
    res = _run("export", "--checkpoint", checkpoint, "--out", tmp_path / "m.onnx", "--opset", opset)
    line = _error_line(res)
    assert "--opset" in line and opset in line, line
    assert len(res.output.splitlines()) < 40
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------ convert


def test_convert_refuses_to_replace_its_input(official_vmunet, tmp_path):
    copy = tmp_path / "copy.pth"
    copy.write_bytes(official_vmunet.read_bytes())
    before = copy.read_bytes()
    for extra in ([], ["--overwrite"]):
        line = _error_line(_run("convert", "--from", "vmunet", copy, "--out", copy, *extra))
        assert "--out" in line and "input" in line, line
        assert copy.read_bytes() == before


def test_convert_refuses_an_existing_out_unless_overwrite(official_vmunet, tmp_path):
    out = tmp_path / "vmunet.pt"
    out.write_bytes(b"keep me")
    line = _error_line(_run("convert", "--from", "vmunet", official_vmunet, "--out", out))
    assert "--out" in line and "already exists" in line and "--overwrite" in line, line
    assert out.read_bytes() == b"keep me"
    res = _run("convert", "--from", "vmunet", official_vmunet, "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out)["model"]["name"] == "vmunet"
    line = _error_line(_run("convert", "--from", "vmunet", official_vmunet, "--out", tmp_path))
    assert "--out" in line and "folder" in line, line


def test_convert_library_refuses_existing_out(official_vmunet, tmp_path):
    from mambaseg.convert import convert_checkpoint

    out = tmp_path / "vmunet.pt"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_checkpoint(official_vmunet, "vmunet", out)
    assert out.read_bytes() == b"keep me"
    convert_checkpoint(official_vmunet, "vmunet", out, overwrite=True)
    assert load_checkpoint(out)["model"]["name"] == "vmunet"
    with pytest.raises(ValueError, match="input"):
        convert_checkpoint(out, "vmunet", out, overwrite=True)


def test_convert_list_json_and_full_sources():
    from mambaseg.models._convert import list_converters

    infos = list_converters()
    res = _run("convert", "--list", "--json")
    assert res.exit_code == 0, res.output
    listed = json.loads(res.output)
    assert [d["name"] for d in listed] == [i.name for i in infos]
    assert [d["source"] for d in listed] == [i.source for i in infos]
    assert all(d["description"] for d in listed)
    res = _run("convert", "--list")  # not a terminal: 80 columns
    assert res.exit_code == 0, res.output
    assert "\u2026" not in res.output  # no column cut with an ellipsis
    rows: list[list[str]] = []  # the cells of each table row, its lines' pieces joined
    for line in res.output.splitlines():
        cells = line.split("\u2502")
        if len(cells) != 5:
            continue
        if cells[1].strip():
            rows.append(["", "", ""])
        for i in range(3):
            rows[-1][i] += cells[i + 1].strip()
    assert [r[0] for r in rows] == [i.name for i in infos]
    for row, info in zip(rows, infos):
        assert row[2].replace(" ", "") == info.source.replace(" ", ""), (row[2], info.source)


def test_export_refuses_model_options_with_a_checkpoint(checkpoint, tmp_path):
    # --num-classes / --in-chans describe a fresh --model; with a checkpoint they were ignored without a word
    res = _run("export", "--checkpoint", checkpoint, "--out", tmp_path / "m.onnx", "--num-classes", 3)
    line = _error_line(res)
    assert res.exit_code != 0 and "--num-classes apply to --model" in line, line
    assert not (tmp_path / "m.onnx").exists()
