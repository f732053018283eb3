"""Binary losses check the range of their targets: real PH2 masks read as 0/255 (8-bit PNG) are refused with the range
found and the fix (divide by 255), float as well as integer; the same masks divided by 255 are accepted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mambaseg.losses import create_loss, list_losses


def _ph2_masks(shared_data, n: int = 2, size: int = 48) -> torch.Tensor:
    """(n, size, size) uint8 PH2 lesion masks as stored (values exactly {0, 255}), nearest-resized."""
    from PIL import Image

    paths = sorted((shared_data / "ph2_dev" / "train" / "masks").glob("*.png"))[:n]
    assert len(paths) == n
    arrs = [np.asarray(Image.open(p)) for p in paths]
    assert all(set(np.unique(a)) == {0, 255} for a in arrs)
    t = torch.stack([torch.from_numpy(a.copy()) for a in arrs])[:, None].float()
    out = F.interpolate(t, size=(size, size), mode="nearest")[:, 0].to(torch.uint8)
    assert set(out.unique().tolist()) == {0, 255}  # both classes kept in every image
    return out


def _binary_losses() -> list[str]:
    """Every registered loss that takes one-channel logits with {0, 1} targets (found by calling it, so losses
    registered later are covered too)."""
    names = []
    for name in list_losses():
        try:
            create_loss(name)(torch.zeros(1, 1, 4, 4), torch.tensor([[[0, 1, 1, 0]] * 4]))
        except ValueError:
            continue  # multi-class only (ce_dice)
        names.append(name)
    return names


def test_every_binary_loss_is_found():
    assert {"bce_dice", "dice", "boundary", "guide_fusion"} <= set(_binary_losses())
    assert "ce_dice" not in _binary_losses()


@pytest.mark.parametrize("name", _binary_losses())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8])
def test_0_255_masks_are_refused_naming_range_and_fix(shared_data, name, dtype):
    masks = _ph2_masks(shared_data)
    logits = torch.randn(masks.shape[0], 1, *masks.shape[1:])
    with pytest.raises(ValueError, match=r"got values in \[0, 255\].*divided by 255") as exc:
        create_loss(name)(logits, masks.to(dtype))
    assert "{0, 1}" in str(exc.value) or "[0, 1]" in str(exc.value)


@pytest.mark.parametrize("name", ["bce_dice", "dice"])
def test_float_masks_divided_by_255_and_soft_labels_are_accepted(shared_data, name):
    masks = _ph2_masks(shared_data)
    logits = torch.randn(masks.shape[0], 1, *masks.shape[1:])
    loss = create_loss(name)
    hard = loss(logits, masks.long() // 255)
    assert torch.isfinite(hard)
    assert loss(logits, masks.float() / 255).item() == pytest.approx(hard.item(), rel=1e-6)  # the suggested fix
    assert loss(logits, masks.float() / 255 * 0.8 + 0.1).item() != pytest.approx(hard.item())  # soft labels: used
    with pytest.raises(ValueError, match=r"\[0, 1\].*got values in \[0, 1\.5\]"):
        loss(logits, masks.float() / 255 * 1.5)
    with pytest.raises(ValueError, match=r"got values in \[-0\.5, 1\]"):
        loss(logits, masks.float() / 255 - 0.5 * (masks == 0))
    nan = masks.float() / 255
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="nan"):
        loss(logits, nan)


@pytest.mark.parametrize("name", ["boundary", "guide_fusion"])
def test_hard_label_losses_accept_the_suggested_int_fix(shared_data, name):
    masks = _ph2_masks(shared_data)
    logits = torch.randn(masks.shape[0], 1, *masks.shape[1:])
    with pytest.raises(ValueError, match=r"\(target // 255\)\.long\(\)"):
        create_loss(name)(logits, masks.float())
    assert torch.isfinite(create_loss(name)(logits, (masks.float() // 255).long()))
    # float masks of hard 0/1 labels (masks / 255) are the same target as the integer ones
    assert create_loss(name)(logits, masks.float() / 255).item() == pytest.approx(
        create_loss(name)(logits, (masks // 255).long()).item(), rel=1e-6)


def test_several_labels_get_the_multiclass_hint_not_the_255_one():
    with pytest.raises(ValueError, match=r"got values in \[0, 2\].*multi-class") as exc:
        create_loss("bce_dice")(torch.zeros(1, 1, 2, 2), torch.tensor([[[0, 1], [2, 0]]]))
    assert "255" not in str(exc.value)
