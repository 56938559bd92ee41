"""Tests for byol_jax.augment: shapes, determinism, probabilities and the individual ops."""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import augment

VIEW1, VIEW2 = augment.byol_view_params()

# Module-level jitted entry points: jit caches compilations by (shapes, static args) across tests.
# Op-by-op dispatch compiles every primitive separately, which is slower than one jit.
_augment_batch = jax.jit(augment.augment_batch, static_argnames=("out_size", "params"))
_random_resized_crop = jax.jit(augment.random_resized_crop, static_argnums=(2, 3, 4))
_crop_and_resize = jax.jit(augment.crop_and_resize, static_argnums=(2,))
_sample_crop_box = jax.jit(augment.sample_crop_box, static_argnums=(1, 2, 3, 4))
_gaussian_blur = jax.jit(augment.gaussian_blur, static_argnums=(2,))
_center_crop_resize = jax.jit(augment.center_crop_resize, static_argnums=(1, 2))

# Only the crop (whole image, no resize) and nothing else: a base to switch single ops on.
_IDENTITY = augment.ViewParams(
    crop_area_range=(1.0, 1.0),
    crop_aspect_range=(1.0, 1.0),
    flip_prob=0.0,
    jitter_prob=0.0,
    grayscale_prob=0.0,
    blur_prob=0.0,
    solarize_prob=0.0,
)


def _images(seed: int, batch: int, size: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, size, size, channels), dtype=np.uint8)


def _keys(seed: int, batch: int) -> jax.Array:
    return jax.random.split(jax.random.key(seed), batch)


# ----------------------------------------------------------------------------------------------
# Whole pipeline.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "channels", "out_size", "params"),
    [(28, 1, 32, VIEW2), (64, 3, 48, VIEW1)],
)
def test_shape_dtype_range(size, channels, out_size, params):
    images = _images(0, 16, size, channels)
    out = _augment_batch(_keys(1, 16), images, out_size, params)
    chex.assert_shape(out, (16, out_size, out_size, 3))
    chex.assert_type(out, jnp.float32)
    out = np.asarray(out)
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0
    # A non-degenerate image: not all constant.
    assert out.std() > 0.05


def test_deterministic_and_key_dependent():
    # Same shapes and params as a shape test case: reuses its compilation.
    images = _images(0, 16, 28, 1)
    keys = _keys(1, 16)
    a = np.asarray(_augment_batch(keys, images, 32, VIEW2))
    b = np.asarray(_augment_batch(keys, images, 32, VIEW2))
    np.testing.assert_array_equal(a, b)
    # Other keys, same images: every example changes.
    c = np.asarray(_augment_batch(_keys(2, 16), images, 32, VIEW2))
    assert np.all(np.abs(a - c).reshape(16, -1).max(axis=1) > 1e-3)
    # Same image in every slot with distinct keys: all outputs distinct.
    same = np.broadcast_to(images[:1], images.shape)
    d = np.asarray(_augment_batch(keys, same, 32, VIEW2)).reshape(16, -1)
    dists = np.abs(d[:, None] - d[None]).max(axis=-1)
    assert np.all(dists[~np.eye(16, dtype=bool)] > 1e-3)
    # Each example depends only on its own key and image: permuting both permutes the output.
    perm = np.random.default_rng(0).permutation(16)
    e = np.asarray(_augment_batch(keys[perm], images[perm], 32, VIEW2))
    np.testing.assert_allclose(e, a[perm], atol=1e-6)


def test_decision_probabilities():
    """Each op's sampled frequency matches its probability, for both BYOL views (4 sigma)."""
    n = 4000

    @jax.jit
    def sample_both(keys):
        return [
            jax.vmap(functools.partial(augment.sample_decisions, params=p))(keys)
            for p in (VIEW1, VIEW2)
        ]

    assert (VIEW1.blur_prob, VIEW2.blur_prob) == (1.0, 0.1)
    assert (VIEW1.solarize_prob, VIEW2.solarize_prob) == (0.0, 0.2)
    for params, decisions in zip((VIEW1, VIEW2), sample_both(_keys(100, n)), strict=True):
        expected = {
            "flip": params.flip_prob,
            "jitter": params.jitter_prob,
            "grayscale": params.grayscale_prob,
            "blur": params.blur_prob,
            "solarize": params.solarize_prob,
        }
        assert set(decisions) == set(expected)
        for name, p in expected.items():
            freq = float(np.mean(np.asarray(decisions[name])))
            tol = 4.0 * math.sqrt(p * (1.0 - p) / n)
            assert abs(freq - p) <= tol, (params, name, freq, p)
        # Decisions of different ops are independent: P(flip & grayscale) ~ 0.5 * 0.2.
        flip, gray = np.asarray(decisions["flip"]), np.asarray(decisions["grayscale"])
        assert abs(np.mean(flip & gray) - 0.1) <= 4.0 * math.sqrt(0.1 * 0.9 / n)


def _ramp_image(size: int) -> np.ndarray:
    """A colourful uint8 image, asymmetric left/right, with mid-range values."""
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([40 + 6 * x, 60 + 3 * y, 200 - 4 * x - 2 * y], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _decisions(keys: jax.Array, params: augment.ViewParams) -> dict[str, np.ndarray]:
    sample = jax.jit(jax.vmap(functools.partial(augment.sample_decisions, params=params)))
    return {name: np.asarray(v) for name, v in sample(keys).items()}


def test_output_follows_sampled_flip_grayscale_solarize():
    """The deterministic ops, all at p = 0.5: each output is exactly what its decisions say."""
    size, n = 16, 64
    params = dataclasses.replace(_IDENTITY, flip_prob=0.5, grayscale_prob=0.5, solarize_prob=0.5)
    keys = _keys(7, n)
    image = _ramp_image(size)
    out = np.asarray(_augment_batch(keys, np.broadcast_to(image, (n, *image.shape)), size, params))
    # Raw uint32 key data gives the same result as typed keys.
    raw_keys = jax.random.key_data(keys)
    raw = np.asarray(
        _augment_batch(raw_keys, np.broadcast_to(image, (n, *image.shape)), size, params)
    )
    np.testing.assert_array_equal(raw, out)
    decided = _decisions(keys, params)
    for name in ("flip", "grayscale", "solarize"):
        assert 0 < decided[name].sum() < n, name  # both outcomes occur
    weights = np.asarray(augment.GRAYSCALE_WEIGHTS)
    for i in range(n):
        x = image.astype(np.float64) / 255.0
        if decided["flip"][i]:
            x = x[:, ::-1]
        if decided["grayscale"][i]:
            x = np.repeat(x @ weights[:, None], 3, axis=-1)
        if decided["solarize"][i]:
            x = np.where(x < 0.5, x, 1.0 - x)
        np.testing.assert_allclose(out[i], x, atol=1e-5, err_msg=str(i))


@pytest.mark.parametrize("op", ["jitter", "blur"])
def test_output_follows_sampled_decision(op):
    """Random-strength ops at p = 0.5: the output changes exactly when the decision says so."""
    size, n = 16, 64
    params = dataclasses.replace(_IDENTITY, **{f"{op}_prob": 0.5})
    image = _ramp_image(size)
    if op == "blur":
        # Sigma well above 0.1 (numerically no blur) on a checkerboard-modulated image.
        params = dataclasses.replace(params, blur_sigma_range=(1.0, 2.0))
        image = image // 2 + 60 * (np.indices((size, size)).sum(0) % 2)[..., None].astype(np.uint8)
    keys = _keys(8, n)
    out = np.asarray(_augment_batch(keys, np.broadcast_to(image, (n, *image.shape)), size, params))
    decided = _decisions(keys, params)[op]
    assert 0 < decided.sum() < n  # both outcomes occur
    change = np.abs(out - image / 255.0).reshape(n, -1).max(axis=1)
    np.testing.assert_array_equal(change > 1e-3, decided)
    assert np.all(change[~decided] < 1e-5)


# ----------------------------------------------------------------------------------------------
# Crop.
# ----------------------------------------------------------------------------------------------


def test_crop_full_box_is_identity():
    image = _images(3, 1, 32, 3)[0]
    out = _random_resized_crop(jax.random.key(0), image, 32, (1.0, 1.0), (1.0, 1.0))
    np.testing.assert_allclose(np.asarray(out), image / 255.0, atol=1e-5)
    gray = _images(4, 1, 28, 1)[0]
    out = _random_resized_crop(jax.random.key(0), gray, 28, (1.0, 1.0), (1.0, 1.0))
    np.testing.assert_allclose(np.asarray(out), gray / 255.0, atol=1e-5)


def test_crop_imagenet_size():
    """256 x 256 x 3 source to 224: a random sub-box, resampled, in [0, 1]."""
    image = _images(12, 1, 256, 3)[0]
    out = np.asarray(
        _random_resized_crop(jax.random.key(1), image, 224, (0.08, 1.0), (0.75, 4 / 3))
    )
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - image[16:240, 16:240] / 255.0).max() > 0.1


def test_crop_and_resize_translation_convention():
    """A box of out_size pixels at an integer offset is an exact slice of the source."""
    image = _images(5, 1, 32, 3)[0].astype(np.float32) / 255.0
    box = jnp.asarray([3.0, 5.0, 16.0, 16.0])
    out = _crop_and_resize(jnp.asarray(image), box, 16)
    np.testing.assert_allclose(np.asarray(out), image[3:19, 5:21], atol=1e-5)
    # Halving an image of 2x2 blocks: each output centre is a block centre, and the symmetric
    # (antialiased) cubic kernel on a staircase that is linear across blocks returns that block's
    # value, away from the image border.
    blocks = np.kron(np.arange(144, dtype=np.float32).reshape(12, 12), np.ones((2, 2)))[..., None]
    out = _crop_and_resize(jnp.asarray(blocks), jnp.asarray([4.0, 6.0, 8.0, 8.0]), 4)
    np.testing.assert_allclose(np.asarray(out)[..., 0], blocks[4:12:2, 6:14:2, 0], atol=1e-3)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (64, 48)])
def test_crop_box_distribution(height, width):
    n = 2000
    boxes = jax.jit(jax.vmap(lambda k: augment.sample_crop_box(k, height, width)))(_keys(11, n))
    top, left, h, w = np.asarray(boxes).T
    assert np.all(h >= 1) and np.all(w >= 1)
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + h <= height) and np.all(left + w <= width)
    np.testing.assert_array_equal(np.round(boxes), boxes)  # integer boxes
    area = h * w / (height * width)
    # Rounding to integer sizes moves area/aspect slightly beyond the nominal ranges.
    assert area.min() >= 0.07 and area.max() <= 1.0
    aspect = w / h
    assert np.all((aspect >= 0.7) & (aspect <= 1.4))
    assert np.mean((h == height) & (w == width)) < 0.05  # fallback is rare
    # Offsets cover the free range: both ends occur.
    assert np.any(top == 0) and np.any(top + h == height)
    if height == width:
        # Log-aspect symmetric around 0 (std of log-U[3/4, 4/3] is 0.166, SE 0.004).
        assert abs(np.mean(np.log(aspect))) < 0.02
        # Area ~U[0.08, 1] (mean 0.54) minus the large, elongated boxes that do not fit.
        assert 0.45 < area.mean() < 0.56


def test_crop_box_fallback():
    # Aspect 2 at full area never fits a square image: torchvision's centred fallback.
    box = _sample_crop_box(jax.random.key(0), 40, 40, (1.0, 1.0), (2.0, 2.0))
    np.testing.assert_array_equal(np.asarray(box), [10.0, 0.0, 20.0, 40.0])
    # Aspect 1.5: full width, height round(40 / 1.5) = 27, centred ((40 - 27) // 2 = 6).
    box = _sample_crop_box(jax.random.key(0), 40, 40, (1.0, 1.0), (1.5, 1.5))
    np.testing.assert_array_equal(np.asarray(box), [6.0, 0.0, 27.0, 40.0])
    # An area that never fits, with the image's own aspect (4/3) in range: the whole image.
    box = _sample_crop_box(jax.random.key(0), 30, 40, (2.0, 2.0), (0.75, 1.5))
    np.testing.assert_array_equal(np.asarray(box), [0.0, 0.0, 30.0, 40.0])


# ----------------------------------------------------------------------------------------------
# Colour ops.
# ----------------------------------------------------------------------------------------------


def test_hsv_roundtrip_matches_colorsys():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(size=(200, 3)).astype(np.float32)
    rgb[:5] = [[0.3, 0.3, 0.3], [0, 0, 0], [1, 1, 1], [1, 0, 0], [0.2, 0.9, 0.2]]
    expected = np.array([colorsys.rgb_to_hsv(*p) for p in rgb.astype(np.float64)])
    hsv, back = jax.jit(lambda x, y: (augment.rgb_to_hsv(x), augment.hsv_to_rgb(y)))(
        jnp.asarray(rgb), jnp.asarray(expected, jnp.float32)
    )
    np.testing.assert_allclose(np.asarray(hsv), expected, atol=1e-5)
    expected_rgb = np.array([colorsys.hsv_to_rgb(*p) for p in expected])
    np.testing.assert_allclose(np.asarray(back), expected_rgb, atol=1e-5)
    np.testing.assert_allclose(np.asarray(back), rgb, atol=1e-5)


def test_saturation_and_hue_match_colorsys():
    """adjust_saturation's closed form and adjust_hue agree with an HSV round trip in colorsys."""
    rng = np.random.default_rng(1)
    rgb = rng.uniform(size=(1, 300, 3)).astype(np.float32)
    rgb[0, :3] = [[0.3, 0.3, 0.3], [0.9, 0.1, 0.1], [0.0, 0.0, 0.0]]

    def via_colorsys(fn):
        out = []
        for p in rgb[0].astype(np.float64):
            h, s, v = colorsys.rgb_to_hsv(*p)
            out.append(colorsys.hsv_to_rgb(*fn(h, s, v)))
        return np.clip(np.array(out)[None], 0.0, 1.0)

    ops = jax.jit(
        lambda x: (
            [augment.adjust_saturation(x, f) for f in (0.0, 0.6, 1.5, 3.0)]
            + [augment.adjust_hue(x, d) for d in (-0.1, 0.25)]
        )
    )(jnp.asarray(rgb))
    for out, f in zip(ops[:4], (0.0, 0.6, 1.5, 3.0), strict=True):
        expected = via_colorsys(lambda h, s, v, f=f: (h, min(s * f, 1.0), v))
        np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, err_msg=str(f))
    for out, d in zip(ops[4:], (-0.1, 0.25), strict=True):
        expected = via_colorsys(lambda h, s, v, d=d: ((h + d) % 1.0, s, v))
        np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, err_msg=str(d))


def test_color_ops_hand_computed():
    px = jnp.asarray([[[0.2, 0.5, 0.9], [0.6, 0.1, 0.0]]], jnp.float32)  # [1, 2, 3]
    red = jnp.asarray([[[1.0, 0.0, 0.0]]])

    @jax.jit
    def ops(px, red):
        return {
            "bright": augment.adjust_brightness(px, 0.3),
            "contrast2": augment.adjust_contrast(px, 2.0),
            "contrast0": augment.adjust_contrast(px, 0.0),
            "sat0": augment.adjust_saturation(px, 0.0),
            "sat1": augment.adjust_saturation(px, 1.0),
            "hue_red": augment.adjust_hue(red, 1 / 3),
            "hue0": augment.adjust_hue(px, 0.0),
        }

    out = {k: np.asarray(v) for k, v in ops(px, red).items()}
    np.testing.assert_allclose(out["bright"], [[[0.5, 0.8, 1.0], [0.9, 0.4, 0.3]]], atol=1e-6)
    # Channel means: (0.4, 0.3, 0.45); factor 2 doubles the deviations, 0 leaves the mean.
    np.testing.assert_allclose(out["contrast2"], [[[0.0, 0.7, 1.0], [0.8, 0.0, 0.0]]], atol=1e-6)
    np.testing.assert_allclose(out["contrast0"][0, 0], [0.4, 0.3, 0.45], atol=1e-6)
    # Saturation 0 leaves a grey of the HSV value (the max channel); 1 is the identity.
    np.testing.assert_allclose(out["sat0"], [[[0.9] * 3, [0.6] * 3]], atol=1e-6)
    np.testing.assert_allclose(out["sat1"], px, atol=1e-6)
    # Hue: +1/3 turns red into green; 0 is the identity.
    np.testing.assert_allclose(out["hue_red"], [[[0.0, 1.0, 0.0]]], atol=1e-5)
    np.testing.assert_allclose(out["hue0"], px, atol=1e-5)


def test_color_jitter_applies_ops_in_given_order():
    image = jnp.asarray(_ramp_image(8).astype(np.float32) / 255.0)
    b, c, s, h = 0.25, 1.4, 0.8, 0.07
    f = {
        0: lambda x: augment.adjust_brightness(x, b),
        1: lambda x: augment.adjust_contrast(x, c),
        2: lambda x: augment.adjust_saturation(x, s),
        3: lambda x: augment.adjust_hue(x, h),
    }
    jitter = jax.jit(augment.color_jitter)
    outs = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2]):
        expected = image
        for i in order:
            expected = f[i](expected)
        out = jitter(image, jnp.asarray(order), b, c, s, h)
        np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5)
        outs.append(np.asarray(out))
    assert np.abs(outs[0] - outs[1]).max() > 1e-2  # order matters


def test_sampled_view_ranges():
    n = 1000
    draws = jax.jit(jax.vmap(functools.partial(augment.sample_view, params=VIEW1)))(_keys(3, n))
    order = np.asarray(draws["order"])
    np.testing.assert_array_equal(np.sort(order, axis=1), np.tile(np.arange(4), (n, 1)))
    perms, counts = np.unique(order, axis=0, return_counts=True)
    assert len(perms) == 24 and counts.min() > 15  # all permutations, roughly uniform (~42)
    for name, lo, hi in [
        ("brightness", -0.4, 0.4),
        ("contrast", 0.6, 1.4),
        ("saturation", 0.8, 1.2),
        ("hue", -0.1, 0.1),
        ("blur_sigma", 0.1, 2.0),
    ]:
        v = np.asarray(draws[name])
        assert v.min() >= lo and v.max() <= hi, name
        assert v.min() < lo + 0.02 * (hi - lo) and v.max() > hi - 0.02 * (hi - lo), name
        assert abs(v.mean() - (lo + hi) / 2) < 0.05 * (hi - lo), name
    # Strengths are independent of each other (e.g. brightness vs contrast correlation ~0).
    corr = np.corrcoef(np.asarray(draws["brightness"]), np.asarray(draws["contrast"]))[0, 1]
    assert abs(corr) < 0.15


def test_jitter_strength_scales_the_sampled_ranges():
    # The config's augment.jitter_strength / jitter_prob, as build_experiment applies them.
    half = dataclasses.replace(VIEW1, **augment.jitter_params(VIEW1, 0.3, 0.5))
    draws = jax.jit(jax.vmap(functools.partial(augment.sample_view, params=half)))(_keys(4, 2000))
    for name, bound in [("brightness", 0.2), ("hue", 0.05)]:
        v = np.asarray(draws[name])
        assert v.min() >= -bound and v.max() <= bound and v.max() > 0.95 * bound, name
    contrast = np.asarray(draws["contrast"])
    assert contrast.min() >= 0.8 and contrast.max() <= 1.2 and contrast.max() > 1.19
    assert abs(np.asarray(draws["jitter"]).mean() - 0.3) < 0.04  # 2000 draws: sd 0.01
    # Strength 3 would put hue past half the circle: it stops at 0.5.
    assert augment.jitter_params(VIEW1, 0.8, 3.0)["hue"] == pytest.approx(0.3)
    assert augment.jitter_params(VIEW1, 0.8, 6.0)["hue"] == 0.5


def test_grayscale_weighted_sum():
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(5, 6, 3)).astype(np.float32)
    out = np.asarray(augment.to_grayscale(jnp.asarray(image)))
    expected = 0.2989 * image[..., 0] + 0.5870 * image[..., 1] + 0.1140 * image[..., 2]
    for ch in range(3):
        np.testing.assert_allclose(out[..., ch], expected, atol=1e-6)


def test_solarize_hand_computed():
    x = jnp.asarray([0.0, 0.2, 0.49, 0.5, 0.8, 1.0])
    np.testing.assert_allclose(augment.solarize(x), [0.0, 0.2, 0.49, 0.5, 0.2, 0.0], atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Blur.
# ----------------------------------------------------------------------------------------------


def _numpy_blur(image: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Independent separable Gaussian blur with reflect padding, explicit loops over taps."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    h, w, _ = image.shape
    p = np.pad(image.astype(np.float64), ((radius, radius), (0, 0), (0, 0)), mode="reflect")
    rows = sum(k[i] * p[i : i + h] for i in range(2 * radius + 1))
    p = np.pad(rows, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
    return sum(k[i] * p[:, i : i + w] for i in range(2 * radius + 1))


def test_blur_radius():
    assert augment.blur_radius(224) == 11  # 23 taps, as in the paper
    assert augment.blur_radius(32) == 1
    assert augment.blur_radius(10) == 1
    assert augment.blur_radius(128) == 6


def test_blur_matches_numpy():
    rng = np.random.default_rng(2)
    image = rng.uniform(size=(9, 7, 3)).astype(np.float32)
    for sigma, radius in [(1.3, 2), (0.5, 1), (2.0, 3)]:
        out = _gaussian_blur(jnp.asarray(image), jnp.float32(sigma), radius)
        np.testing.assert_allclose(np.asarray(out), _numpy_blur(image, sigma, radius), atol=1e-5)


def test_blur_constant_and_mean():
    const = jnp.full((32, 32, 3), 0.37, jnp.float32)
    np.testing.assert_allclose(_gaussian_blur(const, 1.7, 2), const, atol=1e-6)
    rng = np.random.default_rng(3)
    image = rng.uniform(size=(32, 32, 3)).astype(np.float32)
    out = np.asarray(_gaussian_blur(jnp.asarray(image), 2.0, 2))
    np.testing.assert_allclose(out.mean(axis=(0, 1)), image.mean(axis=(0, 1)), atol=5e-3)
    assert out.std() < 0.6 * image.std()  # it does smooth
    # Tiny sigma is (numerically) the identity.
    tiny = _gaussian_blur(jnp.asarray(image), 0.1, 2)
    np.testing.assert_allclose(np.asarray(tiny), image, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Eval transforms and normalisation.
# ----------------------------------------------------------------------------------------------


def test_normalize():
    x = jnp.asarray(np.random.default_rng(4).uniform(size=(2, 4, 4, 3)), jnp.float32)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = np.asarray(augment.normalize(x, mean, std))
    np.testing.assert_allclose(out, (np.asarray(x) - np.asarray(mean)) / np.asarray(std), atol=1e-6)


def test_center_crop_resize():
    image = _images(6, 1, 32, 3)[0]
    # crop 16 of 32 to 16 px: the exact centre slice.
    out = _center_crop_resize(image, 16, crop_fraction=0.5)
    chex.assert_type(out, jnp.float32)
    np.testing.assert_allclose(np.asarray(out), image[8:24, 8:24] / 255.0, atol=1e-5)
    gray = _images(7, 1, 28, 1)[0]
    out = _center_crop_resize(gray, 28)
    chex.assert_shape(out, (28, 28, 3))
    np.testing.assert_allclose(np.asarray(out), np.repeat(gray / 255.0, 3, axis=-1), atol=1e-5)
    # A non-square source (H > W): the shorter side sets the crop; upsampling stays in [0, 1].
    rect = np.random.default_rng(8).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    out = np.asarray(_center_crop_resize(rect, 48, crop_fraction=1.0))
    assert out.shape == (48, 48, 3) and out.min() >= 0.0 and out.max() <= 1.0
    # Downsampling a constant image keeps it constant.
    flat = np.full((30, 30, 1), 77, np.uint8)
    np.testing.assert_allclose(_center_crop_resize(flat, 12, 0.9), 77 / 255.0, atol=1e-5)


def test_random_crop_flip():
    images = _images(9, 8, 28, 1)
    fn = jax.jit(jax.vmap(augment.random_crop_flip, in_axes=(0, 0, None)), static_argnums=2)
    keys = _keys(10, 8)
    out = np.asarray(fn(keys, images, 32))
    assert out.shape == (8, 32, 32, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out[..., 0], out[..., 2])  # grayscale broadcast
    np.testing.assert_array_equal(out, np.asarray(fn(keys, images, 32)))
    assert np.abs(out - np.asarray(fn(_keys(11, 8), images, 32))).max() > 1e-2


def test_view_params_validation():
    with pytest.raises(ValueError):
        augment.ViewParams(flip_prob=1.5)
    with pytest.raises(ValueError):
        augment.ViewParams(crop_area_range=(0.0, 1.0))
    assert dataclasses.replace(VIEW2, blur_prob=1.0, solarize_prob=0.0) == VIEW1


# ----------------------------------------------------------------------------------------------
# Whole-image crops from padded sources (``valid``).
# ----------------------------------------------------------------------------------------------


def _previous_sample_crop_box(key, height: int, width: int, area_range, aspect_range):
    """The sampler as it was before ``valid`` existed (static Python sizes), kept verbatim here
    to show that square and unpadded sources still get the very same boxes."""
    u = augment._uniforms(key, 4 * 10).reshape(4, 10)
    area = height * width * augment._lerp(u[0], *area_range)
    aspect = jnp.exp(augment._lerp(u[1], math.log(aspect_range[0]), math.log(aspect_range[1])))
    w = jnp.round(jnp.sqrt(area * aspect))
    h = jnp.round(jnp.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    top = jnp.clip(jnp.floor(u[2] * (height - h + 1)), 0, jnp.maximum(height - h, 0))
    left = jnp.clip(jnp.floor(u[3] * (width - w + 1)), 0, jnp.maximum(width - w, 0))
    first = jnp.argmax(fits)
    box = jnp.stack([top[first], left[first], h[first], w[first]])
    in_ratio = width / height
    if in_ratio < aspect_range[0]:
        fw, fh = width, int(round(width / aspect_range[0]))
    elif in_ratio > aspect_range[1]:
        fw, fh = int(round(height * aspect_range[1])), height
    else:
        fw, fh = width, height
    fallback = jnp.asarray([(height - fh) // 2, (width - fw) // 2, fh, fw], jnp.float32)
    return jnp.where(jnp.any(fits), box, fallback).astype(jnp.float32)


@pytest.mark.parametrize(
    ("height", "width", "area_range"),
    [(28, 28, (0.08, 1.0)), (64, 48, (0.08, 1.0)), (30, 40, (0.9, 1.0)), (40, 30, (0.99, 1.0))],
)
def test_crop_boxes_equal_previous_sampler(height, width, area_range):
    """Static sizes and traced valid sizes both reproduce the previous sampler bit for bit
    (including its fallback, which the large areas force)."""
    keys = _keys(21, 512)
    aspect_range = (3 / 4, 4 / 3)
    old = jax.jit(
        jax.vmap(lambda k: _previous_sample_crop_box(k, height, width, area_range, aspect_range))
    )(keys)
    static = jax.jit(
        jax.vmap(lambda k: augment.sample_crop_box(k, height, width, area_range, aspect_range))
    )(keys)
    traced = jax.jit(
        jax.vmap(lambda k, v: augment.sample_crop_box(k, v[0], v[1], area_range, aspect_range))
    )(keys, np.tile(np.int32([height, width]), (512, 1)))
    np.testing.assert_array_equal(np.asarray(static), np.asarray(old))
    np.testing.assert_array_equal(np.asarray(traced), np.asarray(old))


@pytest.mark.parametrize(("size", "channels", "out_size"), [(28, 1, 28), (40, 3, 24)])
def test_views_without_valid_equal_the_previous_code(monkeypatch, size, channels, out_size):
    """Sources of square images carry no ``valid`` (see byol_jax.data), and their views are
    bit for bit those of the previous code: the same pipeline compiled with the previous crop
    sampler patched back in gives identical arrays, so Fashion-MNIST / CIFAR results stand."""
    images = _images(8, 64, size, channels)
    keys = _keys(9, 64)

    def views(params):  # a fresh jit each call, so the patched sampler is traced
        return np.asarray(
            jax.jit(lambda k, x: augment.augment_batch(k, x, out_size, params))(keys, images)
        )

    current = [views(p) for p in (VIEW1, VIEW2)]
    monkeypatch.setattr(
        augment,
        "sample_crop_box",
        lambda key, h, w, area, aspect: _previous_sample_crop_box(key, h, w, area, aspect),
    )
    for now, params in zip(current, (VIEW1, VIEW2), strict=True):
        np.testing.assert_array_equal(now, views(params))


@pytest.mark.parametrize(("size", "channels", "out_size"), [(28, 1, 28), (40, 3, 24)])
def test_views_with_full_valid_size_match_views_without(size, channels, out_size):
    """A source whose valid size is the whole array gets the same views as without ``valid``
    (same boxes; the masked resampling weights equal jax.image's up to float rounding)."""
    images = _images(8, 64, size, channels)
    keys = _keys(9, 64)
    valid = np.tile(np.int32([size, size]), (64, 1))
    for params in (VIEW1, VIEW2):
        plain = _augment_batch(keys, images, out_size, params)
        masked = _augment_batch(keys, images, out_size, params, valid)
        np.testing.assert_allclose(np.asarray(masked), np.asarray(plain), atol=1e-5)


def test_masked_resize_matches_jax_image_without_padding():
    """Boxes that shrink, enlarge and touch the borders: with valid == full the masked weights
    resample like jax.image (to float rounding)."""
    image = jnp.asarray(_images(10, 1, 36, 3)[0], jnp.float32) / 255.0
    boxes = [[0, 0, 36, 36], [3, 5, 7, 9], [10, 0, 26, 20], [0, 16, 30, 20], [1, 1, 33, 35]]
    for box in boxes:
        box = jnp.asarray(box, jnp.float32)
        plain = _crop_and_resize(image, box, 16)
        masked = _crop_and_resize(image, box, 16, valid=jnp.int32([36, 36]))
        np.testing.assert_allclose(np.asarray(masked), np.asarray(plain), atol=1e-6)


@pytest.mark.parametrize("valid", [(30, 20), (20, 30)])
def test_padding_never_enters_a_view(valid):
    """A constant image padded with a different constant: every crop of the valid region stays
    exactly that constant (up to float rounding), although the antialiasing kernel of small
    output sizes reaches far into the padding. Unmasked, the same boxes do pick up padding."""
    n, out_size = 256, 8  # heavy shrinking: kernels span several source pixels
    source = np.full((30, 30, 3), 255, np.uint8)
    source[: valid[0], : valid[1]] = 64
    keys = _keys(13, n)

    def masked(key, v):
        return augment.random_resized_crop(key, source, out_size, valid=v)

    out = jax.jit(jax.vmap(masked, in_axes=(0, None)))(keys, jnp.int32(valid))
    np.testing.assert_allclose(np.asarray(out), 64 / 255, atol=1e-5)

    def unmasked(key):
        box = augment.sample_crop_box(key, *valid)
        return augment.crop_and_resize(augment.to_float(jnp.asarray(source)), box, out_size)

    leaky = jax.jit(jax.vmap(unmasked))(keys)
    assert np.abs(np.asarray(leaky) - 64 / 255).max() > 0.05


def _numpy_crop_boxes(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """The paper's (Inception / torchvision RandomResizedCrop) sampler in plain NumPy, as an
    independent reference: 10 tries of area U[0.08, 1] and log-uniform aspect [3/4, 4/3], the
    first that fits wins, else the whole image with its aspect clamped, centred."""
    boxes = np.zeros((n, 4))
    for i in range(n):
        for _ in range(10):
            area = height * width * rng.uniform(0.08, 1.0)
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w = int(round(math.sqrt(area * aspect)))
            h = int(round(math.sqrt(area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = rng.integers(0, height - h + 1)
                left = rng.integers(0, width - w + 1)
                boxes[i] = (top, left, h, w)
                break
        else:
            ratio = width / height
            w = int(round(height * 4 / 3)) if ratio > 4 / 3 else width
            h = int(round(width * 4 / 3)) if ratio < 3 / 4 else height
            boxes[i] = ((height - h) // 2, (width - w) // 2, h, w)
    return boxes


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b|."""
    grid = np.union1d(a, b)
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


@pytest.mark.parametrize(("height", "width"), [(300, 200), (200, 300)])
def test_crop_distribution_on_padded_non_square_source(height, width):
    """Boxes drawn inside the valid part of a 300 x 300 padded source follow the paper's
    distribution relative to the valid image (two-sample KS against the NumPy reference, for
    area fraction, aspect ratio and the box centre), stay inside it, and reach all of it."""
    n = 4000
    keys = _keys(17, n)
    valid = jnp.int32([height, width])
    boxes = jax.jit(jax.vmap(lambda k, v: augment.sample_crop_box(k, v[0], v[1]), (0, None)))(
        keys, valid
    )
    top, left, h, w = np.asarray(boxes, np.float64).T
    ref_top, ref_left, ref_h, ref_w = _numpy_crop_boxes(
        np.random.default_rng(5), n, height, width
    ).T

    assert np.all((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1))
    assert np.all(top + h <= height) and np.all(left + w <= width)
    # KS critical value at alpha = 1e-3 for two samples of n: 1.95 * sqrt(2 / n) = 0.044.
    critical = 1.95 * math.sqrt(2 / n)
    stats = {
        "area": (h * w / (height * width), ref_h * ref_w / (height * width)),
        "aspect": (w / h, ref_w / ref_h),
        "centre_y": ((top + h / 2) / height, (ref_top + ref_h / 2) / height),
        "centre_x": ((left + w / 2) / width, (ref_left + ref_w / 2) / width),
    }
    for name, (ours, ref) in stats.items():
        assert _ks_statistic(ours, ref) < critical, name
    # The test has power: the old centre-square crop (boxes relative to a 200 x 200 square)
    # has a clearly different area fraction relative to the whole image.
    side = min(height, width)
    square = _numpy_crop_boxes(np.random.default_rng(6), n, side, side)
    square_area = square[:, 2] * square[:, 3] / (height * width)
    assert _ks_statistic(square_area, stats["area"][1]) > 3 * critical

    covered = np.zeros((height, width), bool)
    for t, x, hh, ww in np.asarray(boxes, np.int64):
        covered[t : t + hh, x : x + ww] = True
    assert covered.all()  # every pixel, corners included, appears in some view
