"""Cross-validation of volumetric layouts: a case is a volume (stored as one, or as training slices stacked back),
one patient's phases are held out together, out-of-fold volumes are saved and scored per volume."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest

from engine_helpers import tiny_config
from mambaseg.configs import RunConfig, apply_overrides, load_config
from mambaseg.data import ACDC_LABELS, acdc_slices, acdc_volumes
from mambaseg.data.cache import write_volcache
from mambaseg.data.files import DatasetError
from mambaseg.data.folds import case_group, make_folds, pool_groups
from mambaseg.data.layouts import case_pool, open_task
from mambaseg.data.task import DataTaskError
from mambaseg.engine.crossval import evaluate_cv, train_folds
from mambaseg.inference.volume import read_label_volume
from mambaseg.metrics.score import score_cases

SHAPE = (20, 18)


def _volume(rng: np.random.Generator, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """A (D, H, W) image in [0, 1] whose three structures are brighter than the background, and its labels."""
    lab = np.zeros((depth, *SHAPE), np.uint8)
    cy, cx = rng.integers(7, 12), rng.integers(6, 11)
    lab[:, cy - 5:cy + 5, cx - 5:cx + 5] = 2
    lab[:, cy - 3:cy + 3, cx - 3:cx + 3] = 3
    lab[:, cy + 5:cy + 8, cx - 4:cx + 2] = 1
    img = (0.25 * lab + 0.15 * rng.random(lab.shape)).astype(np.float32)
    return img, lab


def make_acdc_cv(root, *, train_patients=(3, 4, 5), val_patients=(7, 8), depth=4, seed=0):
    """A small ACDC tree: two phases per patient, the training patients as slices (numbered from 1, as the SSL4MIS
    files are), the validation patients as volumes, one test volume."""
    rng = np.random.default_rng(seed)
    (root / "data" / "slices").mkdir(parents=True)
    names = []
    for p in train_patients:
        for fr in (1, 2):
            img, lab = _volume(rng, depth)
            for z in range(depth):
                name = f"patient{p:03d}_frame{fr:02d}_slice_{z + 1}"
                with h5py.File(root / "data" / "slices" / f"{name}.h5", "w") as f:
                    f["image"], f["label"] = img[z], lab[z]
                names.append(name)
    (root / "train_slices.list").write_text("\n".join(names) + "\n")
    for split, patients in (("val", val_patients), ("test", (9,))):
        vols = [f"patient{p:03d}_frame{fr:02d}" for p in patients for fr in (1, 2)]
        for v in vols:
            img, lab = _volume(rng, depth)
            with h5py.File(root / "data" / f"{v}.h5", "w") as f:
                f["image"], f["label"] = img, lab
        (root / f"{split}.list").write_text("\n".join(vols) + "\n")
    return root


def _truths_of(acdc_root) -> dict[str, np.ndarray]:
    """Every case's (D, H, W) labels read here from the ACDC tree (volumes, or training slices stacked)."""
    truth = {}
    for c in case_pool(acdc_root, "acdc"):
        f = acdc_root / "data" / f"{c}.h5"
        if f.is_file():
            with h5py.File(f) as h:
                truth[c] = h["label"][()]
            continue
        zs = []
        for z in range(1, 5):
            with h5py.File(acdc_root / "data" / "slices" / f"{c}_slice_{z}.h5") as h:
                zs.append(h["label"][()])
        truth[c] = np.stack(zs)
    return truth


@pytest.fixture(scope="module")
def acdc_cv(tmp_path_factory):
    return make_acdc_cv(tmp_path_factory.mktemp("acdccv") / "acdc")


def _volume_cfg(data, out, **kw):
    return tiny_config(data, out, **{"model.num_classes": 4, "model.in_chans": 1, "data.binary": False,
                                     "train.epochs": 1, "train.batch_size": 8, **kw})


def test_the_pool_is_every_train_and_val_volume_and_phases_stay_together(acdc_cv):
    pool = case_pool(acdc_cv, "acdc")
    assert pool == sorted(f"patient{p:03d}_frame{fr:02d}" for p in (3, 4, 5, 7, 8) for fr in (1, 2))  # no test
    groups = pool_groups(pool)
    assert groups["patient004_frame02"] == "patient004" == case_group("patient004_frame01")
    folds = make_folds(pool, 5, seed=0, groups=groups)
    for f in folds:  # each fold holds out both phases of one patient
        assert len(f["val"]) == 2 and len({case_group(c) for c in f["val"]}) == 1
    assert sorted(c for f in folds for c in f["val"]) == pool
    with pytest.raises(ValueError, match="at least 6 groups"):
        make_folds(pool, 6, seed=0, groups=groups)
    assert make_folds(pool, 6, seed=0)  # without groups there are ten cases to deal
    assert pool_groups(["IMD003", "IMD004"]) is None  # 2-D ids: nothing to group, the folds are the plain deal


def test_a_fold_trains_on_its_cases_slices_and_holds_out_their_volumes(acdc_cv, tmp_path):
    split = {"train": ["patient003_frame01", "patient003_frame02", "patient004_frame01", "patient004_frame02",
                       "patient007_frame01", "patient007_frame02"],
             "val": ["patient005_frame01", "patient005_frame02", "patient008_frame01", "patient008_frame02"]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    cfg = apply_overrides(RunConfig(), ["data.image_size=[32,32]", "data.augment=false",
                                        f"data.split_file={tmp_path / 'split.json'}"])
    task = open_task(acdc_cv, cfg, splits=("train", "val", "test"))
    train, val, test = task.datasets["train"], task.datasets["val"], task.datasets["test"]
    # training: the slices of patients 3 and 4, then every slice of patient 7's two volumes
    assert len(train) == 4 * 4 + 2 * 4
    cases = {re.sub(r"^val/", "", i).split("#")[0].rsplit("_slice", 1)[0] for i in train.ids}
    assert cases == set(split["train"])
    assert "val/patient007_frame02#3" in train.ids
    assert val.ids == split["val"] and len(test) == 2
    # a held-out case known by its slices is the stack of those slices, in slice order
    vol = val[0]
    want_img, want_lab = zip(*[(f["image"][()], f["label"][()]) for f in
                              (h5py.File(acdc_cv / "data" / "slices" / f"patient005_frame01_slice_{z}.h5")
                               for z in (1, 2, 3, 4))])
    np.testing.assert_array_equal(vol.image, np.stack(want_img))
    np.testing.assert_array_equal(vol.label, np.stack(want_lab))
    # a held-out case stored as a volume is that volume
    with h5py.File(acdc_cv / "data" / "patient008_frame02.h5") as f:
        np.testing.assert_array_equal(val[3].image, f["image"][()])
    # both travel to DataLoader workers (spawn pickles them) and read the same items there
    import pickle

    train2, val2 = pickle.loads(pickle.dumps((train, val)))
    for i in (0, len(train) - 1):
        assert train2[i]["id"] == train.ids[i] and np.array_equal(train2[i]["mask"], train[i]["mask"])
    np.testing.assert_array_equal(val2[0].label, vol.label)
    # the split must cover exactly the pool
    (tmp_path / "bad.json").write_text(json.dumps({"train": split["train"][:-1], "val": split["val"]}))
    with pytest.raises(DatasetError, match="bad.json"):
        open_task(acdc_cv, apply_overrides(cfg, [f"data.split_file={tmp_path / 'bad.json'}"]), splits=("train",))
    with pytest.raises(DataTaskError, match="train_splits"):
        open_task(acdc_cv, apply_overrides(cfg, ["data.train_splits=[train,val]"]), splits=("train", "val"))


def test_the_volcache_gives_the_same_folds(acdc_cv, tmp_path):
    cache = write_volcache(
        tmp_path / "c.npz", name="acdc", label_names=ACDC_LABELS, num_classes=4, image_size=(32, 32),
        train=acdc_slices(acdc_cv, image_size=32, augment=False, normalization=None),
        eval_splits={"val": acdc_volumes(acdc_cv, "val"), "test": acdc_volumes(acdc_cv, "test")})
    assert case_pool(cache, "volcache") == case_pool(acdc_cv, "acdc")
    pool = case_pool(cache, "volcache")
    fold = make_folds(pool, 5, seed=1, groups=pool_groups(pool))[2]
    (tmp_path / "split.json").write_text(json.dumps(fold))
    cfg = apply_overrides(RunConfig(), ["data.image_size=[32,32]", "data.augment=false",
                                        f"data.split_file={tmp_path / 'split.json'}"])
    src, cached = (open_task(p, cfg, splits=("train", "val")) for p in (acdc_cv, cache))
    assert src.datasets["train"].ids == cached.datasets["train"].ids
    assert src.datasets["val"].ids == cached.datasets["val"].ids == fold["val"]
    for a, b in zip(src.datasets["val"], cached.datasets["val"]):
        # rebuilt from cached slices: stored at the cache size; a cached val volume: labels at the original size
        assert b.label_shape == ((a.label.shape[0], 32, 32) if a.source_format == "slices" else a.label.shape)


def test_volumetric_cross_validation_end_to_end(tiny_model, acdc_cv, tmp_path):
    root = tmp_path / "cv"
    cfg = _volume_cfg(acdc_cv, root, **{"data.train_splits": ["train", "val"]})
    assert len(train_folds(cfg, folds=5, fold=[0, 3], tta="flip")) == 2
    rec = json.loads((root / "splits_final.json").read_text())
    assert rec["n_cases"] == 10 and rec["n_groups"] == 5 and "frame" in rec["grouping"]
    for i in (0, 3):
        run = root / f"fold_{i}"
        held = rec["folds"][i]["val"]
        assert load_config(run / "config.yaml").data.train_splits == ["train"]  # the fold already has val's cases
        m = json.loads((run / "metrics.json").read_text())  # validated per volume on the held-out cases only
        assert sorted(v["id"] for v in m["per_volume"]) == sorted(held)
        for sub in ("last", "best", "last_tta_flip"):
            oof = run / "oof" / sub
            assert sorted(p.stem for p in (oof / "masks").glob("*.npz")) == sorted(held)
            lab = np.load(oof / "masks" / f"{held[0]}.npz")["label"]
            prob = np.load(oof / "probabilities" / f"{held[0]}.npz")["probabilities"]
            assert lab.dtype == np.uint8 and lab.shape == (4, *SHAPE)
            assert prob.dtype == np.float16 and prob.shape == (4, 4, 32, 32)
            np.testing.assert_allclose(prob.astype(np.float32).sum(0), 1.0, atol=3e-3)
            assert json.loads((oof / "oof.json").read_text())["ids"] == held
    with pytest.raises(FileNotFoundError, match=r"fold\(s\) \[1, 2, 4\]"):
        evaluate_cv(root)
    train_folds(cfg, folds=5, fold="all", tta="flip")
    res = evaluate_cv(root)
    assert res["n_cases"] == 10 and "volume" in res["unit"] and res["conventions"]["units"] == "voxels"
    assert res["pooled"]["classes"] == ["background", "RV", "Myo", "LV"]
    # per_case_dice, recomputed from the saved label volumes and the ground truth read here
    truth = _truths_of(acdc_cv)
    per_class = {k: [] for k in (1, 2, 3)}
    for r in res["cases"]:
        pred = np.load(root / f"fold_{r['fold']}" / "oof" / "last" / "masks" / f"{r['id']}.npz")["label"]
        for k in per_class:
            p, g = pred == k, truth[r["id"]] == k
            per_class[k].append(2 * (p & g).sum() / (p.sum() + g.sum()))
    assert res["per_case_dice"] == pytest.approx(np.mean([np.mean(v) for v in per_class.values()]), abs=1e-6)
    # post-processed in 3-D (26-connected largest component per class) before scoring
    from mambaseg.inference.postprocess import postprocess_labels

    pp = evaluate_cv(root, postprocess="largest_component", out=tmp_path / "pp")
    r = pp["cases"][0]
    raw = np.load(root / f"fold_{r['fold']}" / "oof" / "last" / "masks" / f"{r['id']}.npz")["label"]
    want = score_cases([(r["id"], postprocess_labels(raw.astype(np.int64), "largest_component"), truth[r["id"]])],
                       num_classes=4)["cases"][0]["dice"]
    assert pp["postprocess"] == ["largest_component"] and r["dice"] == pytest.approx(want)
    # scoring reads each fold's split.json and does not rewrite it (a root may be read-only)
    before = {f: f.stat().st_ino for f in root.glob("fold_*/split.json")}
    again = evaluate_cv(root, out=tmp_path / "again")
    assert {f: f.stat().st_ino for f in root.glob("fold_*/split.json")} == before and len(before) == 5
    assert again["per_case_dice"] == res["per_case_dice"]
    # TTA predictions were saved by the folds and are scored from the files
    tta = evaluate_cv(root, tta="flip", out=tmp_path / "tta")
    assert tta["tta"] == "flip" and tta["n_cases"] == 10
    # a fold without its saved TTA volumes has them made from its checkpoint while scoring: the same numbers
    import shutil

    shutil.rmtree(root / "fold_2" / "oof" / "last_tta_flip")
    remade = evaluate_cv(root, tta="flip", out=tmp_path / "tta_remade")
    assert remade["per_case_dice"] == pytest.approx(tta["per_case_dice"], abs=1e-6)
    # an ensemble of a root with itself is refused; of two roots with the same folds, averaged per voxel
    root2 = tmp_path / "cv2"
    train_folds(_volume_cfg(acdc_cv, root2, **{"train.seed": 11}), folds=5, fold="all")
    ens = evaluate_cv([root, root2], out=tmp_path / "ens")
    assert ens["members"] == 2 and ens["n_cases"] == 10
    from mambaseg.engine.crossval import volume_labels_from_probabilities

    r = ens["cases"][0]
    probs = sum(np.load(rt / f"fold_{r['fold']}" / "oof" / "last" / "probabilities" / f"{r['id']}.npz")
                ["probabilities"].astype(np.float32) for rt in (root, root2)) / 2
    want = volume_labels_from_probabilities(probs, SHAPE)
    got = score_cases([(r["id"], want, truth[r["id"]])], num_classes=4)["cases"][0]["dice"]
    assert r["dice"] == pytest.approx(got)
    # a member trained at another size (a mix of recipes): its (C, D, h, w) probabilities are resized to the largest
    # h, w (bilinear per slice) before the mean; recomputed here in float64
    import torch
    import torch.nn.functional as F

    root3 = tmp_path / "cv3"
    train_folds(_volume_cfg(acdc_cv, root3, **{"data.image_size": [64, 64]}), folds=5, fold="all")
    mix = evaluate_cv([root, root3], out=tmp_path / "mix")
    assert mix["members"] == 2 and mix["n_cases"] == 10
    r = mix["cases"][0]
    small, big = (np.load(rt / f"fold_{r['fold']}" / "oof" / "last" / "probabilities" / f"{r['id']}.npz")
                  ["probabilities"].astype(np.float64) for rt in (root, root3))
    assert small.shape == (4, 4, 32, 32) and big.shape == (4, 4, 64, 64)
    up = F.interpolate(torch.from_numpy(np.moveaxis(small, 1, 0)), size=(64, 64), mode="bilinear",
                       align_corners=False).numpy()
    want = volume_labels_from_probabilities((np.moveaxis(up, 0, 1) + big) / 2, SHAPE)
    got = score_cases([(r["id"], want, truth[r["id"]])], num_classes=4)["cases"][0]["dice"]
    assert r["dice"] == pytest.approx(got)
    # ranked by the mean per-volume Dice (nnU-Net's criterion), each candidate as scored on its own
    from mambaseg.engine.compare import compare_cv

    cmp = compare_cv([root, root2, root3], tmp_path / "cmp")
    assert cmp["criterion"] == "per_case_dice" and len(cmp["ranking"]) == 7
    by = {r["candidate"]: r["value"] for r in cmp["ranking"]}
    assert by["cv+cv2"] == ens["per_case_dice"] and by["cv+cv3"] == mix["per_case_dice"]
    assert by["cv"] == again["per_case_dice"]
    assert cmp["ranking"][0]["value"] == max(by.values())
    from mambaseg.engine.crossval import mean_probabilities

    with pytest.raises(ValueError, match="classes and slices must agree"):
        mean_probabilities({"a.npz": small, "b.npz": big[:, :3]}, volumetric=True)
    # 2-D members saved at different sizes (cross-validations on caches of two sizes): the same resize, per class
    a2, b2 = small[:, 0], big[:, 0]  # (C, h, w)
    up2 = F.interpolate(torch.from_numpy(a2)[None], size=(64, 64), mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(mean_probabilities({"a.npz": a2.astype(np.float32), "b.npz": b2.astype(np.float32)},
                                                  volumetric=False), (up2 + b2) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="b.npz.*classes must agree"):
        mean_probabilities({"a.npz": a2, "b.npz": b2[:3]}, volumetric=False)


def test_cli_cross_validates_a_volumetric_dataset(tiny_model, acdc_cv, tmp_path):
    from typer.testing import CliRunner

    from mambaseg.cli import app
    from mambaseg.cli._common import state

    state.debug = False
    runner = CliRunner()
    root = tmp_path / "cvroot"

    def train(folds: str, out) -> list[str]:
        return ["train", "--model", tiny_model, "--data", str(acdc_cv), "--epochs", "1", "--image-size", "32",
                "--batch-size", "8", "--device", "cpu", "--out", str(out), "--no-progress", "--folds", folds,
                "--fold", "all", "--set", "model.num_classes=4", "--set", "model.in_chans=1",
                "--set", "data.binary=false", "--set", "data.validate=false", "--set", 'train.amp="off"']

    res = runner.invoke(app, train("5", root))
    assert res.exit_code == 0, res.output
    words = " ".join(res.output.split())
    assert all(f"fold {i} of 5 (0-based): " in words for i in range(5)) and "fold 4/4" not in words
    res = runner.invoke(app, ["evaluate", "--cv", str(root)])
    assert res.exit_code == 0, res.output
    assert "10 cases" in res.output and "mean per-volume dice" in res.output and "RV" in res.output
    saved = json.loads((root / "cv_metrics.json").read_text())
    assert f"{saved['per_case_dice']:.4f}" in res.output
    # the rule of evaluate and training's validation, named with what it decided, in volumes
    from mambaseg.metrics.hd95 import describe_empty_masks

    assert saved["conventions"]["empty_policy"] == "transunet"
    note = describe_empty_masks(saved["empty_masks"], "transunet", "volume")
    assert note.startswith("TransUNet rule") and note in " ".join(res.output.split())
    res = runner.invoke(app, train("6", tmp_path / "six"))  # 5 patients: six folds cannot keep phases together
    assert res.exit_code == 1 and "at least 6 groups" in res.output


def test_synapse_folds_hold_out_cases_rebuilt_from_their_slices(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from test_synapse import make_synapse

    root = make_synapse(tmp_path / "syn")
    assert case_pool(root, "synapse") == ["case0005", "case0006", "case0007"]  # test volumes are never in it
    split = {"train": ["case0005", "case0007"], "val": ["case0006"]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    cfg = apply_overrides(RunConfig(), ["data.image_size=[32,32]", "data.augment=false",
                                        f"data.split_file={tmp_path / 'split.json'}"])
    task = open_task(root, cfg, splits=("train", "val"))
    assert task.datasets["train"].ids == [f"case{c}_slice{k:03d}" for c in ("0005", "0007") for k in range(3)]
    vol = task.datasets["val"][0]
    assert vol.id == "case0006" and vol.label.shape == (3, 20, 24)
    assert [int(vol.label[k].max()) for k in range(3)] == [8, 8, 8] and vol.label[2, 4, 4] == 3  # slice order


def test_nnunet_folds_score_each_volume_with_its_own_spacing(tiny_model, tmp_path):
    pytest.importorskip("nibabel")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from test_nnunet import make_nnunet

    data = make_nnunet(tmp_path / "raw", n_cases=4)
    assert case_pool(data, "nnunet") == [f"case_{i:03d}" for i in range(4)]
    root = tmp_path / "cv"
    train_folds(_volume_cfg(data, root, **{"model.num_classes": 3}), folds=2, fold="all")
    res = evaluate_cv(root, empty_policy="nan")  # "inf" / None mark the HD95 values an empty mask decided
    assert res["n_cases"] == 4 and res["conventions"]["units"] == "each case's own voxel spacing (mm)"
    # one case's HD95, recomputed in mm from its saved prediction and its NIfTI label
    from mambaseg.data.nnunet import NnUNetRaw
    from mambaseg.metrics import hd95

    r = next(c for c in res["cases"] if c["per_class"]["hd95"][0] not in (None, "inf"))
    vol = NnUNetRaw(data).load_case(r["id"])
    assert vol.spacing == pytest.approx((2.5, 0.9, 0.8))
    pred = read_label_volume(root / f"fold_{r['fold']}" / "oof" / "last" / "masks" / f"{r['id']}.npz")[0]
    assert r["per_class"]["hd95"][0] == pytest.approx(hd95(pred == 1, vol.label == 1, vol.spacing), rel=1e-5)
    # the checkpoint records the channels, so predictions scale inputs as in training wherever the dataset is
    from mambaseg.checkpoint import load_checkpoint
    from mambaseg.inference.volume import intensity_for_checkpoint

    ckpt = load_checkpoint(root / "fold_0" / "checkpoints" / "last.pt")
    assert ckpt["task"]["channel_names"] == ["CT"]
    ckpt["config"]["data"]["path"] = str(tmp_path / "moved")
    assert intensity_for_checkpoint(ckpt) == "ct"


def test_real_acdc_folds_keep_patients_whole_and_rebuild_their_volumes(shared_data, tmp_path):
    acdc = shared_data / "acdc"
    if not acdc.is_dir():
        pytest.skip("../shared/data/acdc is not available")
    from mambaseg.data.folds import fold_split_file, resolve_folds

    pool = case_pool(acdc, "acdc")
    assert len(pool) == 90  # 35 training patients (as slices) + 10 val patients, two phases each; test left out
    rec = resolve_folds(tmp_path, pool, k=5, seed=0, groups=pool_groups(pool))
    assert rec["n_groups"] == 45 and [len(f["val"]) for f in rec["folds"]] == [18] * 5
    for f in rec["folds"]:
        assert not {case_group(c) for c in f["val"]} & {case_group(c) for c in f["train"]}
    cfg = apply_overrides(RunConfig(), [f"data.split_file={fold_split_file(tmp_path, rec, 1)}"])
    task = open_task(acdc, cfg, splits=("train", "val"))
    held = task.datasets["val"]
    assert held.ids == rec["folds"][1]["val"]
    rebuilt = 0
    for vol in held:
        # the SSL4MIS files are min-max normalised per volume, so a correctly rebuilt volume spans exactly [0, 1]
        assert float(vol.image.min()) == 0.0 and float(vol.image.max()) == 1.0
        assert set(np.unique(vol.label)) <= {0, 1, 2, 3} and vol.label.shape == vol.image.shape
        rebuilt += vol.source_format == "slices"
    assert rebuilt >= 10
    n_slices = sum(1 for i in task.datasets["train"].ids if case_group(slice_or_volume(i)) in
                   {case_group(c) for c in rec["folds"][1]["val"]})
    assert n_slices == 0


def slice_or_volume(train_id: str) -> str:
    """The case of a training slice id: ``patient003_frame01_slice_5`` or ``val/patient002_frame01#3``."""
    return train_id.split("/", 1)[-1].split("#")[0].rsplit("_slice", 1)[0]


def test_an_nnunet_folder_with_its_own_folds_is_cross_validated_on_them(tmp_path):
    pytest.importorskip("nibabel")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from test_nnunet import make_nnunet

    from mambaseg.engine.crossval import resolve_cv_folds

    data = make_nnunet(tmp_path / "raw", n_cases=4)
    cases = [f"case_{i:03d}" for i in range(4)]
    theirs = [{"train": cases[1:3], "val": [cases[0], cases[3]]}, {"train": [cases[0], cases[3]], "val": cases[1:3]}]
    (data / "splits_final.json").write_text(json.dumps(theirs))
    rec = resolve_cv_folds(_volume_cfg(data, tmp_path / "cv"), 2)
    assert rec["folds"] == theirs and "own folds" in rec["note"]
    assert make_folds(cases, 2, seed=0) != theirs  # a seeded deal would have given other folds
    with pytest.raises(DatasetError, match="holds 2 folds; pass --folds 2"):
        resolve_cv_folds(_volume_cfg(data, tmp_path / "cv3"), 3)
    (data / "splits_final.json").write_text(json.dumps([{"train": cases[1:], "val": cases[:1]}] * 2))
    with pytest.raises(DatasetError, match="exactly once"):
        resolve_cv_folds(_volume_cfg(data, tmp_path / "cv4"), 2)


def test_folds_trained_on_a_volcache_are_scored_against_the_source_volumes(tiny_model, acdc_cv, tmp_path):
    """--data the ACDC tree a volcache was built from: every held-out volume is scored at its source size, its saved
    (C, D, h, w) probabilities labelled per slice and zoomed (as an ensemble of volumes is). On the cache, the
    volumes rebuilt from training slices are at the cached size (32x32), so the saved labels did not fit."""
    from mambaseg.engine.crossval import volume_labels_from_probabilities

    cache = write_volcache(
        tmp_path / "c.npz", name="acdc", label_names=ACDC_LABELS, num_classes=4, image_size=(32, 32),
        train=acdc_slices(acdc_cv, image_size=32, augment=False, normalization=None),
        eval_splits={"val": acdc_volumes(acdc_cv, "val")})
    root = tmp_path / "cv"
    train_folds(_volume_cfg(cache, root), folds=5, fold="all")
    on_cache = evaluate_cv(root, out=tmp_path / "on_cache")
    res = evaluate_cv(root, data=str(acdc_cv), out=tmp_path / "orig")
    assert res["layout"] == "acdc" and res["n_cases"] == on_cache["n_cases"] == 10
    truth = _truths_of(acdc_cv)
    per_class = {k: [] for k in (1, 2, 3)}
    resized = 0
    for r in res["cases"]:
        oof = root / f"fold_{r['fold']}" / "oof" / "last"
        pred = np.load(oof / "masks" / f"{r['id']}.npz")["label"]
        if pred.shape != truth[r["id"]].shape:  # rebuilt from cached slices: 32x32, not the source's 20x18
            assert pred.shape == (4, 32, 32)
            resized += 1
            probs = np.load(oof / "probabilities" / f"{r['id']}.npz")["probabilities"].astype(np.float32)
            pred = volume_labels_from_probabilities(probs, SHAPE)
        for k in per_class:
            p, g = pred == k, truth[r["id"]] == k
            per_class[k].append(2 * (p & g).sum() / (p.sum() + g.sum()))
    assert resized == 6  # the training patients' 6 phases; the 4 val volumes were cached at their own size
    assert res["per_case_dice"] == pytest.approx(np.mean([np.mean(v) for v in per_class.values()]), abs=1e-6)


def _nnunet_raw(root, n_cases=4):
    import sys
    from pathlib import Path

    pytest.importorskip("nibabel")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from test_nnunet import make_nnunet

    return make_nnunet(root, n_cases=n_cases)  # spacing (D, H, W) = (2.5, 0.9, 0.8) mm, an affine with an offset


def _same(a, b):
    """Per-class metric lists equal up to float32 rounding (None and "inf" compared as they are)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x == y if x is None or isinstance(x, str) else x == pytest.approx(y, rel=1e-5)


def test_out_of_fold_volumes_keep_their_geometry_and_score_back(tiny_model, tmp_path):
    """An out-of-fold volume is written as mambaseg predict writes npz (inference.volume.write_prediction): "label"
    with the source's "spacing" and, from a NIfTI source, its "affine"; mambaseg score reads the folder against the
    source labels in mm, evaluate --cv reads it back, and still reads the npz ``labels`` of roots saved before."""
    import shutil

    import nibabel as nib
    from typer.testing import CliRunner

    from mambaseg.cli import app

    data = _nnunet_raw(tmp_path / "raw")
    root = tmp_path / "cv"
    train_folds(_volume_cfg(data, root, **{"model.num_classes": 3}), folds=2, fold="all")
    res = evaluate_cv(root, empty_policy="nan")  # "inf" / None mark the HD95 values an empty mask decided
    assert res["n_cases"] == 4 and res["conventions"]["units"] == "each case's own voxel spacing (mm)"
    flat = tmp_path / "predictions"
    flat.mkdir()
    for r in res["cases"]:
        f = root / f"fold_{r['fold']}" / "oof" / "last" / "masks" / f"{r['id']}.npz"
        src = nib.load(str(data / "labelsTr" / f"{r['id']}.nii.gz"))
        with np.load(f) as z:
            assert z["label"].dtype == np.uint8 and z["label"].shape == src.shape[::-1]
            assert z["spacing"] == pytest.approx((2.5, 0.9, 0.8))
            np.testing.assert_allclose(z["affine"], src.affine)
            assert z["affine"][0, 3] == pytest.approx(10.0)
        shutil.copy(f, flat)
    # scored by mambaseg score against the source labels: the same per-class numbers, in mm
    out = CliRunner().invoke(app, ["score", str(flat), str(data / "labelsTr"), "--json"])
    assert out.exit_code == 0, out.output
    scored = json.loads(out.output)
    assert scored["conventions"]["units"] == "each case's own voxel spacing (mm)"
    by_id = {c["id"]: c for c in scored["cases"]}
    for r in res["cases"]:
        for k in ("dsc", "hd95", "nsd"):
            _same(by_id[r["id"]]["per_class"][k], r["per_class"][k])
    # a root saved before (npz with "labels" only, no geometry) is scored as it was
    for f in (root / "fold_0" / "oof" / "last" / "masks").glob("*.npz"):
        np.savez_compressed(f, labels=read_label_volume(f)[0].astype(np.uint8))
    old = evaluate_cv(root, out=tmp_path / "old")
    assert old["per_case_dice"] == res["per_case_dice"] and old["hd95"] == res["hd95"]


def test_folds_on_a_volcache_score_every_held_out_volume_in_mm(tiny_model, tmp_path):
    """A volcache keeps the spacing of its evaluation volumes and, at the cached grid, of its training cases: the
    out-of-fold npz of every held-out volume carries it ("spacing", as mambaseg predict writes npz), the volumes
    rebuilt from training slices included, so the fold validation and the scores are all in mm, with no mixed-units
    warning, and agree with scoring against the source within the resize. A cache without the training spacing
    (format /1) still names the volumes it scores in voxels; one without any spacing warns, and scores in voxels."""
    import warnings

    from typer.testing import CliRunner

    from mambaseg.cli import app
    from mambaseg.data.layouts import write_cache
    from mambaseg.data.volumetric import zoom_spacing

    data = _nnunet_raw(tmp_path / "raw")
    cache, counts = write_cache(data, (32, 32), tmp_path / "nn.npz")
    assert counts["val"] == 1
    with np.load(cache) as z:
        (cached,) = [str(i) for i in z["val_ids"]]
    root = tmp_path / "cv"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        train_folds(_volume_cfg(cache, root, **{"model.num_classes": 3}), folds=2, fold="all")
    for i in (0, 1):  # each fold's validation during training: every held-out volume in mm
        assert json.loads((root / f"fold_{i}" / "metrics.json").read_text())["hd95_units"] == "mm"
    masks = {p.stem: p for p in root.glob("fold_*/oof/last/masks/*.npz")}
    assert len(masks) == 4
    at_cache = zoom_spacing((2.5, 0.9, 0.8), (20, 24), (32, 32))  # (2.5, 0.9 * 19 / 31, 0.8 * 23 / 31)
    for case, f in masks.items():
        with np.load(f) as z:
            assert z["label"].dtype == np.uint8 and "affine" not in z.files  # a cache keeps no affine
            if case == cached:
                assert z["spacing"] == pytest.approx((2.5, 0.9, 0.8)) and z["label"].shape[1:] == (20, 24)
            else:  # rebuilt from the cache's training slices: at the cached size, with the spacing of that grid
                assert z["spacing"] == pytest.approx(at_cache, rel=1e-6) and z["label"].shape[1:] == (32, 32)
        assert read_label_volume(f)[1] == pytest.approx((2.5, 0.9, 0.8) if case == cached else at_cache, rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = evaluate_cv(root)
        src = evaluate_cv(root, data=str(data), out=tmp_path / "src")
    for r in (res, src):
        assert r["n_cases"] == 4 and r["conventions"]["units"] == "each case's own voxel spacing (mm)"
        assert "spacing" not in r
    # the same numbers as scored against the source (the rebuilt volumes' predictions zoomed to 20x24 there),
    # within the resize: HD95 within a source voxel in-plane (in voxels of the cached grid it would be far off)
    by_id = {c["id"]: c for c in src["cases"]}
    for c in res["cases"]:
        theirs = by_id[c["id"]]["per_class"]
        for k, tol in (("dsc", 0.03), ("hd95", 0.9), ("nsd", 0.05)):
            assert c["per_class"][k] == pytest.approx(theirs[k], abs=tol), (c["id"], k)
    assert res["hd95"] == pytest.approx(src["hd95"], abs=0.9)
    cli = CliRunner().invoke(app, ["evaluate", "--cv", str(root), "--out", str(tmp_path / "cli")])
    assert cli.exit_code == 0, cli.output
    assert "no voxel spacing" not in " ".join(cli.output.split())
    # a cache written before the training spacing was stored (format /1): the rebuilt volumes are in voxels, named
    with np.load(cache, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("train_case_")}
    meta = json.loads(str(arrays["vol_meta"]))
    arrays["vol_meta"] = np.asarray(json.dumps({**meta, "format": "mambaseg-volcache/1"}))
    np.savez_compressed(tmp_path / "v1.npz", **arrays)
    with pytest.warns(RuntimeWarning, match=r"3 of 4 held-out volumes have no voxel spacing.*in voxels.*--data"):
        v1 = evaluate_cv(root, data=str(tmp_path / "v1.npz"), out=tmp_path / "v1")
    assert "3 of 4" in v1["spacing"] and cached not in v1["spacing"]
    assert all(c in v1["spacing"] for c in masks if c != cached)
    # a cache written before any spacing was stored: the cache's warning, all in voxels, nothing mixed
    np.savez_compressed(tmp_path / "old.npz", **{k: v for k, v in arrays.items() if not k.endswith("_spacing")})
    with pytest.warns(RuntimeWarning, match=r"old\.npz.*no voxel spacing"):
        old = evaluate_cv(root, data=str(tmp_path / "old.npz"), out=tmp_path / "old")
    assert old["conventions"]["units"] == "voxels" and "spacing" not in old
