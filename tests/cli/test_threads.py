"""CPU threads: the library changes nothing; the CLI picks threads with torch APIs and sets no environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mambaseg.runtime import cpu_threads


def _env_after(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True, timeout=300)
    return out.stdout.strip()


def test_library_import_sets_no_environment():
    assert _env_after("import os, mambaseg, mambaseg.models; print(os.environ.get('OMP_WAIT_POLICY'))") == "None"


def test_cli_sets_no_environment():
    code = "import os, mambaseg.cli, sys; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    assert _env_after(code) == "None False"
    assert _env_after(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE False"


def test_cpu_threads_rule(monkeypatch):
    import mambaseg.runtime as rt

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(rt, "_busy_cores", lambda cpus: 3.2)  # sampled now: 3.2 of 4 cores busy
    assert cpu_threads("auto") == 1
    monkeypatch.setattr(rt, "_busy_cores", lambda cpus: 0.1)  # idle now (whatever the load average says)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.9, 0.0, 0.0))
    assert cpu_threads("auto") == 4
    monkeypatch.setattr(rt, "_busy_cores", lambda cpus: None)  # no /proc/stat: the load average decides
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert cpu_threads("auto") == 4
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert cpu_threads("auto") == 1  # round(4 - 2.6) = 1
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert cpu_threads(None) == 1
    assert cpu_threads("3") == 3 and cpu_threads(2) == 2
    with pytest.raises(ValueError, match="threads"):
        cpu_threads("0")
    with pytest.raises(ValueError, match="threads"):
        cpu_threads("many")


def test_threads_option_sets_torch_threads(tmp_path):
    from typer.testing import CliRunner

    from mambaseg.cli import app

    before = torch.get_num_threads()
    try:
        res = CliRunner().invoke(app, ["predict", "--checkpoint", str(tmp_path / "none.pt"), "--input",
                                       str(tmp_path), "--out", str(tmp_path / "o"), "--threads", "1"])
        assert res.exit_code == 1  # no such checkpoint; the threads were applied first
        assert torch.get_num_threads() == 1
        bad = CliRunner().invoke(app, ["predict", "--checkpoint", "x", "--input", "y", "--out", "z",
                                       "--threads", "zero"])
        assert bad.exit_code == 1 and "threads must be 'auto' or a positive integer" in bad.output
    finally:
        torch.set_num_threads(before)


def test_auto_leaves_gpu_runs_alone():
    from mambaseg.cli.threads import apply_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert apply_threads("auto", "cuda:0") == 2 and torch.get_num_threads() == 2  # the GPU runs the scan
        assert apply_threads("1", "cuda") == 1 and torch.get_num_threads() == 1  # a number is always applied
    finally:
        torch.set_num_threads(before)


def test_busy_cores_sample_is_sane():
    import mambaseg.runtime as rt

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    busy = rt._busy_cores(cpus, interval=0.05)
    assert busy is None or -0.01 <= busy <= len(cpus) + 0.01
