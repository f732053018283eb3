"""Our recipes: what they change from the paper recipes, and the VMB-UNet stability fix (learning rate never climbs
back after the warm-up, gradients clipped)."""

from __future__ import annotations

import pytest
import torch

from mambaseg.configs import config_to_dict, load_recipe
from mambaseg.engine.optim import build_scheduler


def _lrs(cfg, steps_per_epoch=10):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    sched = build_scheduler(opt, cfg.schedule, epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch)
    out = []
    for _epoch in range(cfg.train.epochs):
        for _ in range(steps_per_epoch):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if cfg.schedule.interval == "step":
                sched.step()
        if cfg.schedule.interval == "epoch":
            opt.step()
            sched.step()
    return out


def _results():
    """benchmarks/results beside the tests; the test is skipped where it is not (installed package)."""
    from pathlib import Path

    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    if not results.is_dir():
        pytest.skip("benchmarks/results is not beside the tests (installed package)")
    return results


def _diff(a, b):
    fa, fb = config_to_dict(a), config_to_dict(b)
    return {f"{s}.{k}" for s in fa if isinstance(fa[s], dict) for k in fa[s] if fa[s][k] != fb[s][k]}


def test_vmbunet_stable_is_the_paper_recipe_plus_the_fix_only():
    paper, stable = load_recipe("vmbunet_ph2"), load_recipe("vmbunet_ph2_stable")
    assert _diff(paper, stable) == {"schedule.interval", "schedule.t_max", "schedule.warmup", "schedule.eta_min",
                                    "train.grad_clip", "train.ema_decay"}
    assert stable.train.grad_clip == 1.0 and paper.train.grad_clip is None
    assert stable.train.ema_decay == 0.999 and paper.train.ema_decay is None
    warm = stable.schedule.warmup
    fixed, orig = _lrs(stable), _lrs(paper)
    # the paper schedule returns to its peak (epochs 100 and 200); the fixed one never rises after the warm-up
    assert max(orig[1000:]) > 0.9 * paper.optim.lr and min(orig[400:600]) < 0.02 * paper.optim.lr
    assert all(b <= a + 1e-15 for a, b in zip(fixed[warm:], fixed[warm + 1:]))
    assert fixed[warm] == max(fixed) and fixed[0] < 0.02 * stable.optim.lr


def test_our_recipes_change_what_they_say():
    best = load_recipe("vmunet_ph2_best")
    assert best.train.ema_decay == 0.999 and best.data.augmentation == "strong_2d" and best.model.name == "vmunet"
    acdc = load_recipe("heteromedseg_acdc_best")
    assert acdc.train.ema_decay == 0.999 and acdc.model.num_classes == 4


def test_the_stability_fix_quotes_its_whole_run():
    """vmbunet_ph2_stable states the stability and out-of-fold DSC of its finished cross-validation, as the two result
    files have them, beside the paper recipe's on the same folds."""
    import json
    from importlib import resources

    text = resources.files("mambaseg.configs").joinpath("recipes", "vmbunet_ph2_stable.yaml").read_text()
    description = load_recipe("vmbunet_ph2_stable").description
    assert "NOT YET VALIDATED" not in text and "not yet validated" not in description
    results = _results()
    stab = json.loads((results / "stability_ph2_vmbunet_ph2_stable_s0.json").read_text())
    cv = json.loads((results / "cv_ph2_vmbunet_ph2_stable_s0.json").read_text())
    paper = json.loads((results / "cv_ph2_vmbunet_ph2_s0.json").read_text())
    assert stab["all_folds_finished"] and stab["epochs_done"] == [300] * 5 and stab["bound_met"]
    assert cv["recipe"] == stab["recipe"] == "vmbunet_ph2_stable" and len(cv["per_case_dsc"]) == 100
    drop, after = 100 * stab["max_epoch_drop"], 100 * stab["max_epoch_drop_after_first_tenth"]
    dsc, ref = f"{100 * cv['pooled_oof_dsc']:.2f}", f"{100 * paper['pooled_oof_dsc']:.2f}"
    for s in (f"{drop:.2f} points", f"{after:.2f}", dsc, f"{cv['n_below_0.8']} cases below 80", ref,
              f"{100 * cv['scores']['last_tta_flip']['pooled_dsc']:.2f} with flip TTA"):
        assert s in text, s
    assert f"pooled OOF DSC {dsc} (paper recipe {ref})" in description
    assert f"{drop:.2f} points ({after:.2f} after epoch 30)" in description
    # the bound after epoch 30 in the other folds, as quoted
    others = sorted(f["max_epoch_drop_after_first_tenth"] for f in stab["fold_training"])[:-1]
    assert f"at most {100 * others[-1]:.2f} in the other four folds" in text


def test_a_validated_recipe_quotes_its_results_file():
    """vmunet_ph2_best cites the cross-validation it was measured with; its numbers must be that file's."""
    import json
    import re
    from importlib import resources

    text = resources.files("mambaseg.configs").joinpath("recipes", "vmunet_ph2_best.yaml").read_text()
    assert "NOT YET VALIDATED" not in text and "not yet" not in load_recipe("vmunet_ph2_best").description
    results = _results()
    for name in re.findall(r"cv_ph2_\w+\.json", text):
        d = json.loads((results / name).read_text())
        assert d["folds"] == 5 and len(d["per_case_dsc"]) == 100
        assert f"{100 * d['pooled_oof_dsc']:.2f}" in text and f"{d['n_below_0.8']} cases below 80" in text
    seeds = re.findall(r"cv_ph2_vmunet_ph2_best_s(\d+)\.json", text)
    assert "0" in seeds
    description = load_recipe("vmunet_ph2_best").description
    for seed in seeds:  # every measured seed, not only the best, is in the one-line description
        best = json.loads((results / f"cv_ph2_vmunet_ph2_best_s{seed}.json").read_text())
        if "last_tta_flip" in best["scores"]:  # a seed run without TTA (--no-tta) has no TTA number to quote
            assert f"{100 * best['scores']['last_tta_flip']['pooled_dsc']:.2f}" in text
        assert f"{100 * best['pooled_oof_dsc']:.2f} seed {seed}" in description
    if "cv_ph2_vmunet_ph2_best_ensemble.json" in text:  # the seeds' spread and their ensemble, as the file has them
        ens = json.loads((results / "cv_ph2_vmunet_ph2_best_ensemble.json").read_text())
        spread = ens["single_seed_pooled_oof_dsc"]
        assert sorted(ens["summary_seeds"]) == sorted(int(s) for s in seeds)
        assert f"{100 * spread['mean']:.2f} +- {100 * spread['std']:.2f}" in text
        assert f"ensemble: {100 * ens['pooled_oof_dsc']:.2f}, {ens['n_below_0.8']} cases below 80" in text


def test_the_acdc_recipe_quotes_its_measured_run():
    """heteromedseg_acdc_best states the test Dice of its device run (below the 0.90 aim) from the results file."""
    import json
    from importlib import resources

    text = resources.files("mambaseg.configs").joinpath("recipes", "heteromedseg_acdc_best.yaml").read_text()
    description = load_recipe("heteromedseg_acdc_best").description
    assert "NOT YET VALIDATED" not in text and "not yet validated" not in description
    path = _results() / "acdc_heteromedseg_best.json"
    d = json.loads(path.read_text())
    assert d["recipe"] == "heteromedseg_acdc_best" and d["epochs_done"] == d["epochs"]
    dice = f"{d['test']['dice']:.3f}"
    assert dice in text and f"test Dice {dice};" in description and d["test"]["dice"] < 0.90
    assert "below the 0.90 aim" in description
    assert f"{d['test_tta_flip']['dice']:.3f}" in text and f"{d['test_tta_flip_pp']['dice']:.3f}" in text
    assert f"epoch {d['best_epoch']} of {d['epochs']}" in text
    # the ensemble of three runs trained on train + val (final weights), quoted in the comment and the description
    e = json.loads((path.parent / "acdc_heteromedseg_ensemble_ens_tov.json").read_text())
    assert e["recipe"] == "heteromedseg_acdc_best" and e["train_on_val"] and len(e["members"]) == 3
    ens = f"{e['test']['dice']:.3f}"
    assert f"test mean\n# Dice {ens}, {e['test_tta_flip']['dice']:.3f} with flip TTA" in text
    assert f"train+val {ens}" in description and e["test_tta_flip"]["dice"] < 0.90
    assert all(f"{m['test_dice']:.3f}" in text for m in e["members"])
    assert all(m["epochs"] == 60 for m in e["members"]) and "for 60 epochs" in text


def test_the_acdc_trainval_recipe_is_the_measured_ensembles_member_recipe():
    """heteromedseg_acdc_trainval, with each member's own overrides, resolves to the config its measured runs trained
    with (benchmarks/acdc_gpu.py: heteromedseg_acdc_best + its --epochs/--warmup/--train-on-val overrides), apart from
    where the run wrote and read; and it quotes the ensemble's test numbers from the results file."""
    import json
    from importlib import resources

    from mambaseg.configs import apply_overrides

    cfg = load_recipe("heteromedseg_acdc_trainval")
    assert cfg.data.train_splits == ["train", "val"] and cfg.train.epochs == 100 and cfg.schedule.warmup == 300
    assert _diff(load_recipe("heteromedseg_acdc_best"), cfg) == {"data.train_splits", "train.epochs",
                                                                  "schedule.warmup"}
    results = _results()
    e = json.loads((results / "acdc_heteromedseg_ensemble_ens_tov100.json").read_text())
    assert e["train_on_val"] and len(e["members"]) == 3 and "none" in e["selection_rule"]
    runtime = {"data.path", "train.out", "train.device", "data.num_workers", "train.log_every",
               "data.persistent_workers", "train.checkpoint_every"}
    for m in e["members"]:
        run = json.loads((results / m["result_file"]).read_text())
        assert run["epochs_done"] == run["epochs"] == 100 and run["train_on_val"]
        measured = apply_overrides(apply_overrides(load_recipe(run["recipe"]), run["member_overrides"]),
                                   run["overrides"])
        ours = apply_overrides(cfg, m["member_overrides"])
        assert _diff(measured, ours) <= runtime, _diff(measured, ours) - runtime
    text = resources.files("mambaseg.configs").joinpath("recipes", "heteromedseg_acdc_trainval.yaml").read_text()
    ens, tta = f"{e['test']['dice']:.3f}", f"{e['test_tta_flip']['dice']:.3f}"
    assert f"test mean Dice {ens}" in text and f"{tta} with flip TTA" in text
    assert f"test Dice {ens}, {tta} with flip TTA" in cfg.description
    assert all(f"{m['test_dice']:.3f}" in text for m in e["members"])
    assert all(f"{name} {e['test']['classes'][name]['dice']:.3f}" in text for name in ("RV", "Myo", "LV"))
    # the procedure the comment gives names every member's overrides and evaluates the final weights
    for m in e["members"]:
        assert all(f"--set {o}" in text for o in m["member_overrides"] if o != "data.augmentation=flips_rotate")
    assert text.count("checkpoints/last.pt") == 3 and "--tta flip" in text and "best.pt" not in text
