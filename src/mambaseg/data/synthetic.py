"""Synthetic binary segmentation data: textured blobs on noisy backgrounds.

Each image shows one or two irregular "lesions" (ellipses whose radius is perturbed by a few random
harmonics) that are darker and differently tinted than a smoothly shaded, noisy background, with a
striped/speckled texture inside and occasional thin dark "hairs" crossing the image as distractors. The
task is easy enough for a small network to reach Dice > 0.8 in a few CPU minutes, yet not a pure
threshold: noise, shading and hairs overlap the foreground's intensity range.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from mambaseg.data.transforms import as_size

__all__ = ["make_synthetic_dataset", "synthetic_sample"]


def _blob_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    cy = rng.uniform(0.3, 0.7) * h
    cx = rng.uniform(0.3, 0.7) * w
    base = rng.uniform(0.14, 0.3) * min(h, w)
    aspect = rng.uniform(0.65, 1.0)
    tilt = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    # rotate into the blob's frame and stretch one axis
    u = dx * np.cos(tilt) + dy * np.sin(tilt)
    v = (-dx * np.sin(tilt) + dy * np.cos(tilt)) / aspect
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    radius = np.ones_like(theta)
    for k in (2, 3, 4, 5):
        radius += rng.uniform(0.0, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return r <= base * radius


def synthetic_sample(size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and mask.

    Args:
        size: (H, W).
        rng: generator all randomness is drawn from.

    Returns:
        image uint8 (H, W, 3) RGB and mask uint8 (H, W) with values {0, 255} (at least one 255 pixel).
    """
    h, w = as_size(size, "size")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # background: light tinted skin-like colour with a linear shading and smooth blotches
    bg = rng.uniform(150, 215, size=3).astype(np.float32)
    bg[0] += rng.uniform(0, 25)
    angle = rng.uniform(0, 2 * np.pi)
    shade = ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)) * rng.uniform(10, 40)
    blotch = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), max(h, w) / 12)
    blotch *= 12.0 / (blotch.std() + 1e-6)
    img = bg[None, None, :] + (shade + blotch)[..., None]

    mask = _blob_mask(h, w, rng)
    if rng.random() < 0.3:
        mask |= _blob_mask(h, w, rng)
    if not mask.any():  # cannot happen with the radii above, kept as a guarantee
        mask[h // 2, w // 2] = True

    # foreground: darker, browner, textured (stripes + speckle)
    fg = bg * rng.uniform(0.35, 0.6) + np.array([rng.uniform(0, 20), 0.0, -rng.uniform(0, 15)], np.float32)
    freq = rng.uniform(0.15, 0.5)
    phi = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(freq * (xx * np.cos(phi) + yy * np.sin(phi))) * rng.uniform(5, 15)
    speckle = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.2) * 18.0
    fg_img = fg[None, None, :] + (stripes + speckle)[..., None]
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.8)[..., None]  # slightly soft image edge
    img = img * (1 - soft) + fg_img * soft

    # distractors: thin dark hairs (not part of the mask)
    for _ in range(int(rng.integers(0, 3))):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        hair = np.zeros((h, w), np.uint8)
        cv2.line(hair, p0, p1, 1, thickness=1)
        img[hair.astype(bool)] *= rng.uniform(0.4, 0.7)

    img += rng.normal(0, 24.0, size=img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8) * 255


def make_synthetic_dataset(
    out_dir: str | Path,
    *,
    n_train: int = 64,
    n_val: int = 16,
    size: int | tuple[int, int] = (96, 96),
    seed: int = 0,
) -> Path:
    """Write a synthetic folder dataset ``out_dir/{train,val}/{images,masks}/syn_<4-digit index>.png``.

    Sample ``i`` of split ``s`` depends only on ``(seed, s, i)``, so changing ``n_train`` does not change
    the validation images. Files of the same names are overwritten; a ``dataset.json`` records the
    parameters.

    Args:
        out_dir: folder to create (parents included).
        n_train: number of training pairs (>= 1).
        n_val: number of validation pairs (>= 1).
        size: image (H, W) (an int means square).
        seed: base seed.

    Returns:
        ``Path(out_dir)``.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
    hw = as_size(size, "size")
    out = Path(out_dir)
    for split_idx, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        img_dir, mask_dir = out / split / "images", out / split / "masks"
        img_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([int(seed), split_idx, i])
            image, mask = synthetic_sample(hw, rng)
            name = f"syn_{i:04d}.png"
            Image.fromarray(image, mode="RGB").save(img_dir / name)
            Image.fromarray(mask, mode="L").save(mask_dir / name)
    meta = {
        "generator": "mambaseg.data.make_synthetic_dataset",
        "n_train": n_train,
        "n_val": n_val,
        "size": list(hw),
        "seed": seed,
        "task": "binary segmentation, masks {0, 255}",
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out
