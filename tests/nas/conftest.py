"""Fixtures shared by the search tests: a small synthetic 2-D set and the ``mambaseg search`` call on it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

#: a SliceMamba small enough for a CPU search in seconds
TINY_SET = "model.kwargs={dims: 8, depths: [1, 1, 1, 1], depths_decoder: [1, 1, 1, 1], d_state: 4, drop_path_rate: 0.0}"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mambaseg.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", n_train=12, n_val=4, size=(40, 40), seed=1)


@pytest.fixture()
def search(synth):
    """``search(out, extra=())``: ``mambaseg search`` of the tiny SliceMamba on ``synth`` (1 supernet epoch, 2
    generations of 4) into ``out``, with ``extra`` arguments; returns the CliRunner result."""
    from mambaseg.cli import app

    def run(out, extra=()):
        args = ["search", "--data", str(synth), "--supernet-epochs", "1", "--generations", "2", "--population", "4",
                "--image-size", "32", "--batch-size", "4", "--out", str(out), "--device", "cpu", "--num-workers",
                "0", "--seed", "7", "--set", TINY_SET, *extra]
        return CliRunner().invoke(app, args)

    return run
