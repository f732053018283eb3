"""mambaseg score: NSD and HD95 on a hand-computed case, pooled vs per-case, empty-mask policies, file matching."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mambaseg.cli import app
from mambaseg.data.files import DatasetError, match_mask_files
from mambaseg.metrics.score import nsd, score_cases


def _squares():
    gt = np.zeros((10, 10), np.uint8)
    gt[2:6, 2:6] = 1
    pred = np.zeros_like(gt)
    pred[2:6, 4:8] = 1  # the same 4x4 square moved right by 2 pixels
    return pred, gt


def test_nsd_and_hd95_by_hand():
    # each 4x4 square has 12 surface pixels (16 minus the 2x2 interior). Pred surface -> GT surface: the 4 pixels of
    # rows 2 and 5 at columns 4-5 lie on the GT surface (0), columns 6 -> 1 and 7 -> 2 (4 pixels), the left column's
    # inner rows (3, 4) at column 4 -> 1 (column 5 is GT surface), the right column's at column 7 -> 2. So each
    # direction (symmetric by mirroring) holds {0 x4, 1 x4, 2 x4}: within 0 -> 8/24, within 1 -> 16/24, HD95 = 2
    pred, gt = _squares()
    assert nsd(pred, gt, 0) == pytest.approx(8 / 24)
    assert nsd(pred, gt, 1) == pytest.approx(16 / 24)
    assert nsd(pred, gt, 2) == pytest.approx(1.0)
    assert nsd(pred, gt, 1, spacing=0.5) == pytest.approx(1.0)  # half-pixel spacing: all distances <= 1 mm
    res = score_cases([("a", pred, gt)], num_classes=1, nsd_tolerance=1)
    case = res["cases"][0]
    assert case["dice"] == pytest.approx(0.5) and case["iou"] == pytest.approx(1 / 3, abs=1e-6)
    assert case["hd95"] == pytest.approx(2.0) and case["nsd"] == pytest.approx(2 / 3, abs=1e-6)
    with pytest.raises(ValueError, match="tolerance"):
        nsd(pred, gt, -1)


def test_nsd_at_a_tolerance_that_is_a_multiple_of_the_spacing():
    # squares 3 pixels apart: the farthest surface points lie exactly 3 pixels (0.30000000000000004 at spacing 0.1)
    # from the other surface, so tolerance 3 px and 0.3 mm at 0.1 mm pixels are the same question
    gt = np.zeros((20, 20), np.uint8)
    gt[3:11, 3:11] = 1
    pred = np.zeros_like(gt)
    pred[3:11, 6:14] = 1
    assert nsd(pred, gt, 3) == pytest.approx(1.0)
    assert nsd(pred, gt, 0.3, spacing=0.1) == nsd(pred, gt, 3)
    assert nsd(pred, gt, 0.3, spacing=(0.1, 0.1)) == nsd(pred, gt, 3)
    assert nsd(pred, gt, 2.9) < 1.0  # the margin is a rounding allowance, not a wider tolerance


def test_pooled_differs_from_per_case_and_empty_policies():
    pred, gt = _squares()
    big_gt = np.zeros((10, 10), np.uint8)
    big_gt[1:9, 1:9] = 1
    empty = np.zeros((10, 10), np.uint8)
    cases = [("a", pred, gt), ("b", big_gt, big_gt), ("c", empty, empty)]
    nan = score_cases(cases, num_classes=1, empty_policy="nan")
    one = score_cases(cases, num_classes=1, empty_policy="one")
    # pooled: TP 8 + 64, FP 8, FN 8 -> 144 / 160; per case: mean(0.5, 1) with c left out, or mean(0.5, 1, 1)
    assert nan["dice"] == pytest.approx(144 / 160) and one["dice"] == pytest.approx(144 / 160)
    assert nan["per_case_dice"] == pytest.approx(0.75) and one["per_case_dice"] == pytest.approx(2.5 / 3)
    assert [c["dice"] for c in nan["cases"]][2] is None and one["cases"][2]["dice"] == 1.0
    assert one["cases"][2]["hd95"] == 0.0 and one["cases"][2]["nsd"] == 1.0
    assert nan["worst"][0] == {"id": "a", "dice": 0.5} and nan["n_below"]["count"] == 1
    # exactly one empty under nan: Dice 0, HD95 inf (kept in the mean), NSD 0
    miss = score_cases([("m", empty, gt)], num_classes=1, empty_policy="nan")
    assert miss["cases"][0]["dice"] == 0.0 and miss["cases"][0]["hd95"] == "inf" and miss["nsd"] == 0.0
    assert miss["hd95"] == "inf"
    assert miss["empty_masks"]["note"] == "nan rule: 1 of 1 cases with an empty prediction counts inf"
    # the default, TransUNet's rule (evaluate's): an empty prediction scores Dice 0, HD95 0, NSD 0, also when the
    # ground truth is empty; a prediction without ground truth Dice 1, HD95 0, NSD 1; the pooled Dice has no rule
    tu = score_cases(cases + [("m", empty, gt), ("x", gt, empty)], num_classes=1, empty_policy="transunet")
    assert tu["conventions"]["empty_policy"] == "transunet"
    # the default for 2-D images is the 2-D evaluator's rule ("one"): both empty is a perfect case
    auto = score_cases(cases + [("m", empty, gt), ("x", gt, empty)], num_classes=1)
    assert auto["conventions"]["empty_policy"] == "one"
    rows = {r["id"]: r for r in tu["cases"]}
    assert (rows["c"]["dice"], rows["c"]["hd95"], rows["c"]["nsd"]) == (0.0, 0.0, 0.0)
    assert (rows["m"]["dice"], rows["m"]["hd95"], rows["m"]["nsd"], rows["m"]["iou"]) == (0.0, 0.0, 0.0, 0.0)
    assert (rows["x"]["dice"], rows["x"]["hd95"], rows["x"]["nsd"], rows["x"]["iou"]) == (1.0, 0.0, 1.0, 1.0)
    assert tu["per_case_dice"] == pytest.approx((0.5 + 1 + 0 + 0 + 1) / 5)
    assert tu["hd95"] == pytest.approx(2.0 / 5)  # a's 2 px, the others 0 by the rule
    assert {k: tu["empty_masks"][k] for k in ("empty_pred", "empty_gt", "both_empty", "values", "cases_affected")} \
        == {"empty_pred": 1, "empty_gt": 1, "both_empty": 1, "values": 5, "cases_affected": 3}
    assert tu["empty_masks"]["note"] == ("TransUNet rule: 1 of 5 cases with an empty prediction, 1 with an empty "
                                         "ground truth and 1 with both masks empty count 0")
    assert tu["dice"] == pytest.approx(score_cases(cases + [("m", empty, gt), ("x", gt, empty)], num_classes=1,
                                                   empty_policy="nan")["dice"])


def test_multiclass_scores_each_foreground_class():
    gt = np.zeros((8, 8), np.int64)
    gt[:4] = 1
    gt[4:] = 2
    pred = gt.copy()
    pred[3] = 2  # one row of class 1 predicted as class 2
    res = score_cases([("x", pred, gt)], num_classes=3, surface=False)
    d1, d2 = 2 * 24 / (24 + 32), 2 * 32 / (32 + 40)
    assert res["cases"][0]["per_class"]["dsc"] == [pytest.approx(d1, abs=1e-6), pytest.approx(d2, abs=1e-6)]
    assert res["dice"] == pytest.approx((d1 + d2) / 2)


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_score_cli_matches_by_stem_and_names_unmatched_files(tmp_path):
    pred, gt = _squares()
    _write(tmp_path / "pred" / "a.png", pred * 255)
    _write(tmp_path / "pred" / "b.png", gt * 255)
    _write(tmp_path / "gt" / "masks" / "a_segmentation.png", gt * 255)
    _write(tmp_path / "gt" / "masks" / "b.png", gt * 255)
    pairs = match_mask_files(tmp_path / "pred", tmp_path / "gt")
    assert [p[0] for p in pairs] == ["a", "b"]
    runner = CliRunner()
    res = runner.invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--nsd-tolerance", "1", "--json",
                              "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "s.json").read_text())
    assert out["dice"] == pytest.approx((16 + 32) / (32 + 32))
    assert out["nsd"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-6)
    assert out["conventions"]["units"] == "pixels" and out["conventions"]["empty_policy"] == "one"
    _write(tmp_path / "pred" / "z.png", gt * 255)
    with pytest.raises(DatasetError, match=r"prediction without ground truth: .*z\.png"):
        match_mask_files(tmp_path / "pred", tmp_path / "gt")
    res = runner.invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "gt")])
    assert res.exit_code == 1 and "z.png" in res.output
    res = runner.invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--empty-policy", "zero"])
    assert res.exit_code == 1 and "--empty-policy" in res.output
    assert math.isfinite(out["hd95"])


def _label_volumes(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A (6, 20, 24) ground truth with classes 1 and 2 and a prediction that shifts and trims them."""
    gt = np.zeros((6, 20, 24), np.uint8)
    gt[1:5, 4:12, 5:15] = 1
    gt[2:6, 14:18, 8:20] = 2
    pred = np.roll(gt, seed + 1, axis=2)
    pred[0] = 0
    return pred, gt


def test_score_cli_scores_label_volumes_in_their_own_spacing(tmp_path):
    nib = pytest.importorskip("nibabel")
    from mambaseg.metrics import hd95

    spacing = {"c1": (2.5, 0.9, 0.8), "c2": (3.0, 1.25, 1.25)}  # (D, H, W); NIfTI stores (X, Y, Z)
    want = {}
    for i, case in enumerate(("c1", "c2")):
        pred, gt = _label_volumes(i)
        d, h, w = spacing[case]
        for arr, path in ((pred, tmp_path / "pred" / f"{case}_pred.nii.gz"), (gt, tmp_path / "gt" / f"{case}.nii.gz")):
            path.parent.mkdir(exist_ok=True)
            img = nib.Nifti1Image(arr.transpose(2, 1, 0), np.diag([w, h, d, 1.0]))
            img.header.set_zooms((w, h, d))
            nib.save(img, str(path))
        want[case] = [(2 * ((pred == c) & (gt == c)).sum() / ((pred == c).sum() + (gt == c).sum()),
                       hd95(pred == c, gt == c, spacing[case])) for c in (1, 2)]
    runner = CliRunner()
    res = runner.invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_cases"] == 2 and out["conventions"]["units"] == "each case's own voxel spacing (mm)"
    assert out["conventions"]["label_values"]["values"] == [0, 1, 2]
    for row in out["cases"]:
        assert row["per_class"]["dsc"] == pytest.approx([d for d, _ in want[row["id"]]])
        assert row["per_class"]["hd95"] == pytest.approx([h for _, h in want[row["id"]]], rel=1e-5)
    # one spacing for every volume, named on the command line, replaces the headers'
    res = runner.invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--spacing", "1", "--json"])
    fixed = json.loads(res.output)
    assert fixed["conventions"]["units"] == "spacing 1.0" and fixed["dice"] == pytest.approx(out["dice"])
    assert fixed["cases"][0]["hd95"] != pytest.approx(out["cases"][0]["hd95"])
    # a prediction in another geometry is refused, naming both files
    pred, _ = _label_volumes(0)
    img = nib.Nifti1Image(pred.transpose(2, 1, 0), np.eye(4))
    img.header.set_zooms((1.0, 1.0, 1.0))
    nib.save(img, str(tmp_path / "pred" / "c1_pred.nii.gz"))
    res = runner.invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "gt")])
    assert res.exit_code == 1 and "c1_pred.nii.gz" in res.output and "geometry" in res.output


def test_score_cli_pairs_saved_out_of_fold_volumes_with_h5_ground_truth(tmp_path):
    import h5py

    pred, gt = _label_volumes(0)
    (tmp_path / "oof" / "masks").mkdir(parents=True)
    np.savez_compressed(tmp_path / "oof" / "masks" / "patient001_frame01.npz", labels=pred)
    (tmp_path / "gt").mkdir()
    with h5py.File(tmp_path / "gt" / "patient001_frame01.h5", "w") as f:
        f["image"], f["label"] = np.zeros(gt.shape, np.float32), gt
    res = CliRunner().invoke(app, ["score", str(tmp_path / "oof"), str(tmp_path / "gt"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["conventions"]["units"] == "voxels"  # h5 stores no spacing
    dice = [2 * ((pred == c) & (gt == c)).sum() / ((pred == c).sum() + (gt == c).sum()) for c in (1, 2)]
    assert out["cases"][0]["per_class"]["dsc"] == pytest.approx(dice)
    # a predicted class the ground truth's label values do not have is refused, naming the file
    np.savez_compressed(tmp_path / "oof" / "masks" / "patient001_frame01.npz", labels=np.full(gt.shape, 5, np.uint8))
    res = CliRunner().invoke(app, ["score", str(tmp_path / "oof"), str(tmp_path / "gt")])
    assert res.exit_code == 1 and "patient001_frame01.npz" in res.output
    # ground-truth values that are not class indices (a 0/255 mask volume) need --label-values
    with h5py.File(tmp_path / "gt" / "patient001_frame01.h5", "w") as f:
        f["image"], f["label"] = np.zeros(gt.shape, np.float32), (gt > 0).astype(np.uint8) * 255
    res = CliRunner().invoke(app, ["score", str(tmp_path / "oof"), str(tmp_path / "gt")])
    assert res.exit_code == 1 and "--label-values" in res.output and "[0, 255]" in res.output
    np.savez_compressed(tmp_path / "oof" / "masks" / "patient001_frame01.npz", labels=(pred > 0).astype(np.uint8) * 255)
    res = CliRunner().invoke(app, ["score", str(tmp_path / "oof"), str(tmp_path / "gt"), "--label-values", "0,255",
                                   "--json"])
    assert res.exit_code == 0, res.output
    both = json.loads(res.output)["cases"][0]["dice"]
    assert both == pytest.approx(2 * ((pred > 0) & (gt > 0)).sum() / ((pred > 0).sum() + (gt > 0).sum()))


def test_only_predicted_scores_the_predicted_cases_and_lists_the_others(tmp_path):
    import h5py

    pred, gt = _squares()
    for d in ("pred", "gt"):
        (tmp_path / d).mkdir()
    for c in ("a", "b"):
        _write(tmp_path / "pred" / f"{c}.png", pred * 255)
    for c in ("a", "b", "c", "d"):
        _write(tmp_path / "gt" / f"{c}.png", gt * 255)
    runner = CliRunner()
    res = runner.invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "gt")])
    assert res.exit_code == 1 and "ground truth without prediction" in res.output  # the default: all or nothing
    res = runner.invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--only-predicted", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_cases"] == 2 and sorted(c["id"] for c in out["cases"]) == ["a", "b"]
    assert out["dice"] == pytest.approx(0.5)  # two 4x4 squares overlapping by half, in both cases
    assert out["unpredicted_ground_truth"] == {"count": 2, "files": [str(tmp_path / "gt" / "c.png"),
                                                                    str(tmp_path / "gt" / "d.png")]}
    res = runner.invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--only-predicted"])
    assert "2 ground truth(s) without a prediction not scored" in " ".join(res.output.split())
    # a prediction without ground truth stays an error
    _write(tmp_path / "pred" / "z.png", pred * 255)
    with pytest.raises(DatasetError, match="prediction without ground truth"):
        match_mask_files(tmp_path / "pred", tmp_path / "gt", unpredicted=[])
    # volumes the same way
    vp, vg = _label_volumes(0)
    (tmp_path / "vp").mkdir()
    (tmp_path / "vg").mkdir()
    np.savez_compressed(tmp_path / "vp" / "case1.npz", labels=vp)
    for c in ("case1", "case2"):
        with h5py.File(tmp_path / "vg" / f"{c}.h5", "w") as f:
            f["image"], f["label"] = np.zeros(vg.shape, np.float32), vg
    res = runner.invoke(app, ["score", str(tmp_path / "vp"), str(tmp_path / "vg"), "--only-predicted", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_cases"] == 1 and out["unpredicted_ground_truth"]["count"] == 1


def test_score_cli_names_label_values_for_multi_class_png_masks(tmp_path):
    """16-bit label-map PNGs (class indices 0, 1, 2) scored without --label-values: the error names the file, the
    values found and the option (not the Python argument); with it, each class is scored."""
    gt = np.zeros((32, 32), np.uint16)
    gt[5:20, 5:20], gt[22:30, 22:30] = 1, 2
    pred = gt.copy()
    pred[5:8, 5:20] = 0
    for folder, arr in (("pred", pred), ("gt", gt)):
        (tmp_path / folder).mkdir()
        Image.fromarray(arr).save(tmp_path / folder / "a.png")
    runner = CliRunner()
    res = runner.invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "gt")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert "a.png" in text and "{0, 1, 2}" in text and "--label-values" in text and "binary=False" not in text
    res = runner.invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--label-values", "0,1,2",
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["dice"] == pytest.approx((2 * 180 / (180 + 225) + 1.0) / 2, abs=1e-6)  # class 1 trimmed, 2 exact
