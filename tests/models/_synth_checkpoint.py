"""Deterministic official-format state dicts for the converter replay tests, and the fixture format they replay.

A parity run (``benchmarks/parity/*.py``) builds an official network, fills its ``state_dict`` with
:func:`synth_state_dict` (values seeded per key from the key name and shape, drawn from distributions that keep the
network numerically tame: positive BatchNorm variances, S4D-like ``A_log``, dt biases in [1e-3, 0.1] after softplus,
norm weights near 1, fan-in scaled weights), runs a seeded input through it and stores the key list, a few checksums
and the logits in a JSON fixture. The replay test regenerates the same state dict from the fixture alone, converts
it and compares our model's logits with the recorded official ones.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from pathlib import Path
from typing import Any

import torch

__all__ = ["synth_tensor", "synth_state_dict", "seeded_input", "encode_tensor", "decode_tensor", "load_fixture",
           "save_fixture", "checksum"]

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"


def _seed(key: str, base: int) -> int:
    return (zlib.crc32(key.encode()) ^ (base * 0x9E3779B1)) & 0x7FFFFFFF


def synth_tensor(key: str, shape: tuple[int, ...], dtype: str = "float32", base_seed: int = 0) -> torch.Tensor:
    """The value of one parameter/buffer, a pure function of (key, shape, dtype, base_seed)."""
    shape = tuple(int(s) for s in shape)
    if not dtype.startswith("float"):
        return torch.zeros(shape, dtype=getattr(torch, dtype))
    g = torch.Generator().manual_seed(_seed(key, base_seed))
    leaf = key.rsplit(".", 1)[-1]
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    n = torch.randn(shape, generator=g, dtype=torch.float64)
    if leaf == "running_var":
        t = 0.5 + u
    elif leaf == "running_mean":
        t = 0.1 * n
    elif leaf in ("A_logs", "A_log"):
        t = torch.log(1.0 + 15.0 * u)
    elif leaf in ("dt_projs_bias", "dt_bias") or key.endswith("dt_proj.bias"):
        dt = torch.exp(math.log(1e-3) + u * (math.log(0.1) - math.log(1e-3)))
        t = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    elif len(shape) <= 1 and leaf == "bias":
        t = 0.05 * n
    elif len(shape) <= 1:  # norm weights, learnable scales, D skips
        t = 1.0 + 0.1 * n
    else:
        fan_in = shape[-1] if leaf in ("x_proj_weight", "dt_projs_weight") else math.prod(shape[1:])
        t = n / math.sqrt(max(fan_in, 1))
    return t.to(getattr(torch, dtype))


def synth_state_dict(entries: list[list[Any]], base_seed: int = 0) -> dict[str, torch.Tensor]:
    """``entries`` = [[key, shape, dtype], ...] -> {key: synth_tensor(...)} in the same order."""
    return {k: synth_tensor(k, tuple(s), d, base_seed) for k, s, d in entries}


def seeded_input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))


def checksum(t: torch.Tensor) -> list[float]:
    """(sum, sum of |x|) in float64: catches a changed generator or a wrong key order cheaply."""
    t = t.detach().to(torch.float64)
    return [float(t.sum()), float(t.abs().sum())]


def encode_tensor(t: torch.Tensor) -> dict[str, Any]:
    t = t.detach().to(torch.float32).contiguous()
    return {"shape": list(t.shape), "float32_b64": base64.b64encode(t.numpy().tobytes()).decode()}


def decode_tensor(d: dict[str, Any]) -> torch.Tensor:
    raw = bytearray(base64.b64decode(d["float32_b64"]))
    return torch.frombuffer(raw, dtype=torch.float32).reshape(d["shape"]).clone()


def save_fixture(path: Path, data: dict[str, Any]) -> None:
    """JSON with one top-level field per line (the key list one entry per line), so diffs stay readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, v in data.items():
        if k == "state_dict":
            body = ",\n  ".join(json.dumps(e, separators=(",", ":")) for e in v)
            lines.append(f"{json.dumps(k)}: [\n  {body}\n ]")
        else:
            lines.append(f"{json.dumps(k)}: {json.dumps(v)}")
    path.write_text("{\n " + ",\n ".join(lines) + "\n}\n")


def load_fixture(family: str, name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / family / f"{name}.json").read_text())
