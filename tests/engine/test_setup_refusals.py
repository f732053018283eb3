"""Settings that cannot mean what they say for the data at hand are refused before the first step, or said, naming
the option (found by a user audit: a binary loss on multi-class data failed at the first forward pass, a batch
larger than the training set was recorded without a word)."""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_acdc import make_acdc  # noqa: E402

from mambaseg.cli import app  # noqa: E402
from mambaseg.data import make_synthetic_dataset  # noqa: E402


def _train(data, out, *extra):
    return CliRunner().invoke(app, ["train", "--model", "vmunet_tiny", "--data", str(data), "--epochs", "1",
                                    "--max-steps", "1", "--image-size", "32", "--out", str(out), "--device", "cpu",
                                    "--no-progress", *map(str, extra)])


def test_a_batch_larger_than_the_training_set_is_said(tmp_path):
    # it trains (tiny sets with a recipe's batch are common in smoke runs), but the console and train.log say that
    # each step sees the whole set, not the batch configured (the run recorded batch 64 without a word)
    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, size=(32, 32), seed=0)
    res = _train(data, tmp_path / "run", "--batch-size", 64)
    assert res.exit_code == 0, res.output
    for text in (" ".join(res.output.split()), " ".join((tmp_path / "run" / "train.log").read_text().split())):
        assert "warning: train.batch_size (--batch-size) 64 is larger than the 4 training samples" in text, text
    res = _train(data, tmp_path / "ok", "--batch-size", 4)  # the whole set in one batch: nothing to say
    assert res.exit_code == 0 and "larger than the" not in res.output


def test_a_binary_loss_on_multiclass_data_is_refused_before_training(tmp_path):
    root = make_acdc(tmp_path / "acdc", n_train=2)
    res = _train(root, tmp_path / "run", "--batch-size", 2, "--set", "loss.name=bce_dice")
    text = " ".join(res.output.split())
    assert res.exit_code != 0 and "loss.name='bce_dice' takes one output channel" in text, text
    assert "4 classes" in text and "--set loss.name=ce_dice" in text
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_loss_changed_by_set_names_the_recipe_kwargs_that_do_not_fit(tmp_path):
    # vmunet_ph2's bce_dice kwargs stay when --set loss.name=dice: the error says where they come from and the way out
    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, size=(32, 32), seed=0)
    res = CliRunner().invoke(app, ["train", "--recipe", "vmunet_ph2", "--model", "vmunet_tiny", "--data", str(data),
                                   "--epochs", "1", "--max-steps", "1", "--image-size", "32", "--batch-size", "2",
                                   "--out", str(tmp_path / "run"), "--device", "cpu", "--no-progress",
                                   "--set", "loss.name=dice"])
    text = " ".join(res.output.split())
    assert res.exit_code != 0 and "do not fit loss.name='dice'" in text and "loss.kwargs={}" in text, text
    assert "bce_weight" in text and not (tmp_path / "run" / "checkpoints").exists()

