"""mambaseg.losses: segmentation losses on logits and their registry.

Built-in names: ``"bce_dice"`` (VM-UNet), ``"dice"``, ``"ce_dice"`` (Synapse/ACDC recipes). Other modules add
theirs with ``@register_loss("name")`` and one import line below.

Example:
    >>> import torch
    >>> from mambaseg.losses import create_loss
    >>> loss = create_loss("bce_dice")
    >>> value = loss(torch.zeros(2, 1, 8, 8), torch.ones(2, 8, 8, dtype=torch.long))
"""

from __future__ import annotations

from mambaseg.losses.bce_dice import BceDiceLoss
from mambaseg.losses.ce_dice import CeDiceLoss
from mambaseg.losses.dice import DiceLoss, soft_dice
from mambaseg.losses.registry import create_loss, list_losses, loss_description, register_loss, resolve_loss_name

# losses registered by other modules (one import line each)
from mambaseg.losses import boundary, guide_fusion  # noqa: E402,F401  (VMB-UNet, DermoMamba)

__all__ = [
    "BceDiceLoss",
    "CeDiceLoss",
    "DiceLoss",
    "create_loss",
    "list_losses",
    "loss_description",
    "register_loss",
    "resolve_loss_name",
    "soft_dice",
]
