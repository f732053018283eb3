"""Ranking cross-validations and their ensembles out of fold (evaluate --cv A --cv B --compare)."""

from __future__ import annotations

import json

import pytest

from engine_helpers import distinct_id_cases, tiny_config
from mambaseg.engine.compare import candidates, compare_cv
from mambaseg.engine.crossval import evaluate_cv, train_folds


@pytest.fixture(scope="module")
def two_roots(tmp_path_factory):
    from mambaseg.models import _registry

    from engine_helpers import TINY, register_tiny

    register_tiny()
    try:
        base = tmp_path_factory.mktemp("cmp")
        data = distinct_id_cases(base / "data", seed=2)
        roots = []
        for name, seed in (("a", 0), ("b", 11)):
            root = base / name
            train_folds(tiny_config(data, root, **{"train.epochs": 1, "train.seed": seed}), folds=3, fold="all")
            roots.append(root)
        yield roots
    finally:
        _registry._REGISTRY.pop(TINY, None)


def test_candidates_are_each_root_each_pair_and_all():
    assert candidates(2) == [(0,), (1,), (0, 1)]
    assert candidates(3) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    with pytest.raises(ValueError, match="at least two"):
        candidates(1)


def test_compare_ranks_each_candidate_by_its_own_scores(two_roots, tmp_path):
    a, b = two_roots
    res = compare_cv([a, b], tmp_path / "cmp")
    assert res["criterion"] == "dice" and "pooled" in res["criterion_described"]
    assert [r["candidate"] for r in res["ranking"]] != [] and len(res["ranking"]) == 3
    # each row is what evaluate_cv gives that candidate on its own
    want = {"a": evaluate_cv(a, out=tmp_path / "a"), "b": evaluate_cv(b, out=tmp_path / "b"),
            "a+b": evaluate_cv([a, b], out=tmp_path / "ab")}
    for r in res["ranking"]:
        w = want[r["candidate"]]
        assert r["value"] == r["pooled_dice"] == w["dice"] and r["per_case_dice"] == w["per_case_dice"]
        assert r["n_below"] == w["n_below"]["count"]
        assert json.loads((tmp_path / "cmp" / r["candidate"] / "cv_metrics.json").read_text())["dice"] == w["dice"]
    values = [r["value"] for r in res["ranking"]]
    assert values == sorted(values, reverse=True) and res["best"] == res["ranking"][0]["candidate"]
    assert "optimistic" in res["selection_note"]
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["best"] == res["best"]
    # the roots themselves are not written to
    assert not (a / "cv_metrics.json").exists()
    with pytest.raises(ValueError, match="once"):
        compare_cv([a, a], tmp_path / "dup")


def test_missing_saved_predictions_are_named_before_anything_is_scored(two_roots, tmp_path):
    a, b = two_roots
    # the folds saved no flip-TTA predictions: a pair's ensemble could not be scored, so nothing is
    with pytest.raises(FileNotFoundError, match=r"6 fold\(s\) .*--tta flip"):
        compare_cv([a, b], tmp_path / "tta", tta="flip")
    assert not (tmp_path / "tta").exists()
    with pytest.raises(FileNotFoundError, match="not a cross-validation root"):
        compare_cv([a, tmp_path], tmp_path / "x")
    for bad, match in (({"which": "final"}, "--oof"), ({"tta": "rot90"}, "--tta"),
                       ({"postprocess": "smooth"}, "smooth")):
        with pytest.raises(ValueError, match=match):
            compare_cv([a, b], tmp_path / "bad", **bad)


def test_cli_compare(two_roots, tmp_path):
    from typer.testing import CliRunner

    from mambaseg.cli import app

    a, b = two_roots
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--cv", str(a), "--cv", str(b), "--compare"])
    assert res.exit_code == 1 and "--out" in res.output
    res = runner.invoke(app, ["evaluate", "--cv", str(a), "--compare", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "two or more" in res.output
    res = runner.invoke(app, ["evaluate", "--cv", str(a), "--cv", str(b), "--compare", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    words = " ".join(res.output.split())
    assert "ranked by pooled Dice" in words and "a+b" in words and "optimistic" in words
    assert (tmp_path / "c" / "compare.json").is_file()


def test_roots_trained_on_caches_of_two_sizes_are_all_scored_against_the_first_roots_data(tiny_model, tmp_path):
    """Root a trained on a 32x32 cache, root b on a 16x16 cache of the same cases: every candidate, b alone
    included, is scored against a's ground truth (b's probabilities resized), so the ranking compares like with
    like; before, b alone was scored against its own 16x16 masks."""
    from mambaseg.data.layouts import write_cache

    data = distinct_id_cases(tmp_path / "data", seed=3)
    roots = []
    for name, size in (("a", 32), ("b", 16)):
        cache, _ = write_cache(data, (size, size), tmp_path / f"c{size}.npz")
        roots.append(tmp_path / name)
        train_folds(tiny_config(cache, roots[-1], **{"train.epochs": 1}), folds=3, fold="all")
    a, b = roots
    res = compare_cv([a, b], tmp_path / "cmp")
    by = {r["candidate"]: r for r in res["ranking"]}
    cache32 = str(tmp_path / "c32.npz")
    b_on_a = evaluate_cv(b, data=cache32, out=tmp_path / "b_on_a")
    assert by["b"]["value"] == b_on_a["dice"]
    assert by["b"]["value"] != evaluate_cv(b, out=tmp_path / "b_own")["dice"]  # its own 16x16 masks
    assert by["a+b"]["value"] == evaluate_cv([a, b], out=tmp_path / "ab")["dice"]
    assert json.loads((tmp_path / "cmp" / "b" / "cv_metrics.json").read_text())["data"] == cache32
