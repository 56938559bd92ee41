"""On-device, per-example BYOL image augmentations in pure JAX.

The host only decodes images, resizes them to a fixed source size and ships uint8 arrays; every
random transform below runs on the accelerator inside the jitted/pmapped step. Each function works
on one example with its own PRNG key and is written without Python control flow on traced values,
so it can be `jax.vmap`-ed over a batch and `jax.jit`-ed with `out_size` and `params` static.

Pipeline of one view (Grill et al. 2020, appendix B):
    random resized crop -> horizontal flip -> colour jitter (random order) -> grayscale
    -> Gaussian blur -> solarize -> clip to [0, 1].

Design choices:
- Crop boxes are sampled like torchvision's `RandomResizedCrop`: 10 attempts drawn in parallel,
  the first that fits the image wins; if none fits, the central crop of the whole image with its
  aspect ratio clamped to the allowed range is used. The box is traced, so the crop and resize are
  done in one step with `jax.image.scale_and_translate` (Keys bicubic, antialiased when shrinking;
  taps that fall outside the source image are dropped and the rest renormalised).
- Gaussian blur uses reflect padding (mirror without repeating the edge pixel), so a constant
  image is left unchanged and borders do not darken.
- Saturation and hue follow HSV semantics like `tf.image.adjust_saturation/adjust_hue` used by the
  released code (saturation via an equivalent closed form, no HSV round trip); brightness is
  additive and contrast scales around the per-channel mean.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

GRAYSCALE_WEIGHTS: tuple[float, float, float] = (0.2989, 0.5870, 0.1140)
NUM_CROP_ATTEMPTS = 10

# Order of the colour-jitter ops; a permutation of these indices is sampled per example.
JITTER_OPS: tuple[str, ...] = ("brightness", "contrast", "saturation", "hue")

# Names of the per-op sub-keys split from one example key.
_KEY_NAMES: tuple[str, ...] = ("crop", "flip", "jitter", "grayscale", "blur", "solarize")


@dataclasses.dataclass(frozen=True)
class ViewParams:
    """Probabilities and ranges of one view's augmentation."""

    crop_area_range: tuple[float, float] = (0.08, 1.0)
    crop_aspect_range: tuple[float, float] = (3 / 4, 4 / 3)  # sampled log-uniformly
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4  # additive delta U[-b, b]
    contrast: float = 0.4  # factor U[1-c, 1+c] around per-channel mean
    saturation: float = 0.2  # factor U[1-s, 1+s]
    hue: float = 0.1  # hue shift U[-h, h] (fraction of full circle)
    grayscale_prob: float = 0.2
    blur_prob: float = 1.0
    blur_sigma_range: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}={p} is not a probability")
        for name in ("crop_area_range", "crop_aspect_range", "blur_sigma_range"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ValueError(f"{name}={(lo, hi)} must satisfy 0 < lo <= hi")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue={self.hue} must be in [0, 0.5]")


def byol_view_params() -> tuple[ViewParams, ViewParams]:
    """The paper's asymmetric (view1, view2): blur 1.0/0.1, solarize 0.0/0.2, rest equal."""
    return (
        ViewParams(blur_prob=1.0, solarize_prob=0.0),
        ViewParams(blur_prob=0.1, solarize_prob=0.2),
    )


def jitter_params(view: ViewParams, prob: float, strength: float) -> dict[str, float]:
    """``ViewParams`` fields for colour jitter at ``prob``, with ``view``'s four strengths
    scaled by ``strength`` (SimCLR's colour-strength knob; hue stays within [0, 0.5])."""
    return {
        "jitter_prob": float(prob),
        "brightness": view.brightness * strength,
        "contrast": view.contrast * strength,
        "saturation": view.saturation * strength,
        "hue": min(view.hue * strength, 0.5),
    }


# ---------------------------------------------------------------------------------------------
# Keys and random decisions.
# ---------------------------------------------------------------------------------------------


def op_keys(key: jax.Array) -> dict[str, jax.Array]:
    """Independent sub-keys, one per random op, derived from one example's key."""
    return dict(zip(_KEY_NAMES, jax.random.split(key, len(_KEY_NAMES)), strict=True))


def _uniforms(key: jax.Array, n: int) -> jax.Array:
    """n draws from U[0, 1) as one vector (one PRNG call per op).

    Draws a power-of-two count and slices: under vmap, XLA:CPU took several times longer to compile
    threefry for some small sizes (9, 10, 40) than for powers of two (measured with jax 0.10).
    """
    size = 1 << max(n - 1, 0).bit_length()
    return jax.random.uniform(key, (size,))[:n]


def _lerp(u: jax.Array, lo: float, hi: float) -> jax.Array:
    """Map U[0, 1) to U[lo, hi)."""
    return lo + (hi - lo) * u


def sample_view(key: jax.Array, params: ViewParams) -> dict[str, jax.Array]:
    """All per-example random draws of one view except the crop box (which `random_resized_crop`
    draws from `op_keys(key)["crop"]`).

    Returns bool scalars "flip", "jitter", "grayscale", "blur", "solarize" (apply the op or not),
    the jitter arguments of `color_jitter` ("order", "brightness", "contrast", "saturation",
    "hue") and "blur_sigma". `key` is the example key given to `augment_image`, which uses exactly
    these values. Each op draws from its own sub-key: its decision first, then its arguments.
    """
    keys = op_keys(key)
    u_jitter = _uniforms(keys["jitter"], 1 + 2 * len(JITTER_OPS))
    u_blur = _uniforms(keys["blur"], 2)

    def factor(u: jax.Array, strength: float) -> jax.Array:
        return _lerp(u, max(0.0, 1.0 - strength), 1.0 + strength)

    return {
        "flip": _uniforms(keys["flip"], 1)[0] < params.flip_prob,
        "jitter": u_jitter[0] < params.jitter_prob,
        "grayscale": _uniforms(keys["grayscale"], 1)[0] < params.grayscale_prob,
        "blur": u_blur[0] < params.blur_prob,
        "solarize": _uniforms(keys["solarize"], 1)[0] < params.solarize_prob,
        # A uniformly random permutation: the ranks of 4 iid uniforms.
        "order": jnp.argsort(u_jitter[5:9]).astype(jnp.int32),
        "brightness": _lerp(u_jitter[1], -params.brightness, params.brightness),
        "contrast": factor(u_jitter[2], params.contrast),
        "saturation": factor(u_jitter[3], params.saturation),
        "hue": _lerp(u_jitter[4], -params.hue, params.hue),
        "blur_sigma": _lerp(u_blur[1], *params.blur_sigma_range),
    }


def sample_decisions(key: jax.Array, params: ViewParams) -> dict[str, jax.Array]:
    """Whether each optional op is applied to this example (bool scalars).

    `key` is the example key given to `augment_image`; this is the exact decision path it uses.
    """
    draws = sample_view(key, params)
    return {name: draws[name] for name in ("flip", "jitter", "grayscale", "blur", "solarize")}


# ---------------------------------------------------------------------------------------------
# Random resized crop.
# ---------------------------------------------------------------------------------------------


def _fallback_box(
    height: jax.Array, width: jax.Array, aspect_range: tuple[float, float]
) -> jax.Array:
    """torchvision's fallback: whole image, aspect clamped to the range, centred.

    ``height``/``width`` are float32 scalars (possibly traced: the valid part of a padded source).
    """
    in_ratio = width / height
    too_tall, too_wide = in_ratio < aspect_range[0], in_ratio > aspect_range[1]
    w = jnp.where(too_wide, jnp.round(height * aspect_range[1]), width)
    h = jnp.where(too_tall, jnp.round(width / aspect_range[0]), height)
    return jnp.stack([jnp.floor((height - h) / 2), jnp.floor((width - w) / 2), h, w])


def sample_crop_box(
    key: jax.Array,
    height: int | jax.Array,
    width: int | jax.Array,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    num_attempts: int = NUM_CROP_ATTEMPTS,
) -> jax.Array:
    """Crop box (top, left, h, w) in pixels, float32 [4], for a `height` x `width` source.

    Area fraction ~ U[area_range], aspect (w/h) ~ log-U[aspect_range], integer sizes. All attempts
    are drawn at once and the first one that fits is kept, so there is no data-dependent loop.
    `height`/`width` may be traced: the valid (unpadded) size of an image anchored at the top-left
    corner of a padded source, so every box lies inside the valid region. Integer sizes give the
    same boxes as traced ones of equal value (float32 arithmetic on exact integers).
    """
    height = jnp.asarray(height, jnp.float32)
    width = jnp.asarray(width, jnp.float32)
    u = _uniforms(key, 4 * num_attempts).reshape(4, num_attempts)
    area = height * width * _lerp(u[0], *area_range)
    aspect = jnp.exp(_lerp(u[1], math.log(aspect_range[0]), math.log(aspect_range[1])))
    w = jnp.round(jnp.sqrt(area * aspect))
    h = jnp.round(jnp.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # Offsets uniform over the valid integer positions, like randint(0, H - h + 1).
    top = jnp.floor(u[2] * (height - h + 1))
    left = jnp.floor(u[3] * (width - w + 1))
    top = jnp.clip(top, 0, jnp.maximum(height - h, 0))
    left = jnp.clip(left, 0, jnp.maximum(width - w, 0))

    first = jnp.argmax(fits)  # index of the first True (0 if none, masked below)
    box = jnp.stack([top[first], left[first], h[first], w[first]])
    fallback = _fallback_box(height, width, aspect_range)
    return jnp.where(jnp.any(fits), box, fallback).astype(jnp.float32)


def _keys_cubic(x: jax.Array) -> jax.Array:
    """Keys cubic kernel (a = -0.5), the one ``jax.image`` uses for "cubic"."""
    out = ((1.5 * x - 2.5) * x) * x + 1.0
    out = jnp.where(x >= 1.0, ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0, out)
    return jnp.where(x >= 2.0, 0.0, out)


def _masked_weights(
    input_size: int, output_size: int, scale: jax.Array, translation: jax.Array, valid: jax.Array
) -> jax.Array:
    """Antialiased Keys-cubic resampling weights [input_size, output_size] that ignore inputs at
    or beyond `valid` (the padding of a padded source): their taps are dropped and the rest
    renormalised, exactly as `jax.image.scale_and_translate` treats taps outside the array.

    Written out because jax's weights cannot be masked with a traced size: the arithmetic follows
    `jax.image`'s (jax 0.10) step for step, so with `valid == input_size` the weights, hence the
    crops, are bit-identical (tested), and square sources keep their exact views.
    """
    inv_scale = 1.0 / scale
    kernel_scale = jnp.maximum(inv_scale, 1.0)  # widen the kernel when shrinking (antialias)
    sample_f = (
        (jnp.arange(output_size, dtype=jnp.float32) + 0.5) * inv_scale
        - translation * inv_scale
        - 0.5
    )
    indices = jnp.arange(input_size, dtype=jnp.float32)
    weights = _keys_cubic(jnp.abs(sample_f[None, :] - indices[:, None]) / kernel_scale)
    weights = jnp.where(indices[:, None] < valid, weights, 0.0)
    total = jnp.sum(weights, axis=0, keepdims=True)
    eps = 1000.0 * float(jnp.finfo(jnp.float32).eps)
    weights = jnp.where(jnp.abs(total) > eps, weights / jnp.where(total != 0, total, 1), 0.0)
    inside = (sample_f >= -0.5) & (sample_f <= valid - 0.5)
    return jnp.where(inside[None, :], weights, 0.0)


def crop_and_resize(
    image: jax.Array,
    box: jax.Array,
    out_size: int,
    method: str = "cubic",
    valid: jax.Array | None = None,
) -> jax.Array:
    """Resample the (possibly traced) box (top, left, h, w) of float [H, W, C] to out_size^2.

    Uses the inverse warp of `scale_and_translate`, so the crop never materialises with a dynamic
    shape. Not clipped: cubic overshoot is removed by the caller. `valid` (int [2], height and
    width of the image in the top-left corner of a padded source; cubic only) keeps the padding
    out of the result: resampling taps that fall on it are dropped like taps off the array.
    """
    top, left, h, w = box[0], box[1], box[2], box[3]
    scale = jnp.stack([out_size / h, out_size / w])
    translation = jnp.stack([-top * out_size / h, -left * out_size / w])
    if valid is None:
        return jax.image.scale_and_translate(
            image,
            (out_size, out_size, image.shape[-1]),
            spatial_dims=(0, 1),
            scale=scale,
            translation=translation,
            method=method,
            antialias=True,
        )
    if method != "cubic":
        raise ValueError(
            f"crop_and_resize with `valid` supports method='cubic' only, not {method!r}"
        )
    valid = jnp.asarray(valid, jnp.float32)
    rows = _masked_weights(image.shape[0], out_size, scale[0], translation[0], valid[0])
    cols = _masked_weights(image.shape[1], out_size, scale[1], translation[1], valid[1])
    # The same contraction as jax.image's, so unpadded sources give bit-identical crops.
    return jnp.einsum(
        image, [0, 1, 2], rows, [0, 3], cols, [1, 4], [3, 4, 2], precision=lax.Precision.HIGHEST
    )


def to_float(image: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [0, 1]; float inputs are assumed to be in [0, 1] already."""
    if jnp.issubdtype(image.dtype, jnp.integer):
        return image.astype(jnp.float32) / 255.0
    return image.astype(jnp.float32)


def to_rgb(image: jax.Array) -> jax.Array:
    """Broadcast a 1-channel image to 3 channels; 3-channel images pass through."""
    channels = image.shape[-1]
    if channels == 1:
        return jnp.broadcast_to(image, (*image.shape[:-1], 3))
    if channels != 3:
        raise ValueError(f"expected 1 or 3 channels, got {channels}")
    return image


def random_resized_crop(
    key: jax.Array,
    image: jax.Array,
    out_size: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    valid: jax.Array | None = None,
) -> jax.Array:
    """Random resized crop of [H, W, C] (uint8 or float) to float32 [out_size, out_size, C] in
    [0, 1], bicubic. With `valid` (int [2]: the image's height and width in the top-left corner of
    a padded source) the box is sampled relative to, and resampled only from, that region."""
    if valid is None:
        height, width = image.shape[0], image.shape[1]
    else:
        height, width = valid[0], valid[1]
    box = sample_crop_box(key, height, width, area_range, aspect_range)
    # Resize before broadcasting grayscale to RGB: a third of the work.
    return jnp.clip(crop_and_resize(to_float(image), box, out_size, valid=valid), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Colour ops. All take and return float32 [..., 3] in [0, 1].
# ---------------------------------------------------------------------------------------------


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """RGB -> HSV, all components in [0, 1] (same convention as Python's colorsys)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = jnp.max(rgb, axis=-1)
    minc = jnp.min(rgb, axis=-1)
    delta = maxc - minc
    s = jnp.where(maxc > 0, delta / jnp.where(maxc > 0, maxc, 1.0), 0.0)
    safe_delta = jnp.where(delta > 0, delta, 1.0)  # avoid 0/0 for greys
    rc = (maxc - r) / safe_delta
    gc = (maxc - g) / safe_delta
    bc = (maxc - b) / safe_delta
    h = jnp.where(r == maxc, bc - gc, jnp.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.where(delta > 0, jnp.mod(h / 6.0, 1.0), 0.0)
    return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """HSV -> RGB with the branch-free formula c_n = v - v s clip(min(k, 4 - k), 0, 1)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]

    def channel(n: float) -> jax.Array:
        k = jnp.mod(n + 6.0 * h, 6.0)
        return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)

    return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def adjust_brightness(image: jax.Array, delta: jax.Array) -> jax.Array:
    """Add `delta` to every pixel, clip to [0, 1]."""
    return jnp.clip(image + delta, 0.0, 1.0)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Scale deviations from the per-channel spatial mean by `factor`, clip to [0, 1]."""
    mean = jnp.mean(image, axis=(-3, -2), keepdims=True)
    return jnp.clip((image - mean) * factor + mean, 0.0, 1.0)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Multiply HSV saturation by `factor` (clipped to [0, 1]) keeping hue and value.

    Done without an HSV round trip: with h and v fixed every channel is v - v * s * g(h), so
    scaling s by r scales (v - c) by r; clipping s' = min(s * f, 1) gives r = min(f, v / (v - min)).
    """
    v = jnp.max(image, axis=-1, keepdims=True)
    delta = v - jnp.min(image, axis=-1, keepdims=True)
    ratio = jnp.where(delta > 0, jnp.minimum(factor, v / jnp.where(delta > 0, delta, 1.0)), 0.0)
    return jnp.clip(v - (v - image) * ratio, 0.0, 1.0)


def adjust_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
    """Rotate HSV hue by `delta` (fraction of the full circle), clip to [0, 1]."""
    hsv = rgb_to_hsv(image)
    hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + delta, 1.0))
    return jnp.clip(hsv_to_rgb(hsv), 0.0, 1.0)


def color_jitter(
    image: jax.Array,
    order: jax.Array,
    brightness: jax.Array,
    contrast: jax.Array,
    saturation: jax.Array,
    hue: jax.Array,
) -> jax.Array:
    """Apply the four jitter ops in `order` (indices into JITTER_OPS), clipping after each.

    `order` is traced, so each of the 4 stages is a `lax.switch` over the 4 ops (under vmap this
    evaluates all branches and selects; the ops are cheap elementwise maps).
    """
    strengths = (brightness, contrast, saturation, hue)
    branches: tuple[Callable[[jax.Array, tuple[jax.Array, ...]], jax.Array], ...] = (
        lambda x, a: adjust_brightness(x, a[0]),
        lambda x, a: adjust_contrast(x, a[1]),
        lambda x, a: adjust_saturation(x, a[2]),
        lambda x, a: adjust_hue(x, a[3]),
    )
    for stage in range(len(JITTER_OPS)):
        image = lax.switch(order[stage], branches, image, strengths)
    return image


def to_grayscale(image: jax.Array) -> jax.Array:
    """Luma with weights (0.2989, 0.5870, 0.1140), replicated to 3 channels."""
    gray = jnp.tensordot(image, jnp.asarray(GRAYSCALE_WEIGHTS, image.dtype), axes=([-1], [0]))
    return jnp.broadcast_to(gray[..., None], image.shape)


# ---------------------------------------------------------------------------------------------
# Blur and solarize.
# ---------------------------------------------------------------------------------------------


def blur_radius(out_size: int) -> int:
    """Kernel radius floor(size / 20), at least 1 (23 taps at 224 px)."""
    return max(out_size // 20, 1)


def gaussian_kernel(sigma: jax.Array, radius: int) -> jax.Array:
    """Normalised 1-D Gaussian taps at offsets -radius..radius."""
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    taps = jnp.exp(-0.5 * jnp.square(offsets / sigma))
    return taps / jnp.sum(taps)


def _blur_axis(image: jax.Array, kernel: jax.Array, axis: int) -> jax.Array:
    radius = (kernel.shape[0] - 1) // 2
    size = image.shape[axis]
    pad = [(0, 0)] * image.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(image, pad, mode="reflect")
    # Shifted-slice sum: a 1-D convolution that vmaps trivially with a per-example kernel.
    out = jnp.zeros_like(image)
    for t in range(kernel.shape[0]):
        out = out + kernel[t] * lax.slice_in_dim(padded, t, t + size, axis=axis)
    return out


def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian blur of [H, W, C] with reflect padding (2 * radius + 1 taps)."""
    kernel = gaussian_kernel(sigma, radius)
    return _blur_axis(_blur_axis(image, kernel, axis=0), kernel, axis=1)


def solarize(image: jax.Array, threshold: float = 0.5) -> jax.Array:
    """x if x < threshold else 1 - x."""
    return jnp.where(image < threshold, image, 1.0 - image)


# ---------------------------------------------------------------------------------------------
# Full pipelines.
# ---------------------------------------------------------------------------------------------


def augment_image(
    key: jax.Array,
    image: jax.Array,
    out_size: int,
    params: ViewParams,
    valid: jax.Array | None = None,
) -> jax.Array:
    """One example. image: uint8 [H, W, C] with C in {1, 3} (C==1 is broadcast to 3 channels).
    Returns float32 [out_size, out_size, 3] in [0, 1]. Not normalized. `valid` (int [2]): the
    image's size in the top-left corner of a padded source (see `random_resized_crop`)."""
    draws = sample_view(key, params)
    x = random_resized_crop(
        op_keys(key)["crop"],
        image,
        out_size,
        params.crop_area_range,
        params.crop_aspect_range,
        valid=valid,
    )
    x = to_rgb(x)
    x = jnp.where(draws["flip"], x[:, ::-1, :], x)

    # Ops whose probability is statically 0 are skipped at trace time (params is static); the
    # random draws above do not depend on which ops are skipped.
    if params.jitter_prob > 0:
        jittered = color_jitter(
            x,
            draws["order"],
            draws["brightness"],
            draws["contrast"],
            draws["saturation"],
            draws["hue"],
        )
        x = jnp.where(draws["jitter"], jittered, x)
    if params.grayscale_prob > 0:
        x = jnp.where(draws["grayscale"], to_grayscale(x), x)
    if params.blur_prob > 0:
        blurred = gaussian_blur(x, draws["blur_sigma"], blur_radius(out_size))
        x = jnp.where(draws["blur"], blurred, x)
    if params.solarize_prob > 0:
        x = jnp.where(draws["solarize"], solarize(x), x)
    return jnp.clip(x, 0.0, 1.0).astype(jnp.float32)


def augment_batch(
    keys: jax.Array,
    images: jax.Array,
    out_size: int,
    params: ViewParams,
    valid: jax.Array | None = None,
) -> jax.Array:
    """vmap of augment_image over a batch: keys [B] (one key per example, typed or raw), images
    uint8 [B,H,W,C], optional valid int [B, 2] (each image's size inside its padded source)."""
    fn = functools.partial(augment_image, out_size=out_size, params=params)
    if valid is None:
        return jax.vmap(fn)(keys, images)
    return jax.vmap(fn)(keys, images, valid=valid)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """(x - mean) / std per channel."""
    mean_arr = jnp.asarray(mean, dtype=images.dtype)
    std_arr = jnp.asarray(std, dtype=images.dtype)
    return (images - mean_arr) / std_arr


def center_crop_resize(image: jax.Array, out_size: int, crop_fraction: float = 1.0) -> jax.Array:
    """Deterministic eval transform: central crop of crop_fraction of the shorter side, bicubic
    resize to out_size, float32 [0,1], 3 channels. Works on [H,W,C] uint8 (C 1 or 3)."""
    height, width = image.shape[0], image.shape[1]
    side = max(1, int(round(crop_fraction * min(height, width))))
    box = jnp.asarray([(height - side) // 2, (width - side) // 2, side, side], jnp.float32)
    x = jnp.clip(crop_and_resize(to_float(image), box, out_size), 0.0, 1.0)
    return to_rgb(x)


def random_crop_flip(key: jax.Array, image: jax.Array, out_size: int) -> jax.Array:
    """Linear-eval train transform: random resized crop (same ranges as ViewParams defaults) +
    flip, float32 [0,1], 3 channels."""
    k_crop, k_flip = jax.random.split(key)
    defaults = ViewParams()
    x = random_resized_crop(
        k_crop, image, out_size, defaults.crop_area_range, defaults.crop_aspect_range
    )
    x = to_rgb(x)
    flip = _uniforms(k_flip, 1)[0] < defaults.flip_prob
    return jnp.where(flip, x[:, ::-1, :], x)
