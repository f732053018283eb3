from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Tests use tiny tensors and some start child processes (torchrun, the Triton interpreter); one intra-op thread per
# process avoids OpenMP oversubscription on small CI machines (this is test configuration, not library behaviour).
torch.set_num_threads(1)
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test cleanly when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def benchmark_module():
    """``load(name)`` imports ``benchmarks/<name>.py`` (the scripts are not a package); skips the test cleanly when
    ``benchmarks/`` is not beside the tests (installed package)."""
    def load(name: str):
        path = REPO / "benchmarks" / f"{name}.py"
        if not path.is_file():
            pytest.skip(f"{path} not found (benchmarks/ is not beside the tests)")
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture(scope="session")
def cv_smoke_run(benchmark_module):
    """``run(cache, runs, results, recipe=..., seed=0, **kw)``: benchmarks/cv_ph2_gpu.py's ``run_one`` with its own
    --smoke model settings on a smoke cache (2 folds of one epoch on the CPU, final weights, flip TTA); ``kw`` are
    further ``run_one`` arguments (``only_folds``, ``score_only``, ...)."""
    cv = benchmark_module("cv_ph2_gpu")

    def run(cache, runs, results, recipe: str = "vmunet_ph2_best", seed: int = 0, **kw):
        return cv.run_one(recipe, seed, folds=2, split_seed=0, caches={(256, 256): str(cache)}, runs=runs,
                          results=results, minutes_per_fold=None, epochs=1, extra=list(cv.SMOKE_SETS), device="cpu",
                          tta=True, checkpoints=("last",), **kw)

    return run


@pytest.fixture(scope="session")
def cv_script():
    """``run(*args)``: benchmarks/cv_ph2_gpu.py with ``args`` in a fresh interpreter (the package from ``src``); the
    finished process (exit code, stdout, stderr)."""
    import os
    import subprocess
    import sys

    script = REPO / "benchmarks" / "cv_ph2_gpu.py"
    if not script.is_file():
        pytest.skip(f"{script} not found (benchmarks/ is not beside the tests)")

    def run(*args: str):
        # timeout: a generous bound against a hang, not a speed check
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")})

    return run


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
