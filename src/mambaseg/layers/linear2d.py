"""Linear layer over the channel axis of channels-first maps (VMamba's ``Linear2d``)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Linear2d"]


class Linear2d(nn.Linear):
    """``nn.Linear`` applied to the channel axis of a (B, C, H, W) map as a 1x1 convolution.

    The weight keeps ``nn.Linear``'s (out, in) layout, so state dicts of VMamba's channels-first models load unchanged;
    a (out, in, 1, 1) convolution weight is also accepted when loading.

    Shape:
        (B, in_features, H, W) -> (B, out_features, H, W).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # type: ignore[override]
        key = prefix + "weight"
        w = state_dict.get(key)
        if isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[2:] == (1, 1):
            state_dict[key] = w.flatten(1)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
