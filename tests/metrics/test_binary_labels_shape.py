"""The one logits -> labels rule takes (B, C, H, W) (or (B, C, D, H, W)) only: a (B, H, W) tensor has no class axis
and was read as (B, C, H) (labels of shape (B, W), one per row), now a ValueError naming both shapes."""

from __future__ import annotations

import re

import pytest
import torch

from mambaseg.metrics import labels_from_logits, labels_from_probabilities, probabilities_from_logits


def test_bhw_logits_are_refused_naming_expected_and_got():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*got shape \(2, 8, 8\).*unsqueeze\(1\)"):
        labels_from_logits(torch.randn(2, 8, 8))


@pytest.mark.parametrize("shape", [(8,), (2, 8), (2, 8, 8), (1, 2, 1, 3, 4, 4)])
@pytest.mark.parametrize("fn", [labels_from_logits, probabilities_from_logits, labels_from_probabilities])
def test_other_ranks_are_refused_by_all_three(fn, shape):
    with pytest.raises(ValueError, match=rf"{fn.__name__}: \w+ must be \(B, C, H, W\).*{re.escape(str(shape))}"):
        fn(torch.rand(*shape))


def test_channel_first_shapes_still_work():
    z = torch.randn(2, 1, 8, 8)
    assert torch.equal(labels_from_logits(z), (z[:, 0] >= 0).long())
    assert torch.equal(labels_from_logits(z[:, 0].unsqueeze(1)), labels_from_logits(z))  # the suggested fix
    mc = torch.randn(2, 3, 8, 8)
    assert torch.equal(labels_from_logits(mc), mc.argmax(1))
    vol = torch.randn(2, 3, 4, 8, 8)  # (B, C, D, H, W)
    assert labels_from_logits(vol).shape == (2, 4, 8, 8)
    assert torch.equal(labels_from_probabilities(probabilities_from_logits(vol)), vol.argmax(1))
