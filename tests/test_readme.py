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
