"""Base class shared by every segmentation network: logits out, explicit input-size contract."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from mambaseg.utils.modules import weight_dtype

__all__ = ["SegmentationModel", "nearest_valid_size", "pyramid_dims", "split_per_stage", "stage_drop_rates"]


def pyramid_dims(dims: int | Sequence[int], n: int) -> list[int]:
    """Stage widths: an int C means (C, 2C, 4C, ...) over ``n`` stages; a sequence is taken as given (its length is
    checked by the caller, which knows what it needs)."""
    return [int(dims * 2**i) for i in range(n)] if isinstance(dims, int) else list(dims)


def split_per_stage(values: Sequence[float], depths: Sequence[int]) -> list[list[float]]:
    """Split a flat per-block list (e.g. drop-path rates) into consecutive per-stage lists of ``depths`` blocks."""
    out, start = [], 0
    for depth in depths:
        out.append(list(values[start : start + depth]))
        start += depth
    return out


def stage_drop_rates(rate: float, depths: Sequence[int], *, reverse: bool = False) -> list[list[float]]:
    """Stochastic-depth rates ``linspace(0, rate)`` over all blocks of all stages (reversed with ``reverse``, the
    VM-UNet decoder schedule), split per stage."""
    n = sum(depths)
    rates = torch.linspace(0, rate, n) if n else torch.zeros(0)
    return split_per_stage((rates.flip(0) if reverse else rates).tolist(), depths)


def nearest_valid_size(size: int, stride: int) -> int:
    """The multiple of ``stride`` closest to ``size`` (ties go up, never below ``stride``)."""
    lo = max(stride, (size // stride) * stride)
    hi = lo + stride
    return lo if size - lo < hi - size else hi


class SegmentationModel(nn.Module):
    """Base for all models: ``forward(x)`` maps (B, in_chans, H, W) to logits (B, num_classes, H, W).

    Subclasses set ``num_classes``, ``in_chans`` and ``stride`` (H and W must be multiples of it) and call
    :meth:`check_input` at the top of ``forward``. Models with a fixed input size set ``fixed_size``.
    ``first_conv`` / ``classifier`` name the stem convolution and the output layer (module paths), which pretrained
    loading adapts to another ``in_chans`` / re-initialises for another ``num_classes``; when left ``None`` they are
    taken to be the first 4-D weight and the last weight of the state dict.
    """

    num_classes: int = 1
    in_chans: int = 3
    stride: int = 32
    fixed_size: tuple[int, int] | None = None
    first_conv: str | None = None
    classifier: str | None = None

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` with an actionable message if ``x`` is not a valid input."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects a 4-D tensor (B, C, H, W), got {shape}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{type(self).__name__} was built with in_chans={self.in_chans} but the input has {x.shape[1]} "
                "channels; rebuild with create_model(..., in_chans=...)"
            )
        self.check_size(int(x.shape[-2]), int(x.shape[-1]))
        self.check_dtype(x)

    def check_dtype(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` if ``x`` cannot meet the weights' dtype: an integer image (not normalised), or a
        float dtype other than the weights' outside autocast (a model converted with ``.bfloat16()``/``.half()``
        takes inputs of that dtype; a float32 model under ``torch.autocast`` takes float32)."""
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a floating-point input (normalised image), got {x.dtype}; "
                             "convert and normalise it first (mambaseg.inference.Predictor does both)")
        dtype = weight_dtype(self)
        if x.dtype == dtype or (x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)):
            return
        raise ValueError(f"{type(self).__name__} has {dtype} weights but the input is {x.dtype}: pass "
                         f"x.to({dtype}) (mambaseg.inference.Predictor does), or run a float32 model under "
                         "torch.autocast(device_type, dtype=...) for reduced precision")

    def valid_size(self, h: int, w: int) -> tuple[int, int]:
        """The input size nearest to (h, w) that the model takes (its fixed size, if it has one)."""
        if self.fixed_size is not None:
            return (int(self.fixed_size[0]), int(self.fixed_size[1]))
        return nearest_valid_size(h, self.stride), nearest_valid_size(w, self.stride)

    def check_size(self, h: int, w: int) -> None:
        """Raise ``ValueError`` naming a valid size if the model cannot take (h, w) inputs."""
        if self.fixed_size is not None and (h, w) != tuple(self.fixed_size):
            # the size to rebuild for must itself be one the model takes: the input's, or the nearest multiple
            rebuild = (nearest_valid_size(h, self.stride), nearest_valid_size(w, self.stride))
            also = "" if rebuild == (h, w) else f" and resize the input to it (H, W must be multiples of {self.stride})"
            raise ValueError(
                f"{type(self).__name__} was built for img_size={tuple(self.fixed_size)} (H, W) but got {(h, w)}; "
                f"resize the input to {tuple(self.fixed_size)}, or rebuild with create_model(..., img_size={rebuild})"
                + also
            )
        s = self.stride
        if h % s or w % s:
            raise ValueError(
                f"{type(self).__name__} needs H and W divisible by {s}, got {(h, w)}; "
                f"nearest valid size is {self.valid_size(h, w)}"
            )
