"""Post-processing of predicted label maps: largest component, hole filling, per class, 2-D and 3-D; wiring into
the predictor (images and volumes) and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from mambaseg.inference.postprocess import POSTPROCESS_STEPS, parse_postprocess, postprocess_labels


def _binary_case():
    m = np.zeros((12, 14), np.int64)
    m[1:7, 1:7] = 1          # large blob (36 px) with a 2x2 hole
    m[3:5, 3:5] = 0
    m[9:11, 10:12] = 1       # small blob (4 px)
    m[8, 8] = 1              # touches neither by edge nor corner
    return m


def test_largest_component_and_fill_holes_by_hand():
    m = _binary_case()
    lcc = postprocess_labels(m, "largest_component")
    ref = m.copy()
    ref[9:11, 10:12] = 0
    ref[8, 8] = 0
    np.testing.assert_array_equal(lcc, ref)
    filled = postprocess_labels(m, ["fill_holes"])
    ref2 = m.copy()
    ref2[3:5, 3:5] = 1
    np.testing.assert_array_equal(filled, ref2)
    both = postprocess_labels(m, "fill_holes,largest_component")  # applied in the fixed order
    ref_both = ref.copy()
    ref_both[3:5, 3:5] = 1
    np.testing.assert_array_equal(both, ref_both)
    assert both.dtype == m.dtype and m[3, 3] == 0  # input untouched
    assert postprocess_labels(m, None) is m and postprocess_labels(m, "none") is m


def test_diagonal_neighbours_are_one_component():
    m = np.zeros((6, 6), np.int64)
    m[1, 1] = m[2, 2] = m[3, 3] = 1  # 8-connected chain of 3
    m[5, 0] = 1
    out = postprocess_labels(m, "largest_component")
    assert out.sum() == 3 and out[5, 0] == 0


def test_multiclass_per_class_and_other_classes_untouched():
    m = np.zeros((10, 10), np.int64)
    m[1:9, 1:9] = 2          # ring of class 2 around class 3 and a background hole
    m[3:7, 3:7] = 0
    m[4:6, 4:6] = 3
    m[0, 9] = 3              # stray class-3 pixel
    out = postprocess_labels(m, "largest_component,fill_holes")
    assert out[0, 9] == 0                      # class 3 keeps its 2x2 block only
    assert (out[4:6, 4:6] == 3).all()          # another class inside a hole is never overwritten
    ring_hole = np.zeros_like(m, bool)
    ring_hole[3:7, 3:7] = True
    ring_hole[4:6, 4:6] = False
    assert (out[ring_hole] == 2).all()         # the background enclosed by class 2 becomes 2
    assert (out[m == 2] == 2).all() and out[0, 0] == 0


def test_volumes_use_3d_connectivity():
    v = np.zeros((4, 6, 6), np.int64)
    v[0:3, 1:3, 1:3] = 1     # 12 voxels across slices
    v[3, 5, 5] = 1           # one voxel, not 26-connected to the block
    v[1, 4, 4] = 1           # 2-D-isolated in its slice, but also not touching the block
    out = postprocess_labels(v, "largest_component")
    assert out.sum() == 12 and out[3, 5, 5] == 0 and out[1, 4, 4] == 0
    # a slice-wise hole closed in 3-D is filled; an open tube is not
    tube = np.zeros((5, 5, 5), np.int64)
    tube[:, 1:4, 1:4] = 1
    tube[:, 2, 2] = 0        # channel open at both ends
    assert postprocess_labels(tube, "fill_holes")[2, 2, 2] == 0
    tube[0, 2, 2] = tube[4, 2, 2] = 1
    assert postprocess_labels(tube, "fill_holes")[2, 2, 2] == 1


def test_bad_steps_and_shapes_are_named():
    assert parse_postprocess("largest_component, fill_holes") == POSTPROCESS_STEPS
    with pytest.raises(ValueError, match="largest_component, fill_holes"):
        parse_postprocess("lcc")
    with pytest.raises(ValueError, match="2-D or 3-D"):
        postprocess_labels(np.zeros(5, np.int64), "fill_holes")


def test_predictor_images_and_volumes_are_post_processed(tmp_path):
    import torch
    from PIL import Image

    import mambaseg
    from mambaseg.engine import save_checkpoint
    from mambaseg.inference import load_ensemble

    torch.manual_seed(0)
    model = mambaseg.create_model("vmunet_tiny", num_classes=1, dims=8, d_state=2)
    ckpt = save_checkpoint(tmp_path / "c.pt", {
        "model": model.mambaseg_spec, "state_dict": model.state_dict(),
        "label_map": {"background": 0, "foreground": 255},
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}, "image_size": [32, 32], "epoch": 1})
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    plain = mambaseg.load(ckpt, device="cpu").predict(img)
    for steps in ("largest_component", "fill_holes", "largest_component,fill_holes"):
        pp = mambaseg.load(ckpt, device="cpu", postprocess=steps)
        np.testing.assert_array_equal(pp.predict(img), postprocess_labels(plain, steps))
    assert not np.array_equal(plain, postprocess_labels(plain, "largest_component"))  # the check can fail
    # the folder writer uses the post-processed masks
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(img).save(d / "x.png")
    pp = load_ensemble([ckpt], device="cpu", postprocess="largest_component")
    pp.predict_folder(d, tmp_path / "out", overlays=False)
    written = np.asarray(Image.open(tmp_path / "out" / "masks" / "x.png"))
    np.testing.assert_array_equal(written == 255, postprocess_labels(plain, "largest_component") == 1)
    with pytest.raises(ValueError, match="unknown post-processing"):
        load_ensemble([ckpt], device="cpu", postprocess="biggest")
    # volumes: the whole label volume is post-processed (3-D components)
    from mambaseg.inference.volume import predict_volume, predict_volume_file, read_volume

    vol = rng.random((3, 36, 30)).astype(np.float32)
    np.save(tmp_path / "v.npy", vol)
    raw = predict_volume(model.eval(), read_volume(tmp_path / "v.npy"), image_size=32, device="cpu")
    out = predict_volume_file(model, tmp_path / "v.npy", tmp_path / "v_pred.npy", image_size=32, device="cpu",
                              postprocess="largest_component")
    np.testing.assert_array_equal(np.load(out), postprocess_labels(raw, "largest_component"))


def test_cli_postprocess_option(tmp_path):
    from typer.testing import CliRunner

    from mambaseg.cli import app
    from mambaseg.cli._common import state

    state.debug = False
    runner = CliRunner()
    res = runner.invoke(app, ["predict", "--checkpoint", str(tmp_path / "missing.pt"), "--input", str(tmp_path),
                              "--out", str(tmp_path / "o"), "--postprocess", "lcc"])
    assert res.exit_code == 1 and "post-processing" in res.output
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--postprocess", "holes"])
    assert res.exit_code == 1 and "post-processing" in res.output
