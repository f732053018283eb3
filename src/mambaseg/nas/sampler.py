"""Path samplers for single-path one-shot (SPOS) supernet training."""

from __future__ import annotations

import random
from typing import Any

__all__ = ["UniformPathSampler"]


class UniformPathSampler:
    """Draws architectures uniformly: every position independently uniform over its choices.

    Seeded and checkpointable (``state_dict`` / ``load_state_dict`` are JSON/``weights_only``-safe), so a
    resumed supernet training draws the same paths as an uninterrupted one.

    Args:
        num_positions: genome length (22 for SliceMamba).
        num_choices: choices per position (4).
        seed: seed of the sampler's own random generator (independent of torch's global RNG).

    Example:
        >>> s = UniformPathSampler(22, 4, seed=0)
        >>> len(s.sample())
        22
    """

    def __init__(self, num_positions: int, num_choices: int, seed: int = 0) -> None:
        if num_positions < 1 or num_choices < 1:
            raise ValueError(f"num_positions and num_choices must be positive, got {num_positions}, {num_choices}")
        self.num_positions = int(num_positions)
        self.num_choices = int(num_choices)
        self.seed = int(seed)
        self.rng = random.Random(self.seed)

    def sample(self) -> tuple[int, ...]:
        """One architecture, a tuple of ``num_positions`` ints in ``0 .. num_choices - 1``."""
        return tuple(self.rng.randrange(self.num_choices) for _ in range(self.num_positions))

    def state_dict(self) -> dict[str, Any]:
        ver, internal, gauss = self.rng.getstate()
        return {"seed": self.seed, "rng": [ver, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ver, internal, gauss = state["rng"]
        self.seed = int(state["seed"])
        self.rng.setstate((int(ver), tuple(int(v) for v in internal), gauss))
