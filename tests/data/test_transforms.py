from __future__ import annotations

import numpy as np
import pytest

from mambaseg.data.transforms import (
    PRESETS,
    Compose,
    Either,
    GaussianBlur,
    GaussianNoise,
    HorizontalFlip,
    RandomContrast,
    RandomResizedCrop,
    RandomRot90Flip,
    RandomRotation,
    Resize,
    VerticalFlip,
    as_size,
    build_transforms,
    rotate,
    vmunet_isic_transforms,
)


def _pair(h=9, w=9, c=3, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
    mask = rng.integers(0, 3, size=(h, w)).astype(np.uint8)
    return img, mask


def test_flips_exact_and_probability():
    img, mask = _pair(5, 7)
    rng = np.random.default_rng(0)
    i2, m2 = HorizontalFlip(1.0)(img, mask, rng)
    np.testing.assert_array_equal(i2, img[:, ::-1])
    np.testing.assert_array_equal(m2, mask[:, ::-1])
    assert i2.flags["C_CONTIGUOUS"] and m2.flags["C_CONTIGUOUS"]
    i3, m3 = VerticalFlip(1.0)(img, mask, rng)
    np.testing.assert_array_equal(i3, img[::-1])
    np.testing.assert_array_equal(m3, mask[::-1])
    i4, m4 = HorizontalFlip(0.0)(img, mask, rng)
    assert i4 is img and m4 is mask


def test_flip_probability_is_respected():
    img, mask = _pair(4, 6)
    rng = np.random.default_rng(1)
    t = HorizontalFlip(0.5)
    flipped = sum(not np.array_equal(t(img, mask, rng)[0], img) for _ in range(400))
    assert 150 < flipped < 250


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rotation_by_right_angles_matches_rot90(k):
    # square image with an exact pixel centre: multiples of 90 degrees are exact permutations
    img, mask = _pair(9, 9)
    i2, m2 = rotate(img, mask, 90.0 * k)
    np.testing.assert_array_equal(m2, np.rot90(mask, k))
    np.testing.assert_array_equal(i2, np.rot90(img, k))


def test_rotation_keeps_hard_labels_and_fills_background():
    img, mask = _pair(20, 30)
    mask = mask.copy()
    mask[mask == 0] = 1  # no background inside the image: any 0 after rotation comes from outside
    i2, m2 = rotate(img, mask, 37.0, fill=0)
    assert set(np.unique(m2)) <= {0, 1, 2}
    assert (m2 == 0).any()  # the corners were filled with background
    assert i2.shape == img.shape and i2.dtype == np.uint8
    assert (i2[m2 == 0] == 0).mean() > 0.5  # filled corners are mostly the fill value


def test_rotation_fresh_angle_per_sample_vs_fixed():
    img, mask = _pair(16, 16)
    rng = np.random.default_rng(3)
    t = RandomRotation(1.0, per_sample=True)
    outs = [t(img, mask, rng)[1] for _ in range(4)]
    assert len({o.tobytes() for o in outs}) > 1
    fixed = RandomRotation(1.0, per_sample=False)
    outs = [fixed(img, mask, rng)[1] for _ in range(4)]
    assert len({o.tobytes() for o in outs}) == 1
    assert fixed._fixed_angle is not None


def test_rotation_degrees_argument():
    t = RandomRotation(0.5, 20)
    assert t.degrees == (-20.0, 20.0)
    with pytest.raises(ValueError, match="low <= high"):
        RandomRotation(0.5, (10, -10))
    with pytest.raises(ValueError, match="probability"):
        RandomRotation(1.5)


def test_resize_shapes_interpolation_and_single_channel():
    img, mask = _pair(40, 60, c=1)
    i2, m2 = Resize((16, 24))(img, mask)
    assert i2.shape == (16, 24, 1) and m2.shape == (16, 24)
    assert set(np.unique(m2)) <= set(np.unique(mask))
    # upscaling a constant image stays constant; nearest keeps labels
    const = np.full((4, 4, 3), 77, np.uint8)
    i3, m3 = Resize(8)(const, np.ones((4, 4), np.uint8))
    assert (i3 == 77).all() and (m3 == 1).all()
    # no-op when already the right size
    i4, m4 = Resize((40, 60))(img, mask)
    assert i4 is img and m4 is mask


def test_compose_deterministic_given_seed():
    img, mask = _pair(50, 70)
    t = vmunet_isic_transforms((32, 32), train=True)
    a = t(img, mask, np.random.default_rng(123))
    b = t(img, mask, np.random.default_rng(123))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == (32, 32, 3) and a[1].shape == (32, 32)
    outs = {t(img, mask, np.random.default_rng(s))[1].tobytes() for s in range(8)}
    assert len(outs) > 1


def test_compose_checks_inputs():
    t = Compose([Resize(8)])
    with pytest.raises(ValueError, match="channels-last"):
        t(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="mask"):
        t(np.zeros((8, 8, 3), np.uint8), np.zeros((7, 8), np.uint8), np.random.default_rng(0))


def test_eval_pipeline_is_resize_only():
    img, mask = _pair(30, 40)
    t = vmunet_isic_transforms(16, train=False)
    assert len(t.transforms) == 1 and isinstance(t.transforms[0], Resize)
    for preset in ("vmunet_isic", "flips", "none"):
        t = build_transforms(16, augment=False, preset=preset)
        assert [type(x) for x in t.transforms] == [Resize]
    with pytest.raises(ValueError, match="unknown data.augmentation .bogus."):
        build_transforms(16, augment=True, preset="bogus")


def test_photometric_transforms():
    img = np.full((32, 32, 3), 100, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    rng = np.random.default_rng(0)
    noisy, m = GaussianNoise(10.0, p=1.0)(img, mask, rng)
    assert noisy.dtype == np.uint8 and m is mask
    assert 7 < noisy.astype(float).std() < 13
    blurred, _ = GaussianBlur(1.5, p=1.0)(noisy, mask, rng)
    assert blurred.astype(float).std() < noisy.astype(float).std()
    x = np.zeros((8, 8, 1), np.float32)
    x[:, :4] = 1.0
    out, _ = RandomContrast((0.5, 0.5), p=1.0)(x, np.zeros((8, 8), np.uint8), rng)
    np.testing.assert_allclose(out[:, :4], 0.75)
    np.testing.assert_allclose(out[:, 4:], 0.25)


def test_as_size():
    assert as_size(5) == (5, 5)
    assert as_size((3, 4)) == (3, 4)
    for bad in [(0, 4), "ab", (1, 2, 3), -1]:
        with pytest.raises(ValueError, match="image_size"):
            as_size(bad)


def test_rot90_flip_is_a_symmetry_of_the_square():
    img, mask = _pair(6, 6)
    t = RandomRot90Flip(1.0)
    rng = np.random.default_rng(0)
    allowed = set()
    for k in range(4):
        for axis in (0, 1):
            allowed.add(np.flip(np.rot90(mask, k), axis).tobytes())
    seen = {t(img, mask, rng)[1].tobytes() for _ in range(64)}
    # a flip always follows the rotation, so the outcomes are the 4 reflections of the square (as in VMB-UNet)
    assert len(allowed) == 4 and seen == allowed
    # image and mask move together
    i2, m2 = t(np.repeat(mask[..., None], 3, -1), mask, rng)
    np.testing.assert_array_equal(i2[..., 0], m2)
    # non-square inputs change orientation
    i3, m3 = RandomRot90Flip(1.0)(*_pair(4, 6), np.random.default_rng(1))
    assert m3.shape in {(4, 6), (6, 4)} and i3.shape[:2] == m3.shape


def test_random_resized_crop_geometry():
    h, w = 40, 60
    yy, xx = np.mgrid[0:h, 0:w]
    mask = (yy * w + xx).astype(np.int32)  # unique value per pixel: tells where the crop came from
    img = np.repeat((mask % 251).astype(np.uint8)[..., None], 3, -1)
    t = RandomResizedCrop((20, 30), scale=(0.8, 0.95), p=1.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        top, left, ch, cw = t._region(h, w, rng)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        assert 0.75 <= ch * cw / (h * w) <= 1.0
    i2, m2 = t(img, mask, rng)
    assert i2.shape == (20, 30, 3) and m2.shape == (20, 30)
    rows, cols = m2 // w, m2 % w
    assert (np.diff(rows[:, 0]) >= 0).all() and (np.diff(cols[0]) >= 0).all()  # nearest keeps the order
    assert RandomResizedCrop(8, p=0.0)(img, mask, rng)[1] is mask
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(8, scale=(0.0, 1.0))


def test_either_and_presets():
    img, mask = _pair(8, 8)
    marker = lambda tag: (lambda i, m, r: (i, np.full_like(m, tag)))  # noqa: E731
    rng = np.random.default_rng(0)
    tags = [int(Either(marker(1), marker(2), p=0.3)(img, mask, rng)[1][0, 0]) for _ in range(400)]
    assert 80 < tags.count(1) < 160 and tags.count(1) + tags.count(2) == 400
    big, bmask = _pair(30, 45)
    for preset in PRESETS:
        t = build_transforms((16, 24), augment=True, preset=preset)
        for s in range(5):
            a, b = t(big, bmask, np.random.default_rng(s))
            assert a.shape == (16, 24, 3) and b.shape == (16, 24)
            assert set(np.unique(b)) <= set(np.unique(bmask))


@pytest.mark.parametrize("preset", ["msvmunet", "flips_rotate", "none"])
def test_slice_augment_pickles_for_spawned_workers(preset):
    """DataLoader workers started with ``spawn`` (macOS/Windows default) pickle the dataset and its augmentation."""
    import pickle

    from mambaseg.data.volumetric import SliceAugment

    aug = SliceAugment(preset)
    clone = pickle.loads(pickle.dumps(aug))
    image = np.random.default_rng(0).random((24, 24, 1)).astype(np.float32)
    mask = (np.arange(24 * 24).reshape(24, 24) % 3).astype(np.int64)
    a = aug(image, mask, np.random.default_rng(5))
    b = clone(image, mask, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_strong_2d_pieces():
    from mambaseg.data.transforms import ColorJitter, ElasticDeform, RandomAffine

    img, mask = _pair(40, 40)
    # scale 2 about the centre, no rotation: the centre pixel stays, the mask grows, labels stay hard
    square = np.zeros((41, 41), np.uint8)
    square[15:26, 15:26] = 2
    a, m = RandomAffine((2.0, 2.0), (0.0, 0.0), p=1.0)(_pair(41, 41)[0], square, np.random.default_rng(0))
    assert set(np.unique(m)) == {0, 2} and a.shape == (41, 41, 3)
    assert m[20, 20] == 2 and 4 * 121 * 0.8 < (m > 0).sum() < 4 * 121 * 1.2
    # elastic: a deformation with magnitude 0 is the identity; a positive one moves pixels but keeps the labels
    e0, m0 = ElasticDeform(0.0, p=1.0)(img, mask, np.random.default_rng(1))
    assert np.array_equal(e0, img) and np.array_equal(m0, mask)
    e1, m1 = ElasticDeform(0.1, p=1.0)(img, mask, np.random.default_rng(1))
    assert not np.array_equal(e1, img) and set(np.unique(m1)) <= set(np.unique(mask))
    # colour jitter: the mask never changes, uint8 stays uint8, float stays in [0, 1], seeded = reproducible
    c1, cm = ColorJitter(p=1.0)(img, mask, np.random.default_rng(2))
    c2, _ = ColorJitter(p=1.0)(img, mask, np.random.default_rng(2))
    assert c1.dtype == np.uint8 and np.array_equal(c1, c2) and np.array_equal(cm, mask) and not np.array_equal(c1, img)
    f, _ = ColorJitter(p=1.0)(img.astype(np.float32) / 255, mask, np.random.default_rng(2))
    assert f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1
    assert np.abs(f * 255 - c1).max() <= 1.0  # same operations on both kinds of input


def test_hair_augment_draws_dark_curves_on_the_image_only():
    from mambaseg.data.transforms import HairAugment, build_augmentation

    white = np.full((128, 128, 3), 255, np.uint8)
    mask = (np.arange(128 * 128).reshape(128, 128) % 2).astype(np.uint8)
    out, m = HairAugment(p=1.0)(white, mask, np.random.default_rng(0))
    assert m is mask and out.dtype == np.uint8 and out.shape == white.shape
    hair = (out < 255).any(-1)
    assert 0.005 < hair.mean() < 0.4  # thin curves, not a wash over the image
    assert out.min() < 160  # opaque centres come close to the (dark) hair colour
    r, g, b = (out[..., i].astype(int) for i in range(3))
    assert ((r >= g) & (g >= b))[hair].all()  # blended towards black .. brown, never towards another hue
    # seeded = reproducible, another seed = other hairs; p=0 = untouched (the same object back)
    again, _ = HairAugment(p=1.0)(white, mask, np.random.default_rng(0))
    other, _ = HairAugment(p=1.0)(white, mask, np.random.default_rng(1))
    assert np.array_equal(out, again) and not np.array_equal(out, other)
    assert HairAugment(p=0.0)(white, mask, np.random.default_rng(0))[0] is white
    # float [0, 1] input: the same hairs; grey input: one channel back
    f, _ = HairAugment(p=1.0)(white.astype(np.float32) / 255, mask, np.random.default_rng(0))
    assert f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1 and np.abs(f * 255 - out).max() <= 1.0
    grey, _ = HairAugment(p=1.0)(white[..., :1], mask, np.random.default_rng(0))
    assert grey.shape == (128, 128, 1) and np.array_equal(grey[..., 0] < 255, hair)
    # the widths scale with the image: the covered fraction stays in the same range at 512 px
    big = np.full((512, 512, 3), 255, np.uint8)
    cover = [(HairAugment(p=1.0)(img, img[..., 0], np.random.default_rng(s))[0] < 255).any(-1).mean()
             for img in (white, big) for s in range(20)]
    assert 0.5 < np.mean(cover[20:]) / np.mean(cover[:20]) < 2.0
    for bad in ({"count": (0, 3)}, {"width": (2.0, 1.0)}, {"opacity": (0.5, 1.5)}):
        with pytest.raises(ValueError, match="HairAugment"):
            HairAugment(**bad)
    # the preset: strong_2d's geometry and colour, then hairs, mask labels unchanged in kind
    aug = build_augmentation("strong_2d_hair", 128)
    img, msk = _pair(128, 128)
    for s in range(10):
        a, b = aug(img, msk, np.random.default_rng(s))
        assert a.shape == img.shape and set(np.unique(b)) <= set(np.unique(msk))
