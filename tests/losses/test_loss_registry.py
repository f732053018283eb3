from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mambaseg.losses import create_loss, list_losses, loss_description, register_loss
from mambaseg.losses.registry import _LOSSES


def test_builtins_are_listed():
    names = list_losses()
    assert {"bce_dice", "dice", "ce_dice"} <= set(names)
    assert names == sorted(names)
    assert list_losses("*dice") == [n for n in names if n.endswith("dice")]
    assert "BCE" in loss_description("bce_dice") or "cross-entropy" in loss_description("bce_dice")


def test_unknown_name_and_argument():
    with pytest.raises(ValueError, match="unknown loss 'nope'.*bce_dice"):
        create_loss("nope")
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['bogus'\].*bce_weight"):
        create_loss("bce_dice", bogus=1)


def test_register_custom_loss_and_duplicates():
    @register_loss("test_l1_on_probs")
    class L1(nn.Module):
        """Mean |sigmoid(z) - y| (test only)."""

        def forward(self, logits, target):
            return (torch.sigmoid(logits[:, 0]) - target.float()).abs().mean()

    try:
        assert "test_l1_on_probs" in list_losses()
        v = create_loss("test_l1_on_probs")(torch.zeros(1, 1, 2, 2), torch.ones(1, 2, 2, dtype=torch.long))
        assert v.item() == pytest.approx(0.5)
        register_loss("test_l1_on_probs")(L1)  # re-registering the same object is harmless
        with pytest.raises(ValueError, match="registered twice"):

            @register_loss("test_l1_on_probs")
            class Other(nn.Module):
                pass

        with pytest.raises(TypeError, match="parentheses"):
            register_loss(L1)
    finally:
        _LOSSES.pop("test_l1_on_probs", None)
