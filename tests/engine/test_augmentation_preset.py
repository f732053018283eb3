"""The data.augmentation field selects the training transform preset for both 2-D layouts."""

from __future__ import annotations

import numpy as np
import pytest

from mambaseg.configs import apply_overrides, load_recipe
from mambaseg.data.transforms import build_transforms
from mambaseg.data.cache import ArrayDataset2D


def test_recipes_pick_their_papers_augmentation():
    assert load_recipe("vmunet_ph2").data.augmentation == "vmunet_isic"
    assert load_recipe("vmbunet_ph2").data.augmentation == "vmbunet_isic"
    assert load_recipe("vmbunet_isic18").data.augmentation == "vmbunet_isic"
    assert load_recipe("dermomamba_ph2").data.augmentation == "dermomamba_isic"
    cfg = apply_overrides(load_recipe("vmunet_ph2"), ["data.augmentation=flips"])
    assert cfg.data.augmentation == "flips"


def test_array_dataset_uses_the_preset():
    imgs = np.zeros((2, 8, 8, 3), np.uint8)
    masks = np.zeros((2, 8, 8), np.uint8)
    ds = ArrayDataset2D(imgs, masks, ["a", "b"], image_size=(8, 8), augment=True, preset="dermomamba_isic")
    expected = build_transforms((8, 8), augment=True, preset="dermomamba_isic")
    assert [type(t).__name__ for t in ds.transform.transforms] == [type(t).__name__ for t in expected.transforms]
    with pytest.raises(ValueError, match=r"unknown data\.augmentation 'bogus'; valid: vmunet_isic, .* or auto"):
        ArrayDataset2D(imgs, masks, ["a", "b"], image_size=(8, 8), augment=True, preset="bogus")
