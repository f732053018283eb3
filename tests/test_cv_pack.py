"""benchmarks/cv_ph2_gpu.py --pack: what a device job brings back of a cross-validation, and that it restores."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cv_ph2_gpu.py"
if not SCRIPT.is_file():
    pytest.skip("benchmarks/ is not beside the tests (installed package)", allow_module_level=True)


def _write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _fold(root: Path, i: int, predictions: list[str], finished: bool = True) -> None:
    f = root / f"fold_{i}"
    _write(f / "config.yaml", f"fold {i}")
    _write(f / "checkpoints" / "last.pt")
    _write(f / "checkpoints" / "best.pt")
    _write(f / "tb" / "events.out")
    _write(f / "progress.png")
    if finished:
        _write(f / "metrics.json", json.dumps({"fold": i}))
    for p in predictions:
        _write(f / "oof" / p / "oof.json", json.dumps({"which": p}))
        _write(f / "oof" / p / "masks" / "a.png", p)
        _write(f / "oof" / p / "probabilities" / "a.npz", p)


@pytest.fixture()
def root(tmp_path):
    r = tmp_path / "cvruns" / "cv_ph2_r_s1"
    _write(r / "splits_final.json", "{}")
    _write(r / "cv_metrics.json", "{}")
    _fold(r, 0, ["last", "last_tta_flip", "best", "best_tta_flip"])  # complete
    _fold(r, 1, ["last"])  # stopped after metrics.json, before its TTA and best predictions
    _fold(r, 2, ["last", "last_tta_flip", "best", "best_tta_flip"], finished=False)  # still training
    return r


def _members(path: Path) -> set[str]:
    with tarfile.open(path) as t:
        return set(t.getnames())


def test_only_completely_predicted_folds_are_packed_without_checkpoints(root, tmp_path, benchmark_module):
    mod = benchmark_module("cv_ph2_gpu")
    (path,) = mod.pack_state(root, tmp_path / "out")
    names = _members(path)
    assert path.name == "cvstate_cv_ph2_r_s1.tgz"
    assert {n.split("/")[2] for n in names if "/fold_" in n} == {"fold_0"}
    assert "cvruns/cv_ph2_r_s1/splits_final.json" in names and "cvruns/cv_ph2_r_s1/cv_metrics.json" in names
    assert not [n for n in names if "checkpoints" in n or "/tb/" in n or n.endswith("progress.png")]
    assert "cvruns/cv_ph2_r_s1/fold_0/oof/last/probabilities/a.npz" in names
    assert "cvruns/cv_ph2_r_s1/fold_0/oof/last_tta_flip/probabilities/a.npz" in names
    assert "cvruns/cv_ph2_r_s1/fold_0/oof/best/masks/a.png" in names  # best is scored by its masks
    assert not [n for n in names if "/best" in n and "probabilities" in n]
    # the final weights alone, no TTA: the fold stopped before its TTA and best predictions is complete enough
    (path,) = mod.pack_state(root, tmp_path / "out", checkpoints=("last",), tta=False)
    assert {n.split("/")[2] for n in _members(path) if "/fold_" in n} == {"fold_0", "fold_1"}


def test_packed_state_restores_and_a_large_archive_comes_in_parts(root, tmp_path, benchmark_module):
    mod = benchmark_module("cv_ph2_gpu")
    (whole,) = mod.pack_state(root, tmp_path / "a")
    parts = mod.pack_state(root, tmp_path / "b", part_mib=600 / 2**20)  # 600-byte parts
    assert len(parts) > 1 and [p.name[-2:] for p in parts][:2] == ["aa", "ab"]
    assert not (tmp_path / "b" / whole.name).exists()
    joined = b"".join(p.read_bytes() for p in parts)
    with tarfile.open(fileobj=io.BytesIO(joined)) as t:
        assert set(t.getnames()) == _members(whole)
        t.extractall(tmp_path / "restored", filter="data")
    back = tmp_path / "restored" / "cvruns" / "cv_ph2_r_s1"
    assert (back / "fold_0" / "oof" / "last_tta_flip" / "probabilities" / "a.npz").read_text() == "last_tta_flip"
    assert (back / "fold_0" / "config.yaml").read_text() == "fold 0"
    # packing again replaces the parts of the previous call instead of mixing with them
    again = mod.pack_state(root, tmp_path / "b")
    assert [p.name for p in again] == [whole.name] and not list((tmp_path / "b").glob("*.part*"))


def test_nothing_finished_packs_nothing_and_the_cli_says_so(tmp_path, benchmark_module, cv_script):
    runs = tmp_path / "cvruns"
    _fold(runs / "cv_ph2_r_s3", 0, ["last"], finished=False)
    assert benchmark_module("cv_ph2_gpu").pack_state(runs / "cv_ph2_r_s3", tmp_path / "out") == []
    res = cv_script("--recipes", "r", "--seeds", "3", "--runs", str(runs), "--pack", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "cv_ph2_r_s3: no finished fold to pack" in res.stdout
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
