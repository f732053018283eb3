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
