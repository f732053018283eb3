"""Boundary Cross-Attention (BCA) of VMB-UNet, with its atrous boundary-wise attention gate (BAG).

VMB-UNet places a BCA after the blocks of encoder stages 0-1 and after the patch expansion of decoder stages
up2-up3. For a feature map ``F`` (B, C, h, w) with tokens ``T`` (L = h*w tokens of width C):

1. global context: ``s = mean_HW(F)`` (one token per image) and ``A = Attention(query=T, key=s, value=s)``;
2. ``T = LN1(T + A)``; ``T = LN2(T + W2 LeakyReLU(W1 T + b1) + b2)`` (``W1``: C -> ffn_dim, ``W2``: ffn_dim -> C);
3. BAG (atrous): five parallel ``Conv(no bias) -> BN -> ReLU`` branches to C/2 channels (1x1, and 3x3 with dilation
   1, 2, 4, 6), concatenated, ``Conv1x1 -> 1`` channel, ``w = sigmoid(.)`` in (0, 1)^(B x 1 x h x w);
4. output ``F' = T * (1 + w)`` and the boundary map ``w``.

Single-key attention: with exactly one key the softmax is identically 1, so ``A = W_o (W_v s + b_v) + b_o`` at every
position and the query/key projections can never receive a gradient. ``attention="context"`` (default) computes
exactly this with two linear layers and no dead weights; ``attention="mha"`` builds ``nn.MultiheadAttention`` as the
released code does (parameter names ``cross_attn.*`` as in the released state dict), for loading official checkpoints.
Both give the same function for the same value/output weights (tested).
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["BoundaryAttentionGate", "BoundaryCrossAttention"]


class BoundaryAttentionGate(nn.Module):
    """Atrous boundary-wise attention gate: ``x -> (x * (1 + w), w)``.

    Args:
        channels: input channels C.
        hidden: channels of each of the five branches (default C // 2, at least 1).
        dilations: dilations of the 3x3 branches (a 1x1 branch is always added first).

    Shapes:
        input (B, C, H, W) -> (output (B, C, H, W), weight (B, 1, H, W)).
    """

    def __init__(self, channels: int, hidden: int | None = None, dilations: tuple[int, ...] = (1, 2, 4, 6)) -> None:
        super().__init__()
        hidden = max(1, channels // 2) if hidden is None else hidden
        branches = [nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU())]
        for d in dilations:
            branches.append(
                nn.Sequential(
                    nn.Conv2d(channels, hidden, 3, padding=d, dilation=d, bias=False),
                    nn.BatchNorm2d(hidden),
                    nn.ReLU(),
                )
            )
        self.convs = nn.ModuleList(branches)
        self.conv_out = nn.Conv2d(len(branches) * hidden, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x (B, C, H, W). Returns: ``(x * (1 + w), w)`` with w (B, 1, H, W) in (0, 1)."""
        w = torch.sigmoid(self.conv_out(torch.cat([conv(x) for conv in self.convs], dim=1)))
        return x * w + x, w


class BoundaryCrossAttention(nn.Module):
    """VMB-UNet's BCA: global-context cross-attention, feed-forward refinement, boundary gate.

    Args:
        dim: channels C of the feature map.
        num_heads: heads of the attention (only used by ``attention="mha"``; C must be divisible by it).
        ffn_dim: hidden width of the feed-forward refinement (512 in VMB-UNet).
        attention: ``"context"`` (default; the single-key attention written as ``W_o(W_v s)``, no dead weights) or
            ``"mha"`` (``nn.MultiheadAttention`` as released; its query/key weights get no gradient).

    Shapes:
        input (B, C, H, W) channels-first -> (output (B, C, H, W), boundary map (B, 1, H, W)).
    """

    def __init__(self, dim: int, num_heads: int = 8, ffn_dim: int = 512, attention: str = "context") -> None:
        super().__init__()
        if attention not in ("context", "mha"):
            raise ValueError(f"BoundaryCrossAttention: attention must be 'context' or 'mha', got {attention!r}")
        self.dim = dim
        self.attention = attention
        if attention == "mha":
            if dim % num_heads:
                raise ValueError(f"BoundaryCrossAttention: dim={dim} is not divisible by num_heads={num_heads}")
            self.cross_attn = nn.MultiheadAttention(dim, num_heads)
        else:
            self.context_value = nn.Linear(dim, dim)
            self.context_out = nn.Linear(dim, dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.activation = nn.LeakyReLU()
        self.BAG = BoundaryAttentionGate(dim)

    def global_context(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention output for every token.

        Args:
            tokens: (B, L, C).

        Returns:
            (B, L, C): the attention of each token to the image's mean token.
        """
        src = tokens.mean(dim=1, keepdim=True)  # (B, 1, C)
        if self.attention == "mha":
            out, _ = self.cross_attn(
                tokens.transpose(0, 1), src.transpose(0, 1), src.transpose(0, 1), need_weights=False
            )
            return out.transpose(0, 1)
        return self.context_out(self.context_value(src)).expand_as(tokens)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x (B, C, H, W). Returns: (refined features (B, C, H, W), boundary map (B, 1, H, W))."""
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"BoundaryCrossAttention expects (B, {self.dim}, H, W), got {tuple(x.shape)}")
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, L, C)
        t = self.norm1(t + self.global_context(t))
        t = self.norm2(t + self.linear2(self.activation(self.linear1(t))))
        return self.BAG(t.transpose(1, 2).reshape(b, c, h, w))
