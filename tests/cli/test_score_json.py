"""Result JSON is strict: undefined values (NaN) are ``null`` in ``mambaseg score --out/--json`` and every file the
atomic writer writes, never the bare ``NaN`` token that strict JSON parsers reject."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mambaseg.cli import app
from mambaseg.utils.files import atomic_write_json


def _strict(text: str):
    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def _json_part(output: str) -> str:
    return output[output.index("{"):output.rindex("}") + 1]


def test_score_of_all_empty_masks_writes_strict_json_with_null(tmp_path):
    for d in ("pred", "gt"):
        (tmp_path / d).mkdir()
        for name in ("a", "b"):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / d / f"{name}.png")
    res = CliRunner().invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json",
                                   "--out", str(tmp_path / "s.json"), "--empty-policy", "nan"])
    assert res.exit_code == 0, res.output
    for text in ((tmp_path / "s.json").read_text(), _json_part(res.output)):
        out = _strict(text)
        assert out["dice"] is None and out["iou"] is None and out["per_case_dice"] is None
        assert out["pooled"]["sen"] is None and out["pooled"]["per_class"]["sen"] == [None]
        assert out["pooled"]["acc"] == 1.0 and out["cases"][0]["dice"] is None
    # TransUNet's rule scores empty predictions 0; the pooled Dice (no per-case rule) stays undefined
    res = CliRunner().invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json",
                                   "--empty-policy", "transunet"])
    out = _strict(_json_part(res.output))
    assert out["dice"] is None and out["per_case_dice"] == 0.0 and out["hd95"] == 0.0
    assert out["empty_masks"]["both_empty"] == 2


def test_atomic_write_json_writes_nan_as_null_and_inf_as_a_string(tmp_path):
    path = atomic_write_json(tmp_path / "m.json", {"sen": float("nan"), "hd95": [math.inf, -math.inf, 1.5],
                                                   "n": np.int64(3), "x": np.float32(0.5), "arr": np.array([np.nan])})
    assert _strict(path.read_text()) == {"sen": None, "hd95": ["inf", "-inf", 1.5], "n": 3, "x": 0.5, "arr": [None]}
    with pytest.raises(TypeError):  # what JSON cannot hold is still refused, and the old file is kept
        atomic_write_json(path, {"bad": object()})
    assert _strict(path.read_text())["n"] == 3
