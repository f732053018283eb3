"""CUDA-graph replay of a model's training forward and backward (``train.cuda_graph``).

A small model at a small batch is bound by the host, not the GPU: DermoMamba at batch 4 launches about 3,600
kernels per training step, whose GPU work takes less time than launching them. ``torch.cuda.make_graphed_callables``
records the model's forward and backward once, on a real batch, and replays each as one graph launch. The loss,
gradient clipping, the optimizer and EMA stay eager, so everything the trainer checks per step is unchanged.

What the recording fixes, and how the trainer keeps it true:

* the input's shape and dtype: batches of another shape (the short last batch of an epoch) run the model eagerly;
* the parameters' storage: optimizers update them in place, and nothing in the trainer replaces them;
* the model's structure per step: runs whose hooks change the model before a step (the SliceMamba supernet samples
  a path per step) are never graphed;
* the training mode (dropout, batch-norm statistics), as when recorded: only training steps replay the graphs.

Recording runs three warm-up passes on the sample batch; batch-norm statistics and every other buffer are restored
afterwards, so the model a recording leaves behind is the one it received.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _Forward(nn.Module):
    """The model's forward as a module of its own (the graphed callable; the model's ``forward`` stays untouched)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)


class GraphedTraining:
    """``step_forward(x)``: the model's training forward, replayed from a CUDA graph (with its backward) when ``x``
    has the recorded shape and dtype, run eagerly otherwise.

    Args:
        model: the model, on a CUDA device, in training mode.
        sample: a real input batch (on the model's device) of the shape most steps will have.
        amp_dtype: the autocast dtype of the training steps (None = fp32).

    Raises:
        RuntimeError: the forward or backward cannot be recorded (e.g. it synchronises with the host); the
            message names the cause.
    """

    def __init__(self, model: nn.Module, sample: torch.Tensor, amp_dtype: torch.dtype | None) -> None:
        if sample.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA input, got one on {sample.device}")
        self.model = model
        self.shape = tuple(sample.shape)
        self.dtype = sample.dtype
        self.replays = 0
        self.eager_steps = 0
        buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        wrapper = _Forward(model)
        try:
            # autocast's weight cache must be off while recording: cached casts would be freed with the recording
            with torch.autocast("cuda", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None,
                                cache_enabled=False):
                self._graphed = torch.cuda.make_graphed_callables(wrapper, (sample.detach(),),
                                                                  allow_unused_input=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the cause named
            raise RuntimeError(f"recording the training step as a CUDA graph failed: {type(e).__name__}: {e}") from e
        finally:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    if name in buffers:
                        b.copy_(buffers[name])
        self._wrapper = wrapper

    def __call__(self, x: torch.Tensor) -> Any:
        if tuple(x.shape) == self.shape and x.dtype == self.dtype and self.model.training:
            self.replays += 1
            return self._graphed(x)
        self.eager_steps += 1
        return self.model(x)


def graphs_wanted(setting: bool | None, device: torch.device, *, distributed: bool, compiled: bool,
                  static_steps: bool) -> tuple[bool, str]:
    """Whether to record the training step (``train.cuda_graph``: None = auto), and why not when not."""
    if setting is False:
        return False, "train.cuda_graph=false"
    reasons = []
    if device.type != "cuda":
        reasons.append(f"device {device} is not CUDA")
    if distributed:
        reasons.append("several processes (DDP)")
    if compiled:
        reasons.append("train.compile is on")
    if not static_steps:
        reasons.append("the run's hooks change the model before each step")
    if reasons and setting:
        raise ValueError("train.cuda_graph=true cannot be honoured: " + "; ".join(reasons))
    return (not reasons), "; ".join(reasons)
