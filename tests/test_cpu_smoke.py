"""benchmarks/cpu_smoke.py: the CPU must-show smoke runs of the CLI (the runs themselves are not repeated here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_missing_data_folder_is_an_error_naming_it(tmp_path, benchmark_module):
    script = REPO / "benchmarks" / "cpu_smoke.py"
    benchmark_module("cpu_smoke")  # skips when benchmarks/ is not beside the tests
    res = subprocess.run([sys.executable, str(script), "--only", "acdc", "--data-root", str(tmp_path / "nowhere"),
                          "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert f"{tmp_path / 'nowhere' / 'acdc'}" in res.stderr and "--data-root" in res.stderr
    assert not list(tmp_path.glob("*.json")), "nothing is written when the data is missing"


def test_recorded_paths_use_the_placeholders(tmp_path, benchmark_module):
    smoke = benchmark_module("cpu_smoke")
    work, root = tmp_path / "work", tmp_path / "data"
    got = smoke.placeheld({"a": [f"{work}/RUN", {"p": f"{root}/acdc"}], "n": 1.5}, work, root, "../shared/data")
    assert got == {"a": ["TMP/RUN", {"p": "../shared/data/acdc"}], "n": 1.5}
    run = smoke.Runner(work, root, "../shared/data", timeout=1)
    assert run.shown(["train", "--data", run.data("acdc"), "--out", str(work / "RUN")]) == \
        "python -m mambaseg train --data ../shared/data/acdc --out TMP/RUN"


def test_the_committed_results_carry_their_provenance(benchmark_module):
    smoke = benchmark_module("cpu_smoke")
    for name in smoke.FILES.values():
        d = json.loads((smoke.RESULTS / name).read_text())
        env = d["environment"]
        assert all(env.get(k) for k in ("date", "python", "torch", "device", "command")), (name, env)
        assert env["command"].split()[1].endswith("cpu_smoke.py"), name
        assert "date_from_git" not in d and d["steps"] and all(s["rc"] == 0 for s in d["steps"]), name
        assert "/tmp/" not in json.dumps(d), f"{name} holds a temporary path"
