"""Fixtures of the fault-injection suite: tiny datasets, a trained tiny checkpoint, CLI runners, checksums."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from engine_helpers import TINY, register_tiny, tiny_config  # noqa: E402

from mambaseg.cli import app  # noqa: E402
from mambaseg.cli._common import state  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _tiny_model_and_no_debug():
    """The tiny registered conv net for every case (removed again afterwards), and the CLI out of debug mode."""
    from mambaseg.models import _registry

    register_tiny()
    state.debug = False
    yield
    state.debug = False
    _registry._REGISTRY.pop(TINY, None)


@pytest.fixture(scope="session")
def syn_data(tmp_path_factory) -> Path:
    """6 train + 3 val synthetic 32x32 images (read-only: copy it to damage it)."""
    from mambaseg.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("rel") / "data", n_train=6, n_val=3, size=(32, 32), seed=2)


@pytest.fixture()
def data_copy(syn_data, tmp_path) -> Path:
    """A private copy of the synthetic dataset, free to damage."""
    import shutil

    return Path(shutil.copytree(syn_data, tmp_path / "data"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, syn_data) -> Path:
    """Run directory of a finished 1-epoch run of the tiny model (read-only)."""
    from mambaseg.engine import train

    register_tiny()
    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny_config(syn_data, out, **{"train.epochs": 1}), show_progress=False)
    return out


@pytest.fixture()
def run_copy(trained, tmp_path) -> Path:
    """A private copy of the finished run."""
    import shutil

    return Path(shutil.copytree(trained, tmp_path / "run"))


def make_acdc(root: Path, *, n_train: int = 3, shape=(24, 20), seed: int = 0) -> Path:
    """Tiny ACDC (h5) tree: training slices of one patient, 2 validation volumes."""
    import h5py

    rng = np.random.default_rng(seed)
    (root / "data" / "slices").mkdir(parents=True)

    def blob(d: int | None) -> tuple[np.ndarray, np.ndarray]:
        full = (d, *shape) if d else shape
        img = rng.random(full).astype(np.float32)
        lab = np.zeros(full, np.uint8)
        sl = (slice(None),) if d else ()
        lab[sl + (slice(4, 16), slice(4, 14))] = 2
        lab[sl + (slice(6, 12), slice(6, 10))] = 3
        lab[sl + (slice(16, 22), slice(4, 10))] = 1
        return img, lab

    names = []
    for i in range(n_train):
        img, lab = blob(None)
        name = f"patient001_frame01_slice_{i}"
        with h5py.File(root / "data" / "slices" / f"{name}.h5", "w") as f:
            f["image"], f["label"] = img, lab
        names.append(name)
    (root / "train_slices.list").write_text("\n".join(names) + "\n")
    vols = ["patient002_frame01", "patient002_frame02"]
    for v in vols:
        img, lab = blob(3)
        with h5py.File(root / "data" / f"{v}.h5", "w") as f:
            f["image"], f["label"] = img, lab
    (root / "val.list").write_text("\n".join(vols) + "\n")
    return root


def acdc_config(root: Path, out: Path, **overrides):
    sets = {"model.num_classes": None, "loss.name": "ce_dice", "train.best_metric": "dice", "data.validate": True,
            "train.epochs": 1}
    sets.update(overrides)
    return tiny_config(root, out, **sets)


def checksums(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under ``roots`` (the files that must survive a fault)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli(*args) -> tuple[int, str]:
    """Run a CLI verb in-process; (exit code, everything printed)."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    text = res.output + (res.stderr if res.stderr_bytes is not None else "")
    assert "Traceback" not in text, text
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, text


def cli_subprocess(*args, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """``python -m mambaseg ARGS`` in a child process importing this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "mambaseg", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)
