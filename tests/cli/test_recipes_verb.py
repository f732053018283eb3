"""`mambaseg recipes` lists the shipped recipes (no `python -c` needed)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mambaseg.cli import app
from mambaseg.configs import list_recipes


def test_recipes_table_and_json():
    runner = CliRunner()
    res = runner.invoke(app, ["recipes"])
    assert res.exit_code == 0, res.output
    assert all(name in res.output for name in list_recipes())
    rows = json.loads(runner.invoke(app, ["recipes", "vmunet_ph?", "--json"]).output)
    assert [r["name"] for r in rows] == ["vmunet_ph2"]
    assert rows[0]["model"] == "vmunet" and rows[0]["schedule"] == "cosine T_max 50 per epoch"


def test_a_pattern_matching_no_recipe_says_so():
    res = CliRunner().invoke(app, ["recipes", "ph2"])  # shell-style: no name equals 'ph2'
    text = " ".join(res.output.split())
    assert res.exit_code != 0 and "no shipped recipe matches 'ph2'" in text and "'*ph2*'" in text, text
    assert "vmunet_ph2" in CliRunner().invoke(app, ["recipes", "*ph2*"]).output
