"""Joint image/mask transforms on numpy arrays (OpenCV for the geometry).

Why not albumentations or torchvision v2: neither is usable on both machines this library must train
on. torchvision's PyPI wheel is built against a specific torch release and breaks beside the local CPU
torch build, and the GPU machine has no albumentations. The geometric operations needed by the recipes
(flips, rotation, resize) are a few lines on top of OpenCV, which both machines have; keeping them here
also lets us test each one exactly.

Conventions:
    * ``image`` is channels-last (H, W, C), uint8 or float; ``mask`` is (H, W) of integer class indices.
    * Every random transform draws from the ``rng`` (a :class:`numpy.random.Generator`) passed in the call,
      never from global state, so a sample is reproducible from its generator's seed.
    * Masks are only moved with nearest-neighbour sampling (flips, rotation, resize) and stay hard labels.
    * Pixels that a rotation brings in from outside the image get ``fill`` (image) and 0 (mask, background).

Example:
    >>> import numpy as np
    >>> t = vmunet_isic_transforms((64, 64), train=True)
    >>> img, mask = t(np.zeros((90, 120, 3), np.uint8), np.zeros((90, 120), np.uint8), np.random.default_rng(0))
    >>> img.shape, mask.shape
    ((64, 64, 3), (64, 64))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import cv2
import numpy as np

__all__ = [
    "Transform",
    "Compose",
    "HorizontalFlip",
    "VerticalFlip",
    "RandomRotation",
    "Resize",
    "GaussianNoise",
    "GaussianBlur",
    "RandomContrast",
    "RandomRot90Flip",
    "RandomResizedCrop",
    "Either",
    "RandomAffine",
    "ElasticDeform",
    "ColorJitter",
    "HairAugment",
    "vmunet_isic_transforms",
    "build_transforms",
    "as_size",
    "PRESETS",
]


class Transform(Protocol):
    """A joint transform: ``(image, mask, rng) -> (image, mask)``."""

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]: ...


def as_size(size: int | Sequence[int], name: str = "image_size") -> tuple[int, int]:
    """Normalise ``size`` to an ``(H, W)`` tuple of positive ints (an int means a square)."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an int or a pair (H, W) of ints, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    return h, w


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3:
        raise ValueError(f"transforms expect a channels-last (H, W, C) image, got shape {image.shape}")
    if mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise ValueError(f"transforms expect an (H, W) mask matching the image {image.shape[:2]}, got {mask.shape}")


def _keep_channels(out: np.ndarray, channels: int) -> np.ndarray:
    # OpenCV drops a trailing singleton channel axis.
    return out[..., None] if out.ndim == 2 and channels == 1 else out


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        _check_pair(image, mask)
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return image, mask

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


def _check_p(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability p must be in [0, 1], got {p}")
    return float(p)


class HorizontalFlip:
    """Mirror left-right (along W) with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = _check_p(p)

    def __call__(self, image, mask, rng):
        if rng.random() < self.p:
            return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
        return image, mask

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


class VerticalFlip:
    """Mirror top-bottom (along H) with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = _check_p(p)

    def __call__(self, image, mask, rng):
        if rng.random() < self.p:
            return np.ascontiguousarray(image[::-1]), np.ascontiguousarray(mask[::-1])
        return image, mask

    def __repr__(self) -> str:
        return f"VerticalFlip(p={self.p})"


def rotate(image: np.ndarray, mask: np.ndarray, angle: float, *, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rotate image and mask by ``angle`` degrees counter-clockwise about the image centre.

    The canvas keeps its size (corners are cut, new pixels are ``fill`` / 0). The image is sampled
    bilinearly, the mask with nearest neighbour so it keeps hard labels.
    """
    h, w = mask.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(angle), 1.0)
    c = image.shape[-1]
    img = cv2.warpAffine(
        image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * min(c, 4)
    )
    msk = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return _keep_channels(img, c), msk


class RandomRotation:
    """With probability ``p`` rotate by an angle drawn uniformly from ``degrees``.

    Args:
        p: probability of rotating a sample.
        degrees: ``(low, high)`` range of angles in degrees (``high`` excluded); a single number ``d``
            means ``(-d, d)``. Default ``(0, 360)`` as in VM-UNet's ISIC pipeline.
        per_sample: draw a fresh angle for every rotated sample (default). ``False`` reproduces the
            original VM-UNet behaviour where one angle is drawn once (here: at the first call, from that
            call's generator) and reused for every rotated sample of the run.
        fill: value for image pixels rotated in from outside the canvas.
    """

    def __init__(
        self,
        p: float = 0.5,
        degrees: float | tuple[float, float] = (0.0, 360.0),
        *,
        per_sample: bool = True,
        fill: float = 0.0,
    ) -> None:
        self.p = _check_p(p)
        if isinstance(degrees, (int, float)):
            degrees = (-abs(float(degrees)), abs(float(degrees)))
        lo, hi = (float(d) for d in degrees)
        if hi < lo:
            raise ValueError(f"RandomRotation: degrees must be (low, high) with low <= high, got {degrees}")
        self.degrees = (lo, hi)
        self.per_sample = bool(per_sample)
        self.fill = float(fill)
        self._fixed_angle: float | None = None

    def __call__(self, image, mask, rng):
        if rng.random() >= self.p:
            return image, mask
        if self.per_sample:
            angle = rng.uniform(*self.degrees)
        else:
            if self._fixed_angle is None:
                self._fixed_angle = float(rng.uniform(*self.degrees))
            angle = self._fixed_angle
        return rotate(image, mask, angle, fill=self.fill)

    def __repr__(self) -> str:
        return f"RandomRotation(p={self.p}, degrees={self.degrees}, per_sample={self.per_sample})"


class Resize:
    """Resize to ``size = (H, W)``: image with area averaging when shrinking and bilinear when growing,
    mask with nearest neighbour."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = as_size(size, "Resize size")

    def __call__(self, image, mask, rng=None):
        h, w = self.size
        if mask.shape == (h, w):
            return image, mask
        shrink = h * w < mask.shape[0] * mask.shape[1]
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        img = _keep_channels(cv2.resize(image, (w, h), interpolation=interp), image.shape[-1])
        msk = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        return img, msk

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class GaussianNoise:
    """With probability ``p`` add i.i.d. Gaussian noise of standard deviation ``std`` (in image units:
    0..255 for uint8 images, whose result is clipped and rounded back to uint8)."""

    def __init__(self, std: float, p: float = 0.5) -> None:
        if std < 0:
            raise ValueError(f"GaussianNoise: std must be >= 0, got {std}")
        self.std = float(std)
        self.p = _check_p(p)

    def __call__(self, image, mask, rng):
        if rng.random() >= self.p:
            return image, mask
        out = image.astype(np.float32) + rng.normal(0.0, self.std, size=image.shape).astype(np.float32)
        if image.dtype == np.uint8:
            out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out, mask

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std}, p={self.p})"


class GaussianBlur:
    """With probability ``p`` blur the image with a Gaussian of standard deviation ``sigma`` pixels."""

    def __init__(self, sigma: float = 1.0, p: float = 0.5) -> None:
        if sigma <= 0:
            raise ValueError(f"GaussianBlur: sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        self.p = _check_p(p)

    def __call__(self, image, mask, rng):
        if rng.random() >= self.p:
            return image, mask
        out = cv2.GaussianBlur(image, (0, 0), sigmaX=self.sigma, sigmaY=self.sigma, borderType=cv2.BORDER_REFLECT_101)
        return _keep_channels(out, image.shape[-1]), mask

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma}, p={self.p})"


class RandomContrast:
    """With probability ``p`` scale the image's deviation from its per-channel mean by a factor drawn
    uniformly from ``factor`` (``x' = mean + f * (x - mean)``)."""

    def __init__(self, factor: tuple[float, float] = (0.5, 1.5), p: float = 0.5) -> None:
        lo, hi = (float(f) for f in factor)
        if not 0 <= lo <= hi:
            raise ValueError(f"RandomContrast: factor must be (low, high) with 0 <= low <= high, got {factor}")
        self.factor = (lo, hi)
        self.p = _check_p(p)

    def __call__(self, image, mask, rng):
        if rng.random() >= self.p:
            return image, mask
        f = rng.uniform(*self.factor)
        x = image.astype(np.float32)
        mean = x.reshape(-1, x.shape[-1]).mean(axis=0)
        out = mean + f * (x - mean)
        if image.dtype == np.uint8:
            out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out.astype(image.dtype, copy=False), mask

    def __repr__(self) -> str:
        return f"RandomContrast(factor={self.factor}, p={self.p})"


class RandomRot90Flip:
    """With probability ``p`` rotate by ``k * 90`` degrees (k uniform in 0..3) and then mirror along a random
    axis (rows or columns), as VMB-UNet's ``random_rot_flip``: the result is always one of the 4 reflections
    of the input (never the input itself). A non-square image may change orientation."""

    def __init__(self, p: float = 1.0) -> None:
        self.p = _check_p(p)

    def __call__(self, image, mask, rng):
        if rng.random() >= self.p:
            return image, mask
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        image, mask = np.rot90(image, k, axes=(0, 1)), np.rot90(mask, k)
        image, mask = np.flip(image, axis=axis), np.flip(mask, axis=axis)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def __repr__(self) -> str:
        return f"RandomRot90Flip(p={self.p})"


class RandomResizedCrop:
    """With probability ``p`` crop a random region and resize it to ``size`` (torchvision semantics).

    The region covers a fraction of the image area drawn uniformly from ``scale`` with an aspect ratio
    (w/h) drawn log-uniformly from ``ratio``; after 10 failed draws the central crop of the closest valid
    ratio is used. Image: area/bilinear resize; mask: nearest.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        p: float = 1.0,
    ) -> None:
        self.size = as_size(size, "RandomResizedCrop size")
        lo, hi = (float(v) for v in scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"RandomResizedCrop: scale must satisfy 0 < low <= high <= 1, got {scale}")
        rlo, rhi = (float(v) for v in ratio)
        if not 0 < rlo <= rhi:
            raise ValueError(f"RandomResizedCrop: ratio must satisfy 0 < low <= high, got {ratio}")
        self.scale, self.ratio = (lo, hi), (rlo, rhi)
        self.p = _check_p(p)
        self._resize = Resize(self.size)

    def _region(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        area = h * w
        log_r = (np.log(self.ratio[0]), np.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            ar = float(np.exp(rng.uniform(*log_r)))
            cw = int(round(np.sqrt(target * ar)))
            ch = int(round(np.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(rng.integers(0, h - ch + 1))
                left = int(rng.integers(0, w - cw + 1))
                return top, left, ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, image, mask, rng):
        if rng.random() >= self.p:
            return image, mask
        top, left, ch, cw = self._region(*mask.shape, rng)
        image = np.ascontiguousarray(image[top : top + ch, left : left + cw])
        mask = np.ascontiguousarray(mask[top : top + ch, left : left + cw])
        return self._resize(image, mask)

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, p={self.p})"


class Either:
    """With probability ``p`` apply ``first``, otherwise apply ``second``."""

    def __init__(self, first: Transform, second: Transform, p: float = 0.5) -> None:
        self.first, self.second = first, second
        self.p = _check_p(p)

    def __call__(self, image, mask, rng):
        if rng.random() < self.p:
            return self.first(image, mask, rng)
        return self.second(image, mask, rng)

    def __repr__(self) -> str:
        return f"Either({self.first!r}, {self.second!r}, p={self.p})"


def vmunet_isic_transforms(
    image_size: int | Sequence[int], *, train: bool, per_sample_rotation: bool = True
) -> Compose:
    """The VM-UNet ISIC pipeline without its normalisation step.

    Train: horizontal flip p 0.5 -> vertical flip p 0.5 -> rotation p 0.5 by an angle uniform in
    [0, 360) -> resize to ``image_size``. Evaluation: resize only. Differences from the original code,
    on purpose: the rotation angle is drawn per sample (the original draws it once per run; pass
    ``per_sample_rotation=False`` for that), the image is rotated bilinearly rather than nearest, and the
    mask is resized with nearest neighbour (the original resizes it bilinearly, giving soft targets).
    """
    size = as_size(image_size)
    if not train:
        return Compose([Resize(size)])
    return Compose(
        [
            HorizontalFlip(0.5),
            VerticalFlip(0.5),
            RandomRotation(0.5, (0.0, 360.0), per_sample=per_sample_rotation),
            Resize(size),
        ]
    )


class RangeNoise:
    """Gaussian noise whose standard deviation is a fraction of the image's full range (1 for float images in
    [0, 1], 255 for uint8), so a preset means the same on both kinds of input."""

    def __init__(self, fraction: float, p: float = 1.0) -> None:
        self.fraction = float(fraction)
        self.p = _check_p(p)

    def __call__(self, image, mask, rng):
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        return GaussianNoise(self.fraction * scale, p=self.p)(image, mask, rng)

    def __repr__(self) -> str:
        return f"RangeNoise(fraction={self.fraction}, p={self.p})"


def _as_unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)


def _like(x: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Float [0, 1] result back to the input's kind (uint8 rounded and clipped, float clipped to [0, 1])."""
    x = np.clip(x, 0.0, 1.0)
    return np.rint(x * 255.0).astype(np.uint8) if image.dtype == np.uint8 else x.astype(image.dtype, copy=False)


class RandomAffine:
    """With probability ``p`` scale by a factor drawn uniformly from ``scale`` and rotate by an angle drawn uniformly
    from ``degrees`` about the image centre, in one warp (image bilinear, mask nearest; new pixels 0 / background)."""

    def __init__(self, scale: tuple[float, float] = (0.75, 1.25), degrees: tuple[float, float] = (-180.0, 180.0),
                 p: float = 0.5) -> None:
        lo, hi = (float(v) for v in scale)
        if not 0 < lo <= hi:
            raise ValueError(f"RandomAffine: scale must be (low, high) with 0 < low <= high, got {scale}")
        self.scale, self.degrees = (lo, hi), (float(degrees[0]), float(degrees[1]))
        self.p = _check_p(p)

    def __call__(self, image, mask, rng):
        if rng.random() >= self.p:
            return image, mask
        f = float(rng.uniform(*self.scale))
        angle = float(rng.uniform(*self.degrees))
        h, w = mask.shape
        m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, f)
        c = image.shape[-1]
        img = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(0,) * min(c, 4))
        msk = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return _keep_channels(img, c), msk

    def __repr__(self) -> str:
        return f"RandomAffine(scale={self.scale}, degrees={self.degrees}, p={self.p})"


class ElasticDeform:
    """With probability ``p`` a smooth random deformation: displacements drawn uniformly in ``[-1, 1]`` on a coarse
    ``grid x grid`` lattice, upsampled bicubically to the image and scaled to at most ``magnitude`` of the shorter
    side (so the strength does not depend on the resolution); image bilinear, mask nearest, borders reflected."""

    def __init__(self, magnitude: float = 0.03, grid: int = 4, p: float = 0.2) -> None:
        if not 0 <= magnitude < 0.5 or grid < 2:
            raise ValueError(f"ElasticDeform: magnitude must be in [0, 0.5) and grid >= 2, got {magnitude}, {grid}")
        self.magnitude, self.grid = float(magnitude), int(grid)
        self.p = _check_p(p)

    def __call__(self, image, mask, rng):
        if rng.random() >= self.p:
            return image, mask
        h, w = mask.shape
        amp = self.magnitude * min(h, w)
        coarse = rng.uniform(-1.0, 1.0, size=(2, self.grid, self.grid)).astype(np.float32)
        dx = cv2.resize(coarse[0], (w, h), interpolation=cv2.INTER_CUBIC) * amp
        dy = cv2.resize(coarse[1], (w, h), interpolation=cv2.INTER_CUBIC) * amp
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        mx, my = gx + dx, gy + dy
        c = image.shape[-1]
        img = cv2.remap(image, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        msk = cv2.remap(mask, mx, my, interpolation=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
        return _keep_channels(img, c), msk

    def __repr__(self) -> str:
        return f"ElasticDeform(magnitude={self.magnitude}, grid={self.grid}, p={self.p})"


class ColorJitter:
    """With probability ``p`` jitter brightness (``x * b``), contrast (about the mean grey), saturation (blend with
    the luma; colour images only) and gamma (``x ** g``), each factor drawn uniformly, in random order; works on
    uint8 and float [0, 1] images and returns the same kind. The mask is unchanged."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2,
                 gamma: tuple[float, float] = (0.8, 1.25), p: float = 0.8) -> None:
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0 <= v < 1:
                raise ValueError(f"ColorJitter: {name} must be in [0, 1), got {v}")
        self.brightness, self.contrast, self.saturation = float(brightness), float(contrast), float(saturation)
        self.gamma = (float(gamma[0]), float(gamma[1]))
        self.p = _check_p(p)

    def __call__(self, image, mask, rng):
        if rng.random() >= self.p:
            return image, mask
        x = _as_unit(image)
        luma_w = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        for op in rng.permutation(4):
            if op == 0:
                x = x * float(rng.uniform(1 - self.brightness, 1 + self.brightness))
            elif op == 1:
                grey = float((x @ luma_w).mean()) if x.shape[-1] == 3 else float(x.mean())
                x = grey + float(rng.uniform(1 - self.contrast, 1 + self.contrast)) * (x - grey)
            elif op == 2 and x.shape[-1] == 3:
                luma = (x @ luma_w)[..., None]
                x = luma + float(rng.uniform(1 - self.saturation, 1 + self.saturation)) * (x - luma)
            elif op == 3:
                x = np.clip(x, 0.0, 1.0) ** float(rng.uniform(*self.gamma))
            x = np.clip(x, 0.0, 1.0)
        return _like(x.astype(np.float32), image), mask

    def __repr__(self) -> str:
        return (f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation}, "
                f"gamma={self.gamma}, p={self.p})")


class HairAugment:
    """With probability ``p`` draw synthetic hairs on the image; the mask is unchanged (hair is not lesion).

    Dermoscopy photos are often crossed by hairs, which a model trained on a few dozen mostly hairless images reads
    as lesion texture or border (our worst PH2 case, IMD003, is covered in them). Each call draws ``count`` hairs
    (an integer drawn uniformly from the range): smooth curves (quadratic Bezier) from a random point, 0.3 to 1.2
    image sides long, bent by up to a quarter of their length, in a direction scattered (sd 0.5 rad) about one
    direction per image (hair lies in a flow), ``width`` pixels wide at 256 pixels (scaled with the shorter side, at
    least 1), anti-aliased, each blended with an opacity drawn from ``opacity``. One colour per image (one person's
    hair), drawn between near-black and mid brown. Works on uint8 and float [0, 1] images with 1 or 3 channels and
    returns the same kind.
    """

    def __init__(self, count: tuple[int, int] = (5, 30), width: tuple[float, float] = (0.6, 1.6),
                 opacity: tuple[float, float] = (0.4, 0.85), p: float = 0.3) -> None:
        lo, hi = int(count[0]), int(count[1])
        if not 1 <= lo <= hi:
            raise ValueError(f"HairAugment: count must be (low, high) with 1 <= low <= high, got {count}")
        if not 0 < width[0] <= width[1]:
            raise ValueError(f"HairAugment: width must be (low, high) with 0 < low <= high, got {width}")
        if not 0 < opacity[0] <= opacity[1] <= 1:
            raise ValueError(f"HairAugment: opacity must be (low, high) within (0, 1], got {opacity}")
        self.count, self.width = (lo, hi), (float(width[0]), float(width[1]))
        self.opacity = (float(opacity[0]), float(opacity[1]))
        self.p = _check_p(p)

    def __call__(self, image, mask, rng):
        if rng.random() >= self.p:
            return image, mask
        h, w = mask.shape
        scale = min(h, w) / 256.0
        alpha = np.zeros((h, w), np.uint8)  # 255 = opaque hair
        shift = 4  # cv2 fixed-point: coordinates in 1/16 pixel
        t = np.linspace(0.0, 1.0, 33)[:, None]
        flow = rng.uniform(0.0, 2 * np.pi)
        for _ in range(int(rng.integers(self.count[0], self.count[1] + 1))):
            start = rng.uniform((0.0, 0.0), (w, h))
            angle = flow + rng.normal(0.0, 0.5)
            length = rng.uniform(0.3, 1.2) * max(h, w)
            end = start + length * np.array([np.cos(angle), np.sin(angle)])
            bend = rng.uniform(-0.25, 0.25) * length * np.array([-np.sin(angle), np.cos(angle)])
            ctrl = (start + end) / 2 + bend
            pts = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t ** 2 * end
            layer = np.zeros_like(alpha)
            cv2.polylines(layer, [np.rint(pts * (1 << shift)).astype(np.int32)], False,
                          int(round(255 * rng.uniform(*self.opacity))),
                          max(1, int(round(rng.uniform(*self.width) * scale))), cv2.LINE_AA, shift)
            np.maximum(alpha, layer, out=alpha)
        colour = rng.uniform(0.05, 0.45) * np.array([1.0, 0.8, 0.65], np.float32)  # near-black .. mid brown
        x = _as_unit(image)
        if x.shape[-1] != 3:
            colour = np.full(x.shape[-1], colour.mean(), np.float32)
        a = (alpha.astype(np.float32) / 255.0)[..., None]
        return _like(x * (1 - a) + colour * a, image), mask

    def __repr__(self) -> str:
        return f"HairAugment(count={self.count}, width={self.width}, opacity={self.opacity}, p={self.p})"


def _strong_2d(size: tuple[int, int]) -> Transform:
    return Compose([HorizontalFlip(0.5), VerticalFlip(0.5), RandomAffine((0.75, 1.25), (-180.0, 180.0), p=0.7),
                    ElasticDeform(0.03, 4, p=0.2), ColorJitter(0.2, 0.2, 0.2, (0.8, 1.25), p=0.8)])


def _dermomamba_isic(size: tuple[int, int]) -> Transform:
    return Compose([RandomResizedCrop(size, scale=(0.8, 0.95), p=0.1), RandomRotation(0.5, (-15.0, 15.0)),
                    HorizontalFlip(0.5), VerticalFlip(0.5)])


def _msvmunet(size: tuple[int, int]) -> Transform:
    ops = [VerticalFlip(1.0), HorizontalFlip(1.0), RangeNoise(0.005), GaussianBlur(1.0, p=1.0),
           RandomContrast((0.5, 1.5), p=1.0), RotateRange(40.0)]
    return SomeOf(ops, 0, 4)


#: THE augmentation preset table: name -> (description, builder(image_size) -> augmentation without resize, or
#: None). Every layout honours ``data.augmentation`` through it (2-D datasets append their resize, slice datasets
#: their zoom); ``"auto"`` picks the layout's paper default (``vmunet_isic`` for 2-D images, ``msvmunet`` for
#: slices of volumes).
AUGMENTATIONS: dict[str, tuple[str, Callable[[tuple[int, int]], Transform | None]]] = {
    "vmunet_isic": ("VM-UNet: horizontal and vertical flips p 0.5, rotation p 0.5 by an angle in [0, 360) drawn per "
                    "sample (the original draws one angle per run)",
                    lambda size: Compose([HorizontalFlip(0.5), VerticalFlip(0.5),
                                          RandomRotation(0.5, (0.0, 360.0), per_sample=True)])),
    "vmbunet_isic": ("VMB-UNet: with p 0.5 a random 90-degree rotation and flip, else with p 0.5 a rotation in "
                     "[-20, 20) degrees (continuous here, integer in the original)",
                     lambda size: Either(RandomRot90Flip(1.0), RandomRotation(0.5, (-20.0, 20.0)), p=0.5)),
    "dermomamba_isic": ("DermoMamba: random resized crop (scale 0.8-0.95) p 0.1, rotation in [-15, 15] p 0.5, "
                        "horizontal and vertical flips p 0.5", _dermomamba_isic),
    "msvmunet": ("MSVM-UNet / HeteroMedSeg (imgaug SomeOf): 0 to 4 of vertical flip, horizontal flip, Gaussian "
                 "noise 0.005 of the range, Gaussian blur sigma 1, contrast 0.5-1.5, rotation +-40 degrees, in random "
                 "order (the original's affine and piecewise-affine warps are left out)", _msvmunet),
    "flips_rotate": ("SSL4MIS ACDC: with p 0.5 a random 90-degree rotation and flip, else with p 0.5 a rotation in "
                     "+-20 degrees", lambda size: FlipsOrRotate(RotateRange(20.0))),
    "strong_2d": ("stronger 2-D set (ours, for small dermoscopy/photo datasets): horizontal and vertical flips p 0.5, "
                  "scale 0.75-1.25 + rotation in [-180, 180) p 0.7, smooth elastic deformation (up to 3% of the "
                  "shorter side) p 0.2, colour jitter (brightness, contrast, saturation +-20%, gamma 0.8-1.25) p 0.8",
                  _strong_2d),
    "strong_2d_hair": ("strong_2d, then with p 0.3 synthetic hairs (5-30 dark curves about one direction, 1-2 px "
                       "at 256 px) drawn on the image, mask unchanged: for dermoscopy, where hair over a lesion is a "
                       "failure case",
                       lambda size: Compose([_strong_2d(size), HairAugment(p=0.3)])),
    "flips": ("horizontal and vertical flips p 0.5", lambda size: Compose([HorizontalFlip(0.5), VerticalFlip(0.5)])),
    "none": ("no augmentation", lambda size: None),
}

#: the names of :data:`AUGMENTATIONS`
PRESETS = tuple(AUGMENTATIONS)


def build_augmentation(preset: str, image_size: int | Sequence[int] = 256) -> Transform | None:
    """The augmentation (no resize) of a preset of :data:`AUGMENTATIONS`; ``None`` for ``"none"``.

    Raises:
        ValueError: unknown preset name (the message lists the valid ones).
    """
    if preset not in AUGMENTATIONS:
        valid = ", ".join(AUGMENTATIONS)
        raise ValueError(f"unknown data.augmentation {preset!r}; valid: {valid} or auto")
    return AUGMENTATIONS[preset][1](as_size(image_size))


def resolve_augmentation(preset: str | None, default: str) -> str:
    """``preset`` with ``"auto"`` (or empty) replaced by the layout's ``default``."""
    return default if preset in ("auto", "", None) else str(preset)


def build_transforms(image_size: int | Sequence[int], *, augment: bool, preset: str = "vmunet_isic") -> Compose:
    """The 2-D pipeline of a preset of :data:`AUGMENTATIONS`, ending at ``image_size``.

    Args:
        image_size: output (H, W) (or an int for a square).
        augment: training-time augmentation on/off; off = resize only, for every preset.
        preset: a name of :data:`AUGMENTATIONS` (``"auto"`` = ``"vmunet_isic"``).
    """
    size = as_size(image_size)
    op = build_augmentation(resolve_augmentation(preset, "vmunet_isic"), size)
    if not augment or op is None:
        return Compose([Resize(size)])
    return Compose([op, Resize(size)])


class SomeOf:
    """Apply between ``lo`` and ``hi`` of ``ops`` (each with probability 1) in random order."""

    def __init__(self, ops: Sequence[Callable], lo: int, hi: int) -> None:
        self.ops = list(ops)
        self.lo, self.hi = lo, min(hi, len(self.ops))

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        k = int(rng.integers(self.lo, self.hi + 1))
        for j in rng.permutation(len(self.ops))[:k]:
            image, mask = self.ops[int(j)](image, mask, rng)
        return image, mask


class RotateRange:
    """Rotation by an angle drawn uniformly in [-degrees, degrees] (a class, not a closure: DataLoader workers
    started with ``spawn`` pickle the augmentation)."""

    def __init__(self, degrees: float) -> None:
        self.degrees = float(degrees)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return rotate(image, mask, float(rng.uniform(-self.degrees, self.degrees)), fill=0.0)


def rot90_flip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(0, 4))
    axis = int(rng.integers(0, 2))
    image = np.flip(np.rot90(image, k, axes=(0, 1)), axis=axis)
    mask = np.flip(np.rot90(mask, k, axes=(0, 1)), axis=axis)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


class FlipsOrRotate:
    """With p=0.5 a random 90-degree rotation + flip, else with p=0.5 a small rotation, else nothing."""

    def __init__(self, rot: RotateRange) -> None:
        self.rot = rot

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() > 0.5:
            return rot90_flip(image, mask, rng)
        if rng.random() > 0.5:
            return self.rot(image, mask, rng)
        return image, mask
