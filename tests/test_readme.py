"""The README's promises: its test command is exactly CI's, and the API/verbs it shows exist."""

from __future__ import annotations

import re
from pathlib import Path

import mambaseg
from mambaseg.cli import app
from mambaseg.inference import Predictor

REPO = Path(__file__).resolve().parents[1]


def _first_bash_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README has no bash block"
    return [ln.strip() for ln in block.group(1).strip().splitlines()]


def test_readme_opens_with_install_demo_and_the_ci_test_command():
    install, test_cmd = _first_bash_block()[:2]
    assert "pip install" in install and "mambaseg demo" in install
    ci = (REPO / ".ci" / "run").read_text()
    ci_lines = [ln.strip() for ln in ci.splitlines() if ln.strip().startswith("pytest")]
    assert ci_lines == [test_cmd], (ci_lines, test_cmd)


def test_readme_api_and_verbs_exist():
    text = (REPO / "README.md").read_text()
    assert callable(mambaseg.load) and callable(mambaseg.create_model)
    assert hasattr(Predictor, "predict") and hasattr(Predictor, "predict_folder")
    verbs = {c.name for c in app.registered_commands}
    for verb in re.findall(r"`mambaseg (\w+)", text):
        assert verb in verbs, verb


def test_the_measured_table_quotes_its_results_files():
    """Each row of README's "Measured on the bundled data" table names a results file; every decimal number in the
    row's result cell must be a value of that file at the precision shown (no number typed in by hand)."""
    import json

    from mambaseg.engine.evaluator import flatten_metrics

    text = (REPO / "README.md").read_text()
    section = text.split("### Measured on the bundled data", 1)[1].split("\n#", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| `")]
    assert len(rows) >= 8, rows
    checked = 0
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        name = cells[-1].strip("`")
        path = REPO / "benchmarks" / "results" / name
        assert path.is_file(), f"README row names {name}, which is not in benchmarks/results"
        # the file's scalars outside its lists: per-case rows and histories hold so many values that nearly any
        # number would be found among them
        values = flatten_metrics(json.loads(path.read_text())).values()
        for num in re.findall(r"(?<![\w.])\d+\.\d+", cells[3]):
            places = len(num.split(".")[1])
            shown = {f"{v:.{places}f}" for v in values}
            assert num in shown, f"README: {num} in the row of {name} is not a value of that file"
            checked += 1
    assert checked >= 20
