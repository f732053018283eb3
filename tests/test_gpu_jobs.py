"""benchmarks/gpu_jobs.sh, cv_* jobs: a cross-validation started in the background, then collected as the packed
finished folds that score back here exactly as they scored there."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_jobs.sh"
if not SCRIPT.is_file():
    pytest.skip("benchmarks/ is not beside the tests (installed package)", allow_module_level=True)
if shutil.which("bash") is None or shutil.which("setsid") is None:
    pytest.skip("needs bash and setsid", allow_module_level=True)


def _tiny(cv) -> str:
    """A cv job's arguments for the CPU: cv_ph2_gpu's own --smoke model settings, 2 folds of one epoch."""
    sets = " ".join(f"--set {shlex.quote(s)}" for s in cv.SMOKE_SETS)
    return ("--recipes vmunet_ph2_best --tag t --seeds 0 --folds 2 --epochs 1 --device cpu --no-tta --checkpoints last "
            f"--cache 32x32=.gpucache/ph2_256.npz {sets}")


def _jobs(work: Path, root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "GPUJOBS_DIR": str(root), "PYTHON": sys.executable, **(env or {})}
    # timeout: a generous bound against a hang (e.g. a job holding the script's output open), not a speed check
    return subprocess.run(["bash", str(work / "benchmarks" / "gpu_jobs.sh"), *args], cwd=work, env=e,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture()
def work(tmp_path, benchmark_module):
    """A checkout-like folder: src/ and benchmarks/ and a tiny synthetic cache where the PH2 cache would be."""
    cv_ph2_gpu = benchmark_module("cv_ph2_gpu")
    w = tmp_path / "w"
    (w / ".gpucache").mkdir(parents=True)
    shutil.copytree(REPO / "benchmarks", w / "benchmarks", ignore=shutil.ignore_patterns("results", "official"))
    shutil.copytree(REPO / "src", w / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    shutil.copy(cv_ph2_gpu._smoke_cache(tmp_path), w / ".gpucache" / "ph2_256.npz")
    return w


def test_a_cv_job_without_its_arguments_is_refused_naming_the_variable(work, tmp_path):
    r = _jobs(work, tmp_path / "jobs", "start", "cv_ema", env={"CV_EMA": ""})
    assert r.returncode != 0 and "set CV_EMA" in r.stderr
    r = _jobs(work, tmp_path / "jobs", "start", "cv_a-b")
    assert r.returncode != 0 and "letters, digits and '_'" in r.stderr


def test_collect_says_which_cv_job_could_not_be_packed_and_fails(work, tmp_path):
    root = tmp_path / "jobs"
    (root / "logs").mkdir(parents=True)
    (root / "logs" / "cv_x.args").write_text("--recipes vmunet_ph2_best --no-such-option")
    (root / "snap_cv_x").symlink_to(work, target_is_directory=True)
    r = _jobs(work, root, "collect", str(tmp_path / "out"))
    assert r.returncode != 0 and "cv_x" in r.stderr and (tmp_path / "out" / "gpujobs.tgz").is_file()


def test_cv_job_runs_in_the_background_and_collects_restorable_folds(work, tmp_path, benchmark_module):
    tiny = _tiny(benchmark_module("cv_ph2_gpu"))
    root = tmp_path / "jobs"
    r = _jobs(work, root, "start", "cv_t", env={"CV_T": tiny})
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 1800  # a generous bound against a hang, not a speed check
    while not (root / "logs" / "cv_t.rc").exists():
        assert time.monotonic() < deadline, (root / "logs" / "cv_t.log").read_text()[-2000:]
        time.sleep(2)
    log = (root / "logs" / "cv_t.log").read_text()
    assert (root / "logs" / "cv_t.rc").read_text().strip() == "0", log[-2000:]
    there = json.loads((root / "results" / "cv_ph2_vmunet_ph2_best-t_s0.json").read_text())

    dest = tmp_path / "out"
    r = _jobs(work, root, "collect", str(dest))
    assert r.returncode == 0, r.stderr
    packed = sorted(dest.glob("cvstate_cv_ph2_vmunet_ph2_best-t_s0.tgz*"))
    assert packed and (dest / "gpujobs.tgz").is_file()
    with tarfile.open(dest / "gpujobs.tgz") as t:
        names = t.getnames()
    assert any(n.endswith("fold_1/history.json") for n in names) and "logs/cv_t.args" in names

    # back here: unpack the folds (no checkpoints travel) and score them without training
    here = tmp_path / "here"
    here.mkdir()
    blob = b"".join(p.read_bytes() for p in packed)
    (here / "state.tgz").write_bytes(blob)
    with tarfile.open(here / "state.tgz") as t:
        assert not any(n.endswith(".pt") for n in t.getnames())
        t.extractall(here, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    cmd = [sys.executable, "benchmarks/cv_ph2_gpu.py", *shlex.split(tiny)]  # the job's arguments, unquoted
    r = subprocess.run(cmd + ["--runs", str(here / "cv"), "--results-dir", str(here / "res"), "--score-only"],
                       cwd=work, env={**os.environ, "PYTHONPATH": str(work / "src")}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    back = json.loads((here / "res" / "cv_ph2_vmunet_ph2_best-t_s0.json").read_text())
    assert back["pooled_oof_dsc"] == pytest.approx(there["pooled_oof_dsc"], abs=1e-12)
    assert back["n_below_0.8"] == there["n_below_0.8"]


def _live(pgid: int) -> list[str]:
    """The processes of group ``pgid`` that are not zombies (``ps`` lines)."""
    out = subprocess.run(["ps", "-eo", "pgid=,stat=,args="], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if ln.split()[0] == str(pgid) and not ln.split()[1].startswith("Z")]


def test_stop_ends_a_job_with_the_fold_processes_it_spawned(work, tmp_path, benchmark_module):
    # two folds side by side, far too long to end by themselves: the fold workers are spawned processes whose command
    # lines do not name the job
    long = _tiny(benchmark_module("cv_ph2_gpu")).replace("--epochs 1 ", "--epochs 100000 ") + " --parallel-folds 2"
    root = tmp_path / "jobs"
    # start returns at once: _jobs reads its output to the end, which no process of the job may hold open
    r = _jobs(work, root, "start", "cv_long", env={"CV_LONG": long})
    assert r.returncode == 0, r.stderr
    log = root / "logs" / "cv_long.log"
    deadline = time.monotonic() + 1800  # a generous bound against a hang, not a speed check
    while log.read_text().count("epoch 2/100000 ") < 2:  # both fold workers are training
        assert time.monotonic() < deadline and not (root / "logs" / "cv_long.rc").exists(), log.read_text()[-2000:]
        time.sleep(2)
    pgid = int((root / "logs" / "cv_long.pgid").read_text())
    assert len(_live(pgid)) >= 4  # the job's shell, cv_ph2_gpu.py and its two fold workers
    r = _jobs(work, root, "stop", "cv_long")
    assert r.returncode == 0 and f"stopped cv_long (process group {pgid})" in r.stdout, r.stderr
    assert _live(pgid) == []
    assert "[stopped]" in _jobs(work, root, "status").stdout
    assert "already ended" in _jobs(work, root, "stop", "cv_long").stdout
    r = _jobs(work, root, "stop", "cv_nothing")
    assert r.returncode == 2 and "no job 'cv_nothing'" in r.stderr
