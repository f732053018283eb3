"""Cross-validation: seeded saved folds, fold runs on held-out cases, out-of-fold predictions, pooled scoring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine_helpers import distinct_id_cases, tiny_config
from mambaseg.data.files import DatasetError
from mambaseg.data.folds import make_folds, resolve_folds
from mambaseg.data.layouts import case_pool
from mambaseg.engine.crossval import evaluate_cv, train_folds


@pytest.fixture(scope="module")
def cv_data(tmp_path_factory):
    """8 train + 4 val synthetic 32x32 cases with distinct ids (val files renamed v_*)."""
    return distinct_id_cases(tmp_path_factory.mktemp("cv") / "data", seed=2)


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
    # each fold measured its input normalisation on its own training cases; the root's fold ensemble gives each
    # fold its own input: the mean of the folds' own predictors (at network size, so no resampling in between)
    import torch

    from mambaseg.inference import load_ensemble

    ckpts = [root / f"fold_{i}" / "checkpoints" / "last.pt" for i in range(3)]
    norms = [torch.load(c, weights_only=True)["normalization"] for c in ckpts]
    assert norms[0] != norms[1] and norms[1] != norms[2]
    image = cv_data / "train" / "images" / sorted(p.name for p in (cv_data / "train" / "images").iterdir())[0]
    mean = np.mean([load_ensemble([c], tta="flip", device="cpu").predict_proba(image) for c in ckpts], axis=0)
    assert np.allclose(load_ensemble([root], tta="flip", device="cpu").predict_proba(image), mean, atol=1e-5)
    # the fold ensemble evaluated on 'val' (fold 0's config opens fold 0's held-out cases) is in-sample for the
    # other folds: said in a warning and in the result; one fold on its own held-out cases is not
    from mambaseg.engine import evaluate_checkpoint

    with pytest.warns(RuntimeWarning, match=r"4 of the 4 val case\(s\) were training cases of 2 of the 3"):
        ens = evaluate_checkpoint([root], device="cpu")
    assert ens["seen_in_training"]["cases"] == ens["seen_in_training"]["of"] == len(rec["folds"][0]["val"]) == 4
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        own = evaluate_checkpoint(ckpts[1], device="cpu")
    assert own["seen_in_training"] == {**own["seen_in_training"], "cases": 0, "of": 4, "checkpoints": 0}
    with pytest.warns(RuntimeWarning, match="in-sample"):
        assert evaluate_checkpoint(ckpts[1], split="train", device="cpu")["seen_in_training"]["cases"] == 8
    res = evaluate_cv(root)
    assert res["n_cases"] == 12 and res["k"] == 3 and res["checkpoint"] == "last"
    assert (root / "cv_metrics.json").is_file()
    # one spacing for every image is named as such (the cases have no spacing of their own)
    mm = evaluate_cv(root, spacing=0.5, out=tmp_path / "mm")
    assert mm["conventions"]["units"] == "spacing 0.5" and mm["dice"] == res["dice"]
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
    # post-processed before scoring: the same count over the post-processed saved masks
    from mambaseg.inference.postprocess import postprocess_labels

    steps = "largest_component,fill_holes"
    pp = evaluate_cv(root, postprocess=steps, out=tmp_path / "pp")
    assert pp["postprocess"] == ["largest_component", "fill_holes"] and res["postprocess"] == []
    tp = fp = fn = changed = 0
    for r in res["cases"]:
        raw = np.asarray(Image.open(root / f"fold_{r['fold']}" / "oof" / "last" / "masks" / f"{r['id']}.png")) > 127
        pred = postprocess_labels(raw.astype(np.int64), steps) == 1
        changed += int((pred != raw).sum())
        split = "val" if r["id"].startswith("v_") else "train"
        gt = np.asarray(Image.open(cv_data / split / "masks" / f"{r['id']}.png")) > 127
        tp += int((pred & gt).sum()); fp += int((pred & ~gt).sum()); fn += int((~pred & gt).sum())
    assert pp["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert changed > 0  # the tiny model's masks have stray components, so this comparison can fail
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
    import torch

    threads = torch.get_num_threads()
    try:  # --threads applies to cross-validation too; the next step names the folds still to train
        res = runner.invoke(app, base + ["--fold", "0", "--threads", "1"])
        assert res.exit_code == 0, res.output
        assert "(1 threads)" in res.output
    finally:
        torch.set_num_threads(threads)
    words = " ".join(res.output.split())
    assert "train the other fold(s) [1] of 2 (0-based)" in words and "score the out-of-fold" in words
    # folds are named "fold i of k (0-based)" wherever they are printed, never "fold 0/1"
    assert "fold 0 of 2 (0-based): 6 training cases, 6 held out" in words and "fold 0/" not in words
    res = runner.invoke(app, base + ["--fold", "1"])
    assert res.exit_code == 0, res.output
    words = " ".join(res.output.split())
    assert "other fold(s)" not in res.output and "score the out-of-fold predictions with" in words
    assert "fold 1 of 2 (0-based):" in words and "fold 1/" not in res.output
    res = runner.invoke(app, base + ["--fold", "all"])
    assert res.exit_code == 0 and "skipped" in res.output
    words = " ".join(res.output.split())
    assert "fold 0 of 2 (0-based): already trained" in words and "fold 1 of 2 (0-based): already trained" in words
    res = runner.invoke(app, base + ["--fold", "7"])
    assert res.exit_code == 1 and "out of range" in res.output
    k = base.index("--folds")
    res = runner.invoke(app, base[:k] + base[k + 2:] + ["--tta", "flip"])  # without --folds
    assert res.exit_code == 1 and "--folds" in res.output
    res = runner.invoke(app, base + ["--tta", "flip"])  # finished folds: TTA predictions only
    assert res.exit_code == 0, res.output
    assert all((root / f"fold_{i}" / "oof" / "last_tta_flip" / "oof.json").is_file() for i in (0, 1))
    res = runner.invoke(app, ["evaluate", "--cv", str(root), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_cases"] == 12 and out["k"] == 2 and out["tta"] == "none"
    # another variant without --out replaces cv_metrics.json: said in a note (it happened without a word)
    res = runner.invoke(app, ["evaluate", "--cv", str(root), "--tta", "flip"])
    assert res.exit_code == 0 and "held the scores of another variant (checkpoint last, tta none, postprocess " \
        "none) and now holds these; pass --out FOLDER" in " ".join(res.output.split()), res.output
    res = runner.invoke(app, ["evaluate", "--cv", str(root), "--tta", "flip"])  # the same variant again: no note
    assert res.exit_code == 0 and "another variant" not in res.output
    res = runner.invoke(app, ["evaluate", "--cv", str(tmp_path)])
    assert res.exit_code == 1 and "splits_final.json" in res.output
    # the fold ensemble on fold 0's held-out cases: the in-sample warning as one line of the CLI's, not Python's
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(root), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    words = " ".join(res.output.split())
    assert "warning: 6 of the 6 val case(s) were training cases of 1 of the 2 checkpoint(s)" in words
    assert "in-sample" in words and "RuntimeWarning" not in words
    assert "val = the val ids of" in words and "not the dataset's own val folder" in words
    # the root stands for its folds' last.pt (what evaluate --cv scored) unless --fold-checkpoint best
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(root), "--device", "cpu", "--json"])
    out = json.loads(res.output[res.output.index("{"):])
    assert [Path(c).name for c in out["checkpoint"]] == ["last.pt"] * 2
    assert Path(out["split_file"]) == root / "fold_0" / "split.json"  # the first member's held-out cases
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(root), "--device", "cpu", "--json",
                              "--fold-checkpoint", "best"])
    assert [Path(c).name for c in json.loads(res.output[res.output.index("{"):])["checkpoint"]] == ["best.pt"] * 2
    res = runner.invoke(app, ["predict", "--checkpoint", str(root), "--fold-checkpoint", "final", "--input",
                              str(cv_data / "val" / "images"), "--out", str(tmp_path / "p"), "--device", "cpu"])
    assert res.exit_code == 1 and "--fold-checkpoint must be one of last, best" in res.output


def test_tta_predictions_saved_and_scored_without_checkpoints(tiny_model, cv_data, tmp_path):
    from mambaseg.data.layouts import write_cache

    cache, _ = write_cache(cv_data, (32, 32), tmp_path / "c.npz")
    root = tmp_path / "cvt"
    cfg = tiny_config(cache, root, **{"train.epochs": 1})
    with pytest.raises(ValueError, match="flip"):
        train_folds(cfg, folds=2, fold="all", tta="mirror")
    assert not (root / "fold_0").exists()  # refused before any training
    assert len(train_folds(cfg, folds=2, fold="all")) == 2
    assert not (root / "fold_0" / "oof" / "last_tta_flip").exists()
    # a finished fold gets its TTA predictions without training again
    assert train_folds(cfg, folds=2, fold="all", tta="flip") == []
    rec = json.loads((root / "splits_final.json").read_text())
    for i, fold in enumerate(rec["folds"]):
        for which in ("last", "best"):
            d = root / f"fold_{i}" / "oof" / f"{which}_tta_flip"
            assert sorted(p.stem for p in (d / "masks").glob("*.png")) == sorted(fold["val"])
            info = json.loads((d / "oof.json").read_text())
            assert info["tta"] == "flip" and info["in_chans"] == 3
    # saved TTA masks score exactly like TTA predictions made from the checkpoints
    remade = evaluate_cv(root, tta="flip", out=tmp_path / "remade")
    shutil.copytree(root, tmp_path / "copy")
    for ck in (root / f"fold_{i}" / "checkpoints" for i in range(2)):
        shutil.rmtree(ck)
    saved = evaluate_cv(root, tta="flip")
    assert saved["dice"] == pytest.approx(remade["dice"], abs=1e-12)
    assert [r["dice"] for r in saved["cases"]] == pytest.approx([r["dice"] for r in remade["cases"]], abs=1e-12)
    plain = evaluate_cv(root, which="best")  # plain masks need no checkpoint either
    assert plain["n_cases"] == 12 and plain["tta"] == "none"
    # without saved TTA masks and without checkpoints the fold is named
    shutil.rmtree(root / "fold_1" / "oof" / "last_tta_flip")
    with pytest.raises(FileNotFoundError, match=r"fold\(s\) \[1\].*checkpoints/last.pt"):
        evaluate_cv(root, tta="flip")
    # the remade path still needs the checkpoint: the untouched copy re-predicts fold 1 from it
    shutil.rmtree(tmp_path / "copy" / "fold_1" / "oof" / "last_tta_flip")
    assert evaluate_cv(tmp_path / "copy", tta="flip")["dice"] == pytest.approx(remade["dice"], abs=1e-12)


def test_an_ensemble_of_cross_validations_averages_their_saved_probabilities(tiny_model, cv_data, tmp_path):
    from typer.testing import CliRunner

    from mambaseg.cli import app
    from mambaseg.cli._common import state

    roots = [tmp_path / "s0", tmp_path / "s1"]
    for seed, root in enumerate(roots):
        train_folds(tiny_config(cv_data, root, **{"train.epochs": 1, "train.seed": seed}), folds=2, fold="all",
                    tta="flip")
    for tta in ("none", "flip"):
        res = evaluate_cv(roots, tta=tta, out=tmp_path / f"ens_{tta}")
        assert res["members"] == 2 and res["n_cases"] == 12 and res["tta"] == tta
        assert json.loads((tmp_path / f"ens_{tta}" / "cv_metrics.json").read_text())["dice"] == res["dice"]
        # by hand: mean of the two members' float16 probabilities, >= 0.5, one confusion matrix over all cases
        rec = json.loads((roots[0] / "splits_final.json").read_text())
        tp = fp = fn = 0
        for i, fold in enumerate(rec["folds"]):
            for case in fold["val"]:
                sub = "last" if tta == "none" else "last_tta_flip"
                p = np.mean([np.load(r / f"fold_{i}" / "oof" / sub / "probabilities" / f"{case}.npz")["probabilities"]
                             .astype(np.float32) for r in roots], axis=0)[0]
                pred = p >= 0.5
                split = "val" if case.startswith("v_") else "train"
                gt = np.asarray(Image.open(cv_data / split / "masks" / f"{case}.png")) > 127
                tp += int((pred & gt).sum()); fp += int((pred & ~gt).sum()); fn += int((~pred & gt).sum())
        assert res["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    ens_pp = evaluate_cv(roots, postprocess="largest_component", out=tmp_path / "ens_pp")
    assert ens_pp["postprocess"] == ["largest_component"] and ens_pp["members"] == 2
    # members differ (otherwise the test proves nothing) and one member alone is the plain evaluation
    singles = [evaluate_cv(r, out=tmp_path / f"single{j}")["dice"] for j, r in enumerate(roots)]
    assert singles[0] != singles[1]
    assert evaluate_cv([roots[0]], out=tmp_path / "one")["dice"] == singles[0]
    with pytest.raises(ValueError, match="--out"):
        evaluate_cv(roots)
    with pytest.raises(ValueError, match="twice"):
        evaluate_cv([roots[0], roots[0]], out=tmp_path / "x")
    other = tmp_path / "other_split"
    train_folds(tiny_config(cv_data, other, **{"train.epochs": 1, "data.split_seed": 7}), folds=2, fold=0)
    with pytest.raises(ValueError, match="other cases"):
        evaluate_cv([roots[0], other], out=tmp_path / "x")
    shutil.rmtree(roots[1] / "fold_0" / "oof" / "best")
    with pytest.raises(FileNotFoundError, match="probabilities"):
        evaluate_cv(roots, which="best", out=tmp_path / "x")
    state.debug = False
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--cv", str(roots[0]), "--cv", str(roots[1])])
    assert res.exit_code == 1 and "--out" in res.output
    res = runner.invoke(app, ["evaluate", "--cv", str(roots[0]), "--cv", str(roots[1]), "--tta", "flip",
                              "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0 and "ensemble of 2" in res.output, res.output
    assert json.loads((tmp_path / "cli" / "cv_metrics.json").read_text())["dice"] == pytest.approx(
        json.loads((tmp_path / "ens_flip" / "cv_metrics.json").read_text())["dice"])


def test_a_fold_copied_without_checkpoints_before_best_was_predicted(tiny_model, cv_data, tmp_path):
    """A device job packs a finished fold without its checkpoints; if it stopped after metrics.json but before the
    'best' predictions, those can never be made: the default run says so by name, checkpoints=("last",) goes on."""
    from mambaseg.data.layouts import write_cache

    cache, _ = write_cache(cv_data, (32, 32), tmp_path / "c.npz")
    root = tmp_path / "cvc"
    cfg = tiny_config(cache, root, **{"train.epochs": 1})
    with pytest.raises(ValueError, match="checkpoints must be"):
        train_folds(cfg, folds=2, fold="all", checkpoints=("middle",))
    assert not (root / "fold_0").exists()  # refused before any training
    assert len(train_folds(cfg, folds=2, fold=0, tta="flip")) == 1
    shutil.rmtree(root / "fold_0" / "checkpoints")
    for which in ("best", "best_tta_flip"):
        shutil.rmtree(root / "fold_0" / "oof" / which)
    with pytest.raises(FileNotFoundError, match=r"fold_0 is trained.*oof/best/oof.json.*checkpoints/best.pt.*leave "
                                                r"'best' out"):
        train_folds(cfg, folds=2, fold="all", tta="flip")
    assert not (root / "fold_1").exists()  # the error came before fold 1 trained
    assert len(train_folds(cfg, folds=2, fold="all", tta="flip", checkpoints=("last",))) == 1  # fold 1 only
    assert sorted(p.name for p in (root / "fold_1" / "oof").iterdir()) == ["last", "last_tta_flip"]
    shutil.rmtree(root / "fold_1" / "checkpoints")
    shutil.rmtree(root / "fold_1" / "oof" / "last_tta_flip")
    with pytest.raises(FileNotFoundError, match=r"fold_1 is trained.*run without tta='flip' or leave 'last' out"):
        train_folds(cfg, folds=2, fold="all", tta="flip", checkpoints=("last",))
    assert train_folds(cfg, folds=2, fold="all", checkpoints=("last",)) == []  # no TTA wanted: nothing to do
    scored = evaluate_cv(root)  # every fold's final weights, from saved predictions only
    assert scored["n_cases"] == 12 and set(scored["per_fold_mean_dice"]) == {"0", "1"}


def test_a_plain_run_is_in_sample_on_the_splits_it_trained_on(tiny_model, cv_data, tmp_path):
    """Without a split file, a run trained on its data.train_splits: evaluating one of them says so."""
    import warnings

    from mambaseg.engine import evaluate_checkpoint, train

    train(tiny_config(cv_data, tmp_path / "run", **{"train.epochs": 1}))
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.warns(RuntimeWarning, match="8 of the 8 train case"):
        assert evaluate_checkpoint(ckpt, split="train", device="cpu")["seen_in_training"]["cases"] == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert evaluate_checkpoint(ckpt, split="val", device="cpu")["seen_in_training"]["cases"] == 0


def test_folds_trained_on_a_cache_are_scored_against_the_original_masks(tiny_model, cv_data, tmp_path):
    """Folds trained on a network-size npz cache (the GPU path) scored with --data the folder it was built from:
    each case's saved probabilities resized (bilinear) to its original mask, then the one 0.5 rule; single root
    and ensemble. Before, the folder was opened as an npz file (IsADirectoryError)."""
    import torch
    import torch.nn.functional as F

    from mambaseg.data.layouts import write_cache

    cache, _ = write_cache(cv_data, (16, 16), tmp_path / "c16.npz")
    roots = [tmp_path / "s0", tmp_path / "s1"]
    for seed, root in enumerate(roots):
        train_folds(tiny_config(cache, root, **{"train.epochs": 1, "train.seed": seed}), folds=2, fold="all")
    rec = json.loads((roots[0] / "splits_final.json").read_text())

    def by_hand(members):
        tp = fp = fn = 0
        for i, fold in enumerate(rec["folds"]):
            for case in fold["val"]:
                p = np.mean([np.load(r / f"fold_{i}" / "oof" / "last" / "probabilities" / f"{case}.npz")
                             ["probabilities"].astype(np.float64) for r in members], axis=0)
                assert p.shape[-2:] == (16, 16)
                split = "val" if case.startswith("v_") else "train"
                gt = np.asarray(Image.open(cv_data / split / "masks" / f"{case}.png")) > 127
                assert gt.shape == (32, 32)
                up = F.interpolate(torch.from_numpy(p)[None], size=gt.shape, mode="bilinear", align_corners=False)
                pred = up[0, 0].numpy() >= 0.5
                tp += int((pred & gt).sum()); fp += int((pred & ~gt).sum()); fn += int((~pred & gt).sum())
        return 2 * tp / (2 * tp + fp + fn)

    at_cache = evaluate_cv(roots[0], out=tmp_path / "cache")
    single = evaluate_cv(roots[0], data=str(cv_data), out=tmp_path / "orig")
    assert single["layout"] == "folder2d" and single["resolution"] == "original image size"
    assert single["n_cases"] == at_cache["n_cases"] == 12
    assert single["dice"] == pytest.approx(by_hand(roots[:1]), abs=1e-6)
    ens = evaluate_cv(roots, data=str(cv_data), out=tmp_path / "ens")
    assert ens["dice"] == pytest.approx(by_hand(roots), abs=1e-6)
    with pytest.raises(FileNotFoundError, match="--data"):
        evaluate_cv(roots[0], data=str(tmp_path / "nowhere"), out=tmp_path / "x")
    shutil.rmtree(roots[0] / "fold_1" / "oof" / "last" / "probabilities")
    with pytest.raises(FileNotFoundError, match="probabilities"):
        evaluate_cv(roots[0], data=str(cv_data), out=tmp_path / "x")
    assert evaluate_cv(roots[0], out=tmp_path / "cache2")["dice"] == at_cache["dice"]  # at the cache's size: masks
    # a mix of caches at two sizes (e.g. two recipes' input sizes): each member's probabilities resized to the
    # larger (32x32) before the mean, then to each ground truth (here also 32x32)
    cache32, _ = write_cache(cv_data, (32, 32), tmp_path / "c32.npz")
    big = tmp_path / "s32"
    train_folds(tiny_config(cache32, big, **{"train.epochs": 1}), folds=2, fold="all")
    with np.load(cache) as z:  # the 16x16 cache's own masks, the truth when scored without --data
        cached = {str(c): m for sp in ("train", "val") for c, m in zip(z[f"{sp}_ids"], z[f"{sp}_masks"])}
    counts = {"folder": [0, 0, 0], "cache": [0, 0, 0]}
    for i, fold in enumerate(rec["folds"]):
        for case in fold["val"]:
            small, large = (np.load(r / f"fold_{i}" / "oof" / "last" / "probabilities" / f"{case}.npz")
                            ["probabilities"].astype(np.float64) for r in (roots[1], big))
            assert small.shape == (1, 16, 16) and large.shape == (1, 32, 32)
            up = F.interpolate(torch.from_numpy(small)[None], size=(32, 32), mode="bilinear", align_corners=False)
            mean = (up[0].numpy() + large) / 2
            down = F.interpolate(torch.from_numpy(mean)[None], size=(16, 16), mode="bilinear", align_corners=False)
            split = "val" if case.startswith("v_") else "train"
            for key, pred, gt in (
                    ("folder", mean[0] >= 0.5, np.asarray(Image.open(cv_data / split / "masks" / f"{case}.png")) > 127),
                    ("cache", down[0, 0].numpy() >= 0.5, cached[case] > 0)):
                c = counts[key]
                c[0] += int((pred & gt).sum()); c[1] += int((pred & ~gt).sum()); c[2] += int((~pred & gt).sum())
    for key, data in (("folder", str(cv_data)), ("cache", None)):  # None: the first root's 16x16 cache
        mix = evaluate_cv([roots[1], big], data=data, out=tmp_path / f"mix_{key}")
        tp, fp, fn = counts[key]
        assert mix["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6), key


def test_a_cache_trained_checkpoint_evaluates_and_predicts_on_the_folder_it_was_built_from(tiny_model, cv_data,
                                                                                             tmp_path):
    """The same cases in two forms give the same numbers: a fold trained on an npz cache at the images' own size
    (32x32, so no resizing anywhere) evaluated and predicted with data= the image folder equals the same on the
    cache. Before, the folder was opened with the checkpoint's recorded layout (npz2d): IsADirectoryError."""
    from mambaseg.data.layouts import layout_of, write_cache
    from mambaseg.engine import DataTaskError, evaluate_checkpoint
    from mambaseg.engine.crossval import predict_oof

    cache, _ = write_cache(cv_data, (32, 32), tmp_path / "c32.npz")
    assert layout_of(cache, "npz2d") == "npz2d" and layout_of(cv_data, "npz2d") == "folder2d"
    assert layout_of(cv_data, None) == "folder2d" and layout_of(cv_data, "no_such_layout") == "folder2d"
    with pytest.raises(DataTaskError, match="cannot recognise"):
        layout_of(tmp_path, "npz2d")
    root = tmp_path / "cv"
    train_folds(tiny_config(cache, root, **{"train.epochs": 1}), folds=2, fold=0)
    ckpt = root / "fold_0" / "checkpoints" / "last.pt"
    on_cache = evaluate_checkpoint(ckpt, data=str(cache), device="cpu")
    on_folder = evaluate_checkpoint(ckpt, data=str(cv_data), device="cpu")
    assert on_folder["data"] == str(cv_data) and on_cache["data"] == str(cache)
    for key in ("dice", "iou", "per_case_dice"):
        assert on_folder[key] == pytest.approx(on_cache[key], abs=1e-6), key
    saved = root / "fold_0" / "oof" / "last"
    from_cache = {p.name: np.asarray(Image.open(p)) for p in (saved / "masks").glob("*.png")}
    assert len(from_cache) == 6
    assert predict_oof(root / "fold_0", "last", data=str(cv_data), device="cpu") == saved
    from_folder = {p.name: np.asarray(Image.open(p)) for p in (saved / "masks").glob("*.png")}
    assert from_folder.keys() == from_cache.keys()
    for name, mask in from_cache.items():
        assert np.array_equal(from_folder[name], mask), name
    # the same through the CLI: evaluate --checkpoint/--cv with --data the folder
    from typer.testing import CliRunner

    from mambaseg.cli import app
    from mambaseg.cli._common import state

    state.debug = False
    res = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(ckpt), "--data", str(cv_data), "--device", "cpu",
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["dice"] == pytest.approx(on_cache["dice"], abs=1e-6)
    res = CliRunner().invoke(app, ["evaluate", "--cv", str(root), "--data", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "--data" in res.output and "Traceback" not in res.output
