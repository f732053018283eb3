"""Cross-validation: seeded saved folds, fold runs on held-out cases, out-of-fold predictions, pooled scoring."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from engine_helpers import tiny_config
from mambaseg.data.files import DatasetError
from mambaseg.data.folds import case_pool, make_folds, resolve_folds
from mambaseg.engine.crossval import evaluate_cv, train_folds


@pytest.fixture(scope="module")
def cv_data(tmp_path_factory):
    """8 train + 4 val synthetic 32x32 cases with distinct ids (val files renamed v_*)."""
    from mambaseg.data import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path_factory.mktemp("cv") / "data", n_train=8, n_val=4, size=(32, 32), seed=2)
    for sub in ("images", "masks"):
        d = root / "val" / sub
        for f in sorted(d.iterdir()):
            f.rename(d / f"v_{f.name}")
    return root


def test_make_folds_partition_and_seed():
    ids = [f"c{i:02d}" for i in range(11)]
    folds = make_folds(ids, 3, seed=5)
    held = [i for f in folds for i in f["val"]]
    assert sorted(held) == ids and len(set(held)) == 11
    assert sorted(len(f["val"]) for f in folds) == [3, 4, 4]
    assert all(set(f["train"]) == set(ids) - set(f["val"]) for f in folds)
    assert make_folds(list(reversed(ids)), 3, seed=5) == folds
    assert make_folds(ids, 3, seed=6) != folds
    with pytest.raises(ValueError, match="at least 12"):
        make_folds(ids, 12, seed=0)


def test_saved_folds_are_reused_and_checked(tmp_path):
    ids = [f"c{i}" for i in range(6)]
    rec = resolve_folds(tmp_path, ids, k=3, seed=0)
    assert json.loads((tmp_path / "splits_final.json").read_text())["folds"] == rec["folds"]
    assert resolve_folds(tmp_path, ids, k=3, seed=0)["folds"] == rec["folds"]
    with pytest.raises(DatasetError, match="k=3"):
        resolve_folds(tmp_path, ids, k=2, seed=0)
    with pytest.raises(DatasetError, match="other cases"):
        resolve_folds(tmp_path, ids + ["new"], k=3, seed=0)


def test_duplicate_ids_across_train_and_val_are_refused(synthetic_data):
    with pytest.raises(DatasetError, match="both train and val"):
        case_pool(synthetic_data, "folder2d")


def test_cross_validation_end_to_end(tiny_model, cv_data, tmp_path):
    root = tmp_path / "cv"
    cfg = tiny_config(cv_data, root, **{"train.epochs": 1})
    results = train_folds(cfg, folds=3, fold="all")
    assert len(results) == 3
    rec = json.loads((root / "splits_final.json").read_text())
    assert rec["k"] == 3 and rec["n_cases"] == 12
    for i, fold in enumerate(rec["folds"]):
        run = root / f"fold_{i}"
        m = json.loads((run / "metrics.json").read_text())
        assert m["n_images"] == len(fold["val"])  # validated on the held-out cases only
        for which in ("last", "best"):
            masks = sorted(p.stem for p in (run / "oof" / which / "masks").glob("*.png"))
            assert masks == sorted(fold["val"])
            prob = np.load(run / "oof" / which / "probabilities" / f"{masks[0]}.npz")["probabilities"]
            assert prob.dtype == np.float16 and prob.shape == (1, 32, 32)
            mask = np.asarray(Image.open(run / "oof" / which / "masks" / f"{masks[0]}.png"))
            p = prob[0].astype(np.float32)
            sure = np.abs(p - 0.5) > 2e-3  # float16 rounding near the threshold
            assert np.array_equal((mask > 127)[sure], (p >= 0.5)[sure])
    # a second call finds every fold done and trains nothing
    assert train_folds(cfg, folds=3, fold="all") == []
    res = evaluate_cv(root)
    assert res["n_cases"] == 12 and res["k"] == 3 and res["checkpoint"] == "last"
    assert (root / "cv_metrics.json").is_file()
    assert sorted(r["id"] for r in res["cases"]) == sorted(i for f in rec["folds"] for i in f["val"])
    # pooled Dice = one confusion matrix over all held-out cases, recomputed here from the files
    tp = fp = fn = 0
    for r in res["cases"]:
        run = root / f"fold_{r['fold']}" / "oof" / "last" / "masks"
        pred = np.asarray(Image.open(run / f"{r['id']}.png")) > 127
        split = "val" if r["id"].startswith("v_") else "train"
        gt = np.asarray(Image.open(cv_data / split / "masks" / f"{r['id']}.png")) > 127
        tp += int((pred & gt).sum()); fp += int((pred & ~gt).sum()); fn += int((~pred & gt).sum())
    assert res["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert res["worst"][0]["dice"] == min(r["dice"] for r in res["cases"])
    # missing predictions are named
    shutil.rmtree(root / "fold_1" / "oof" / "last" / "masks")
    with pytest.raises(FileNotFoundError, match="fold 1"):
        evaluate_cv(root)


def test_cross_validation_on_an_npz2d_cache(tiny_model, cv_data, tmp_path):
    from mambaseg.data.layouts import write_cache

    cache, counts = write_cache(cv_data, (32, 32), tmp_path / "c.npz")
    assert counts == {"train": 8, "val": 4}
    root = tmp_path / "cvc"
    train_folds(tiny_config(cache, root, **{"train.epochs": 1}), folds=2, fold=1)
    assert (root / "fold_1" / "oof" / "last" / "oof.json").is_file() and not (root / "fold_0").exists()
    with pytest.raises(FileNotFoundError, match=r"fold\(s\) \[0\]"):
        evaluate_cv(root)
    with pytest.raises(ValueError, match="out of range"):
        train_folds(tiny_config(cache, root), folds=2, fold=2)


def test_cli_folds_one_at_a_time_then_evaluate_cv(tiny_model, cv_data, tmp_path):
    from typer.testing import CliRunner

    from mambaseg.cli import app
    from mambaseg.cli._common import state

    state.debug = False
    runner = CliRunner()
    root = tmp_path / "cvroot"
    base = ["train", "--model", tiny_model, "--data", str(cv_data), "--epochs", "1", "--image-size", "32",
            "--batch-size", "4", "--device", "cpu", "--out", str(root), "--no-progress", "--folds", "2",
            "--set", "data.validate=false", "--set", 'train.amp="off"']
    for fold in ("0", "1"):
        res = runner.invoke(app, base + ["--fold", fold])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, base + ["--fold", "all"])
    assert res.exit_code == 0 and "skipped" in res.output
    res = runner.invoke(app, base + ["--fold", "7"])
    assert res.exit_code == 1 and "out of range" in res.output
    res = runner.invoke(app, ["evaluate", "--cv", str(root), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_cases"] == 12 and out["k"] == 2 and out["tta"] == "none"
    res = runner.invoke(app, ["evaluate", "--cv", str(tmp_path)])
    assert res.exit_code == 1 and "splits_final.json" in res.output
