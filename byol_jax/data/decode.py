"""Host-side image conversion: bytes or arrays -> uint8 RGB squares of the source size.

Training keeps the whole image: its longer side is resized to the source size S and the square
is zero-padded at the bottom/right, with the valid (height, width) alongside, so the device draws
its random crops from the image only. Evaluation resizes the shorter side to S and centre-crops.

The training decode is built for host speed (it is what bounds images/s per host core):

* JPEGs at least twice S are decoded at 1/2, 1/4 or 1/8 scale in the DCT (``decode_jpeg``'s
  ``ratio``), which skips most of the decoding work and keeps the longer side >= S;
* the final resize is bilinear without antialiasing unless it shrinks by more than 2x (after a
  DCT-scaled decode it never does), the same kind of resize the released BYOL pipeline applies;
* one decoded image may hold at most ``MAX_DECODED_PIXELS``: larger ones (after DCT scaling)
  are refused with an error the stream counts as a bad record instead of exhausting memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from byol_jax.data.errors import DatasetError
from byol_jax.data.tf_env import import_tf

if TYPE_CHECKING:
    import tensorflow as tf

# 64 Mpixel (192 MiB as RGB): a 20000 x 20000 JPEG decodes at 1/8 scale (6.25 Mpixel); a PNG,
# GIF or BMP of that size is refused rather than decoded.
MAX_DECODED_PIXELS = 64 * 2**20
# Below this scale factor the final resize antialiases (only without a DCT-scaled decode).
_ANTIALIAS_BELOW = 0.5


def to_rgb_uint8(image: tf.Tensor, encoded: bool) -> tf.Tensor:
    """Encoded bytes -> uint8 [H, W, 3]; raw uint8 [..., H, W, C] -> uint8 [..., H, W, 3]."""
    tf = import_tf()
    if encoded:
        # channels=3 turns grayscale into RGB and drops alpha; expand_animations=False keeps GIFs
        # as a single frame so every image is rank 3.
        return tf.io.decode_image(image, channels=3, expand_animations=False, dtype=tf.uint8)
    image = tf.convert_to_tensor(image)
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise DatasetError(f"Unsupported image with {channels} channels (need 1, 3 or 4).")
    if image.dtype != tf.uint8:
        image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
    return image


def _guard_pixels(shape: tf.Tensor, what: str) -> tf.Tensor:
    """An assert op (InvalidArgument at run time) for images over ``MAX_DECODED_PIXELS``."""
    tf = import_tf()
    pixels = tf.cast(shape[0], tf.int64) * tf.cast(shape[1], tf.int64)
    return tf.debugging.assert_less_equal(
        pixels,
        tf.constant(MAX_DECODED_PIXELS, tf.int64),
        message=f"{what} image too large to decode (more than {MAX_DECODED_PIXELS} pixels)",
    )


def _header_shape(data: tf.Tensor) -> tf.Tensor:
    """(height, width) of a PNG, GIF or BMP from its header bytes; (0, 0) if unknown."""
    tf = import_tf()

    def field(offset: int, length: int, little_endian: bool) -> tf.Tensor:
        raw = tf.io.decode_raw(tf.strings.substr(data, offset, length), tf.uint8)
        raw = tf.cast(raw, tf.int64)
        weights = 256 ** tf.range(length, dtype=tf.int64)
        return tf.reduce_sum(raw * (weights if little_endian else tf.reverse(weights, [0])))

    size = tf.strings.length(data)
    png = tf.logical_and(size >= 24, tf.strings.substr(data, 0, 4) == b"\x89PNG")
    gif = tf.logical_and(size >= 10, tf.strings.substr(data, 0, 3) == b"GIF")
    bmp = tf.logical_and(size >= 26, tf.strings.substr(data, 0, 2) == b"BM")
    zero = tf.zeros([2], tf.int64)
    return tf.case(
        [
            (png, lambda: tf.stack([field(20, 4, False), field(16, 4, False)])),
            (gif, lambda: tf.stack([field(8, 2, True), field(6, 2, True)])),
            # BMP height is signed (negative: top-down rows); a large value is big either way.
            (bmp, lambda: tf.stack([field(22, 2, True), field(18, 2, True)])),
        ],
        default=lambda: zero,
    )


def decode_for_size(data: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded bytes -> uint8 RGB [H, W, 3], JPEGs DCT-downscaled while the longer side stays
    >= ``size``. Raises (at run time) for undecodable data and for oversized images."""
    tf = import_tf()

    def jpeg() -> tf.Tensor:
        shape = tf.image.extract_jpeg_shape(data)
        longer = tf.reduce_max(shape[:2])
        # Index into ratios (1, 2, 4, 8): the largest whose output keeps the longer side >= size.
        index = tf.add_n([tf.cast(longer >= size * r, tf.int32) for r in (2, 4, 8)])
        ratio = tf.bitwise.left_shift(1, index)
        with tf.control_dependencies([_guard_pixels(shape // ratio, "JPEG")]):
            branches = [
                (lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r)) for r in (1, 2, 4, 8)
            ]
            return tf.switch_case(index, branches)

    def other() -> tf.Tensor:
        with tf.control_dependencies([_guard_pixels(_header_shape(data), "PNG/GIF/BMP")]):
            return tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)

    image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    return tf.ensure_shape(image, [None, None, 3])


def resize_and_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes the shorter side to ``size`` (keeping aspect ratio), then center-crops a square.

    Works on one image [H, W, 3] or a batch of equally sized images [N, H, W, 3].
    """
    tf = import_tf()
    static_h, static_w = image.shape[-3], image.shape[-2]
    out_shape = [*image.shape[:-3], size, size, 3]
    if static_h == size and static_w == size:
        return image  # Already the right size: no resampling, exact pixels.

    def resize() -> tf.Tensor:
        h, w = tf.shape(image)[-3], tf.shape(image)[-2]
        scale = size / tf.cast(tf.minimum(h, w), tf.float32)
        new_h = tf.maximum(size, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
        new_w = tf.maximum(size, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))
        # Antialiasing keeps downscaling (e.g. ImageNet -> 224) free of aliasing.
        resized = tf.image.resize(image, [new_h, new_w], method="bilinear", antialias=True)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        cropped = resized[..., top : top + size, left : left + size, :]
        return tf.cast(tf.clip_by_value(tf.round(cropped), 0.0, 255.0), tf.uint8)

    if static_h is not None and static_w is not None:
        out = resize()
    else:
        h, w = tf.shape(image)[-3], tf.shape(image)[-2]
        out = tf.cond(tf.logical_and(h == size, w == size), lambda: image, resize)
    return tf.ensure_shape(out, out_shape)


def padded_size(height: Any, width: Any, size: int) -> tuple[Any, Any]:
    """(height, width) after resizing the longer side to ``size``: the ``valid`` region."""
    tf = import_tf()
    scale = size / tf.cast(tf.maximum(height, width), tf.float32)

    def side(n: Any) -> Any:
        scaled = tf.cast(tf.round(tf.cast(n, tf.float32) * scale), tf.int32)
        return tf.clip_by_value(scaled, 1, size)

    return side(height), side(width)


def resize_and_pad(image: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Resizes the longer side to ``size`` (keeping aspect ratio) and zero-pads the bottom and
    right to ``size`` x ``size``; returns the image and its valid ``[height, width]`` (int32).

    The whole image is kept, so the device's random resized crop can be drawn from all of it
    (``augment.random_resized_crop`` with ``valid``); the padding never enters a view. Works on one
    image [H, W, 3] or a batch of equally sized images [N, H, W, 3] (one shared valid size).
    Bilinear, antialiased only when shrinking by more than 2x (see the module docstring).
    """
    tf = import_tf()
    static_h, static_w = image.shape[-3], image.shape[-2]
    out_shape = [*image.shape[:-3], size, size, 3]
    full = tf.constant([size, size], tf.int32)
    if static_h == size and static_w == size:
        return image, full  # Already the right size: no resampling, exact pixels.

    def resize() -> tuple[tf.Tensor, tf.Tensor]:
        h, w = tf.shape(image)[-3], tf.shape(image)[-2]
        new_h, new_w = padded_size(h, w, size)
        scale = size / tf.cast(tf.maximum(h, w), tf.float32)

        def plain() -> tf.Tensor:
            return tf.image.resize(image, [new_h, new_w], method="bilinear")

        def smooth() -> tf.Tensor:
            return tf.image.resize(image, [new_h, new_w], method="bilinear", antialias=True)

        resized = tf.cond(scale < _ANTIALIAS_BELOW, smooth, plain)
        resized = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
        padded = tf.image.pad_to_bounding_box(resized, 0, 0, size, size)
        return padded, tf.stack([new_h, new_w])

    if static_h is not None and static_w is not None:
        out, valid = resize()
    else:
        h, w = tf.shape(image)[-3], tf.shape(image)[-2]
        out, valid = tf.cond(tf.logical_and(h == size, w == size), lambda: (image, full), resize)
    return tf.ensure_shape(out, out_shape), tf.ensure_shape(valid, [2])


def train_decode_fn(encoded: bool, size: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Per-example (records, files) or per-batch (in-memory arrays) conversion for training: the
    whole image, padded to a square, plus ``valid`` (int32 [2], or [N, 2] for a batch)."""
    tf = import_tf()

    def decode(ex: dict[str, Any]) -> dict[str, Any]:
        raw = ex["image"]
        image = decode_for_size(raw, size) if encoded else to_rgb_uint8(raw, False)
        image, valid = resize_and_pad(image, size)
        if image.shape.rank == 4:  # A batch of equally sized images shares one valid size.
            valid = tf.tile(valid[None], [tf.shape(image)[0], 1])
        return {**ex, "image": image, "valid": valid}

    return decode


def decode_fn(encoded: bool, size: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Per-example (records) or per-batch (in-memory arrays) resize and centre crop."""

    def decode(ex: dict[str, Any]) -> dict[str, Any]:
        return {**ex, "image": resize_and_crop(to_rgb_uint8(ex["image"], encoded), size)}

    return decode


def pipeline_options(threads: int = 0) -> tf.data.Options:
    """Deterministic order (reproducible batches) with parallel, autotuned host work on
    ``threads`` host threads (0: tf.data's default, one per core)."""
    tf = import_tf()
    options = tf.data.Options()
    if threads > 0:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    options.deterministic = True  # Parallel maps must keep order for reproducible batches.
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    return options


def numpy_batches(ds: tf.data.Dataset, what: str) -> Iterator[dict[str, np.ndarray]]:
    """Iterates a batched dataset as numpy dicts, turning tf errors into DatasetError."""
    tf = import_tf()
    iterator = ds.as_numpy_iterator()
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            message = e.message.strip().splitlines()[0] if e.message.strip() else type(e).__name__
            raise DatasetError(
                f"Reading {what} failed: {message}. If a few records are corrupt, set "
                "data.max_bad_records > 0 to skip (and count) undecodable records."
            ) from e
        yield batch
