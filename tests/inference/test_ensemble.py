"""Ensembles and flip TTA: probability averaging, equivalences that hold by construction, CLI use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import mambaseg
from mambaseg.engine import evaluate_checkpoint, save_checkpoint
from mambaseg.inference import ProbabilityEnsemble, load_ensemble
from mambaseg.metrics import labels_from_logits
from mambaseg.models.base import SegmentationModel


class _Symmetric(SegmentationModel):
    """A conv net whose kernels are symmetric under both mirrorings, so f(flip(x)) == flip(f(x)) by construction."""

    stride = 1

    def __init__(self, num_classes: int = 1, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.a = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.b = nn.Conv2d(4, num_classes, 3, padding=1)
        with torch.no_grad():
            for conv in (self.a, self.b):
                w = conv.weight
                w.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class _Constant(nn.Module):
    """Logits log(p / (1 - p)) everywhere: probability p."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.z = float(np.log(p / (1 - p)))

    def forward(self, x):
        return torch.full((x.shape[0], 1, *x.shape[2:]), self.z)


@pytest.fixture(scope="module")
def synthetic_data_module(tmp_path_factory):
    from mambaseg.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("ens") / "data", n_train=4, n_val=4, size=(32, 32), seed=3)


_NORM = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}


def _ckpt(tmp_path, name="a", seed=0, normalization=_NORM):
    torch.manual_seed(seed)
    model = mambaseg.create_model("vmunet_tiny", num_classes=1, dims=8, d_state=2)
    return save_checkpoint(tmp_path / f"{name}.pt", {
        "model": model.mambaseg_spec, "state_dict": model.state_dict(), "image_size": [32, 32], "epoch": 1,
        "normalization": normalization, "label_map": {"background": 0, "foreground": 255}})


def test_flip_tta_of_a_flip_equivariant_model_equals_the_plain_prediction():
    torch.manual_seed(0)
    model = _Symmetric().eval()
    x = torch.randn(2, 3, 16, 20)
    with torch.no_grad():
        plain = torch.sigmoid(model(x))
        tta = ProbabilityEnsemble([model], tta="flip").probabilities(x)
        # a model that is NOT equivariant changes under TTA (the test can fail)
        other = nn.Conv2d(3, 1, 3, padding=1)
        assert not torch.allclose(ProbabilityEnsemble([other], tta="flip").probabilities(x), torch.sigmoid(other(x)))
    assert torch.allclose(tta, plain, atol=1e-6)
    assert torch.equal(labels_from_logits(ProbabilityEnsemble([model], tta="flip")(x)), (plain >= 0.5).long()[:, 0])


def test_probabilities_are_averaged_not_labels_or_logits():
    members = [_Constant(0.76), _Constant(0.76), _Constant(0.01)]
    ens = ProbabilityEnsemble(members)
    x = torch.zeros(1, 3, 4, 4)
    p = ens.probabilities(x)
    assert torch.allclose(p, torch.full_like(p, (0.76 + 0.76 + 0.01) / 3))
    # mean probability 0.51 -> foreground; the mean logit (-0.76) would say background
    assert labels_from_logits(ens(x)).all()
    assert np.mean([m.z for m in members]) < 0
    two = ProbabilityEnsemble([_Constant(0.9), _Constant(0.3), _Constant(0.4)])  # 2 of 3 votes say background
    assert labels_from_logits(two(x)).all()


def test_ensemble_of_two_copies_equals_the_single_checkpoint(tmp_path):
    a = _ckpt(tmp_path)
    single = mambaseg.load(a, device="cpu")
    double = load_ensemble([a, a], device="cpu")
    assert isinstance(double.model, ProbabilityEnsemble) and len(double.model.members) == 2
    # the repr says it is an ensemble (it read like a single model's)
    assert "ensemble=2 checkpoints, tta='none')" in repr(double) and "ensemble" not in repr(single)
    assert "tta='flip'" in repr(load_ensemble([a], tta="flip", device="cpu"))
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.allclose(double.predict_proba(img), single.predict_proba(img), atol=1e-6)
    assert np.array_equal(double.predict(img), single.predict(img))
    big = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)  # resized back to the original size
    assert np.array_equal(double.predict(big), load_ensemble([a], tta=None, device="cpu").predict(big))
    # two different checkpoints do change the answer
    b = _ckpt(tmp_path, "b", seed=1)
    assert not np.allclose(load_ensemble([a, b], device="cpu").predict_proba(img), single.predict_proba(img))


def test_cv_root_expands_to_its_fold_checkpoints_and_mismatches_are_refused(tmp_path):
    a = _ckpt(tmp_path)
    for i in (1, 0):
        (tmp_path / "cv" / f"fold_{i}" / "checkpoints").mkdir(parents=True)
        (tmp_path / "cv" / f"fold_{i}" / "checkpoints" / "best.pt").write_bytes(a.read_bytes())
    # a root stands for its folds' final weights by default (what evaluate --cv scores), best.pt on request
    with pytest.raises(FileNotFoundError, match="last.pt"):
        load_ensemble([tmp_path / "cv"], device="cpu")
    for i in (0, 1):
        (tmp_path / "cv" / f"fold_{i}" / "checkpoints" / "last.pt").write_bytes(a.read_bytes())
    # a fold still training (a last.pt, no metrics.json yet) is not silently ensembled with the finished ones
    (tmp_path / "cv" / "fold_0" / "metrics.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"fold\(s\) \[1\] .*not finished"):
        load_ensemble([tmp_path / "cv"], device="cpu")
    (tmp_path / "cv" / "fold_1" / "metrics.json").write_text("{}")
    # nor is a root whose splits_final.json has more folds than are there
    import json

    from mambaseg.data.folds import make_folds

    def fold_file(k):  # a root's splits_final.json with k folds
        return json.dumps({"k": k, "folds": make_folds([f"c{i}" for i in range(6)], k, seed=0)})

    (tmp_path / "cv" / "splits_final.json").write_text(fold_file(3))
    with pytest.raises(FileNotFoundError, match=r"fold\(s\) \[2\]"):
        load_ensemble([tmp_path / "cv"], device="cpu")
    (tmp_path / "cv" / "splits_final.json").write_text(fold_file(2))
    pred = load_ensemble([tmp_path / "cv"], tta="flip", device="cpu")
    assert [p.split("/")[-3:] for p in pred.info["checkpoint"]] == [["fold_0", "checkpoints", "last.pt"],
                                                                     ["fold_1", "checkpoints", "last.pt"]]
    best = load_ensemble([tmp_path / "cv"], which="best", device="cpu")
    assert [p.split("/")[-1] for p in best.info["checkpoint"]] == ["best.pt", "best.pt"]
    with pytest.raises(ValueError, match="--fold-checkpoint"):
        load_ensemble([tmp_path / "cv"], which="final", device="cpu")
    assert pred.info["tta"] == "flip"
    payload = torch.load(a, weights_only=True)
    payload["label_map"] = {"background": 0, "lesion": 1}
    other = save_checkpoint(tmp_path / "other.pt", payload)
    with pytest.raises(Exception, match="label_map"):
        load_ensemble([a, other], device="cpu")
    with pytest.raises(ValueError, match="--tta"):
        load_ensemble([a], tta="rot90", device="cpu")
    (tmp_path / "cv" / "fold_0" / "checkpoints" / "best.pt").unlink()
    (tmp_path / "cv" / "fold_1" / "checkpoints" / "best.pt").unlink()
    with pytest.raises(FileNotFoundError, match="no fold"):
        load_ensemble([tmp_path / "cv"], which="best")


def test_renormalize_against_a_float64_reference():
    from mambaseg.data import Normalization
    from mambaseg.inference import Renormalize

    rng = np.random.default_rng(4)
    raw = rng.random((2, 3, 5, 6))  # a [0, 1] image, float64
    src = Normalization(mean=(0.41, 0.52, 0.63), std=(0.21, 0.27, 0.33))
    dst = {"mean": [0.7, 0.1, 0.45], "std": [0.15, 0.4, 0.2]}
    x_src = (raw - np.array(src.mean)[:, None, None]) / np.array(src.std)[:, None, None]
    x_dst = (raw - np.array(dst["mean"])[:, None, None]) / np.array(dst["std"])[:, None, None]
    out = Renormalize(src, dst)(torch.from_numpy(x_src).float()).double().numpy()
    assert np.allclose(out, x_dst, atol=1e-5)
    # None is the [0, 1] image itself, both ways, and any number of spatial axes
    assert np.allclose(Renormalize(None, dst)(torch.from_numpy(raw).float()).numpy(), x_dst, atol=1e-5)
    vol = torch.from_numpy(x_src[:, :, None].repeat(4, axis=2)).float()
    assert np.allclose(Renormalize(src, None)(vol).double().numpy(), raw[:, :, None].repeat(4, axis=2), atol=1e-5)
    with pytest.raises(ValueError, match="channel"):
        Renormalize(src, {"mean": [0.5], "std": [0.2]})
    with pytest.raises(ValueError, match="3 channel"):
        Renormalize(src, dst)(torch.zeros(1, 1, 4, 4))


def test_members_trained_with_other_normalizations_each_see_their_own_input(tmp_path):
    """The folds of a cross-validation each measure mean/std on their own training cases: the ensemble's
    probabilities are the mean of each checkpoint's own predictor (its own normalisation), in prediction and in
    evaluation."""
    a = _ckpt(tmp_path)
    b = _ckpt(tmp_path, "b", seed=1, normalization={"mean": [0.3, 0.55, 0.5], "std": [0.22, 0.2, 0.35]})
    c = _ckpt(tmp_path, "c", seed=2, normalization=None)  # trained on [0, 1] inputs
    rng = np.random.default_rng(5)
    imgs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]  # network size: no resampling
    ens = load_ensemble([a, b, c], tta="flip", device="cpu")
    for img in imgs:
        ref = np.mean([load_ensemble([f], tta="flip", device="cpu").predict_proba(img) for f in (a, b, c)], axis=0)
        assert np.allclose(ens.predict_proba(img), ref, atol=1e-5)
    # without the per-member normalisation the answer differs (the test can fail)
    same = load_ensemble([a, _ckpt(tmp_path, "b2", seed=1), _ckpt(tmp_path, "c2", seed=2)], tta="flip", device="cpu")
    assert not np.allclose(same.predict_proba(imgs[0]), ens.predict_proba(imgs[0]), atol=1e-3)


def _ckpt_at(tmp_path, name, seed, size):
    path = _ckpt(tmp_path, name, seed=seed)
    payload = torch.load(path, weights_only=True)
    payload["image_size"] = list(size)
    return save_checkpoint(path, payload)


def test_members_trained_at_other_sizes_against_a_plain_reference(tmp_path):
    """A mix of recipes (e.g. 256x256 with 192x256): the ensemble takes the largest size; a smaller member gets the
    input area-resized to its own size and its logits resized back (bilinear) before the mean of probabilities."""
    import torch.nn.functional as F

    a = _ckpt_at(tmp_path, "s", 0, (32, 32))
    b = _ckpt_at(tmp_path, "l", 1, (64, 96))
    ens = load_ensemble([a, b], device="cpu")
    assert ens.image_size == (64, 96)
    img = np.random.default_rng(6).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    x = ens.preprocess(img)[None]
    assert x.shape[-2:] == (64, 96)
    ma, mb = (mambaseg.load(f, device="cpu").model for f in (a, b))
    with torch.no_grad():
        small = F.adaptive_avg_pool2d(x.double(), (32, 32)).float()  # area resize, done in float64
        la = F.interpolate(ma(small).double(), size=(64, 96), mode="bilinear", align_corners=False)
        ref = (torch.sigmoid(la) + torch.sigmoid(mb(x).double())) / 2
        got = ens.model.probabilities(x)
    assert torch.allclose(got.double(), ref, atol=1e-5)
    # the member at the ensemble's size sees exactly its own predictor's input
    assert torch.equal(x, mambaseg.load(b, device="cpu").preprocess(img)[None])
    # masks come out at the image's size; the order of the members only changes the reference normalisation
    assert ens.predict(img).shape == (64, 96)
    assert load_ensemble([b, a], device="cpu").image_size == (64, 96)


def test_evaluate_an_ensemble_of_two_sizes(tmp_path, synthetic_data_module):
    a = _ckpt_at(tmp_path, "s", 0, (32, 32))
    b = _ckpt_at(tmp_path, "l", 1, (64, 96))
    ev = evaluate_checkpoint([a, b], synthetic_data_module, device="cpu")
    assert ev["ensemble"] == 2 and ev["image_size"] == [64, 96] and 0 <= ev["dice"] <= 1
    assert ev["n_images"] == 4


def test_a_cv_root_whose_folds_differ_in_normalization_predicts_and_evaluates(tmp_path, synthetic_data_module):
    from typer.testing import CliRunner

    from mambaseg.cli import app

    for i, norm in enumerate([_NORM, {"mean": [0.3, 0.55, 0.5], "std": [0.22, 0.2, 0.35]}]):
        f = _ckpt(tmp_path, f"f{i}", seed=i, normalization=norm)
        (tmp_path / "cv" / f"fold_{i}" / "checkpoints").mkdir(parents=True)
        f.rename(tmp_path / "cv" / f"fold_{i}" / "checkpoints" / "last.pt")
        (tmp_path / "cv" / f"fold_{i}" / "metrics.json").write_text("{}")  # a finished fold
    root = tmp_path / "cv"
    res = CliRunner().invoke(app, ["predict", "--checkpoint", str(root), "--input",
                                   str(synthetic_data_module / "val" / "images"), "--out", str(tmp_path / "p"),
                                   "--device", "cpu", "--no-overlays"])
    assert res.exit_code == 0, res.output
    pred = load_ensemble([root], device="cpu")
    tp = fp = fn = 0
    for f in sorted((synthetic_data_module / "val" / "images").glob("*.png")):
        m = pred.predict(f).astype(bool)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "p" / "masks" / f.name)) > 0, m)
        g = np.asarray(Image.open(synthetic_data_module / "val" / "masks" / f.name)) > 127
        tp += int((m & g).sum()); fp += int((m & ~g).sum()); fn += int((~m & g).sum())
    ev = evaluate_checkpoint([root], synthetic_data_module, device="cpu")
    assert ev["ensemble"] == 2
    assert ev["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-4)


def test_predict_and_evaluate_with_tta_and_ensemble(tmp_path, synthetic_data_module):
    from typer.testing import CliRunner

    from mambaseg.cli import app

    a, b = _ckpt(tmp_path), _ckpt(tmp_path, "b", seed=1)
    runner = CliRunner()
    res = runner.invoke(app, ["predict", "--checkpoint", str(a), "--checkpoint", str(b), "--tta", "flip", "--input",
                              str(synthetic_data_module / "val" / "images"), "--out", str(tmp_path / "p"),
                              "--device", "cpu", "--no-overlays"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "p" / "masks").glob("*.png"))) == 4
    ev = evaluate_checkpoint([a, b], synthetic_data_module, device="cpu", tta="flip")
    assert ev["ensemble"] == 2 and ev["tta"] == "flip" and 0 <= ev["dice"] <= 1
    # the evaluator's Dice of the ensemble = Dice of the masks the predictor writes (at 32x32 = network size)
    pred = load_ensemble([a, b], tta="flip", device="cpu")
    tp = fp = fn = 0
    for f in sorted((synthetic_data_module / "val" / "images").glob("*.png")):
        m = pred.predict(f).astype(bool)
        g = np.asarray(Image.open(synthetic_data_module / "val" / "masks" / f.name)) > 127
        tp += int((m & g).sum()); fp += int((m & ~g).sum()); fn += int((~m & g).sum())
    assert ev["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-4)
    # the CLI's table says what was evaluated in words (not a list of paths)
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(a), "--checkpoint", str(b), "--tta", "flip", "--data",
                              str(synthetic_data_module), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    words = " ".join(res.output.split())  # rich wraps the title to the table's width
    assert "val metrics of an ensemble of 2 checkpoints (probabilities averaged), flip TTA" in words
    assert "PosixPath" not in res.output


def test_volumes_are_predicted_slice_by_slice_with_tta():
    from mambaseg.inference import predict_volume

    torch.manual_seed(2)
    model = _Symmetric(num_classes=3, in_chans=1).eval()
    vol = np.random.default_rng(0).random((3, 20, 24)).astype(np.float32)
    plain = predict_volume(model, vol, image_size=16, device="cpu")
    tta = predict_volume(ProbabilityEnsemble([model], tta="flip"), vol, image_size=16, device="cpu")
    assert plain.shape == tta.shape == (3, 20, 24)
    assert np.array_equal(plain, tta)  # equivariant model: mirroring changes nothing, slice by slice
    other = nn.Conv2d(1, 3, 5, padding=2)
    diff = predict_volume(ProbabilityEnsemble([other], tta="flip"), vol, image_size=16, device="cpu")
    assert not np.array_equal(diff, predict_volume(other, vol, image_size=16, device="cpu"))
    # no device: the model's own (a weight tensor's truth value used to raise)
    for m in (model, ProbabilityEnsemble([other], tta="flip")):
        assert np.array_equal(predict_volume(m, vol, image_size=16), predict_volume(m, vol, image_size=16, device="cpu"))


def test_stored_float16_probabilities_keep_the_label_side_of_the_threshold():
    from mambaseg.inference.volume import probabilities_of, stored_probabilities
    from mambaseg.metrics import labels_from_probabilities

    # logits whose float32 sigmoid lies just below / at / above 0.5: float16 rounds the first ones up to 0.5
    logits = torch.tensor([-1e-4, -3e-5, -1e-6, 0.0, 1e-6, 1e-4], dtype=torch.float32).reshape(1, 1, 6)
    p32 = probabilities_of(logits)
    assert (p32.astype(np.float16)[0, 0, :3] == 0.5).all()  # the case being fixed
    stored = stored_probabilities(logits)
    assert stored.dtype == np.float16
    want = labels_from_probabilities(torch.from_numpy(p32)[None]).numpy()
    got = labels_from_probabilities(torch.from_numpy(stored.astype(np.float32))[None]).numpy()
    assert np.array_equal(got, want) and want.tolist() == [[[0, 0, 0, 1, 1, 1]]]
    assert np.abs(stored.astype(np.float32) - p32).max() < 1e-3
    multi = torch.randn(3, 4, 5)  # softmax: stored as is
    assert np.array_equal(stored_probabilities(multi), probabilities_of(multi).astype(np.float16))


def test_predict_saves_the_probabilities_its_masks_come_from(tmp_path, synthetic_data_module):
    from typer.testing import CliRunner

    from mambaseg.cli import app

    a, b = _ckpt(tmp_path), _ckpt(tmp_path, "b", seed=1)
    images = synthetic_data_module / "val" / "images"
    args = ["predict", "--checkpoint", str(a), "--checkpoint", str(b), "--tta", "flip", "--input", str(images),
            "--out", str(tmp_path / "p"), "--device", "cpu", "--no-overlays", "--save-probabilities"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    pred = load_ensemble([a, b], tta="flip", device="cpu")
    files = sorted(images.glob("*.png"))
    assert sorted(p.name for p in (tmp_path / "p" / "probabilities").iterdir()) == [f.stem + ".npz" for f in files]
    for f in files:
        p = np.load(tmp_path / "p" / "probabilities" / f"{f.stem}.npz")["probabilities"]
        assert p.dtype == np.float16 and p.shape == (1, 32, 32)
        np.testing.assert_allclose(p[0].astype(np.float32), pred.predict_proba(f), atol=1e-3)
        mask = np.asarray(Image.open(tmp_path / "p" / "masks" / f.name)) > 0
        sure = np.abs(p[0].astype(np.float32) - 0.5) > 2e-3  # float16 rounding near the threshold
        assert np.array_equal(mask[sure], (p[0].astype(np.float32) >= 0.5)[sure])
    # existing probability files are refused like masks, before anything is written
    (tmp_path / "p" / "masks" / files[0].name).unlink()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "probabilities" in res.output
    assert not (tmp_path / "p" / "masks" / files[0].name).exists()
