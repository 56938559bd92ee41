"""Host decode speed: byol_jax's train decode next to the released BYOL preprocessing.

    python -m byol_jax.data.host_speed [--images=256] [--seconds=6]

Generates ImageNet-like JPEGs (500 x 375, quality 90, textured, ~110 KB) and measures, over
the same bytes, images per CPU second of the process (= images/s per host core, robust to a
busy host; bursts of each method alternate and the median is kept):

* ``released``: the released BYOL pipeline's per-image work, two views each a
  ``sample_distorted_bounding_box`` + ``decode_and_crop_jpeg`` + bicubic resize to 224;
* ``ours (before)``: full decode + antialiased bilinear resize of the longer side to 384 + pad;
* ``ours``: ``decode.decode_for_size`` (DCT-scaled JPEG decode) + ``decode.resize_and_pad``;
* ``ours, folder/packed stream``: ``train_batches`` on those files and on their packed copy,
  the whole stream (reads, permutation, decode, batching) on one host thread.

Then the host cores one chip needs at 40% of its bf16 peak for ResNet-50 BYOL (65 GFLOP per
image, from the preflight), next to the vCPUs its host offers per chip.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import tempfile
import time
from collections.abc import Callable

import numpy as np

from byol_jax.data import decode
from byol_jax.data.tf_env import import_tf

RELEASED = "released (2x decode_and_crop_jpeg + bicubic 224)"
OURS = "ours (DCT-scaled decode, 384)"
SOURCE = 384  # configs/imagenet.py's data.train_source_size
GFLOP_PER_IMAGE = 65.0
UTILISATION = 0.4
# (chip, dense bf16 peak TFLOP/s, host vCPUs per chip): public spec sheets and machine types
# (TPU v4: 240 vCPUs / 4 chips; v5e ct5lp-hightpu-4t: 112 / 4; v5p: 208 / 4;
# H100 a3-highgpu-8g: 208 / 8).
CHIPS = (("TPU v4", 275, 60), ("TPU v5e", 197, 28), ("TPU v5p", 459, 52), ("H100", 989, 26))


def imagenet_like_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """500 x 375 quality-90 JPEGs with smooth shapes and fine texture (~110 KB each)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    for _ in range(count):
        base = np.zeros((375, 500, 3), np.float32)
        for _ in range(6):  # a few soft blobs of colour
            cy, cx, r = rng.uniform(0, 375), rng.uniform(0, 500), rng.uniform(40, 200)
            weight = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
            base += weight * rng.uniform(0, 255, 3)
        # Texture at two scales, so the file size is photo-like.
        # Mostly in luminance: JPEG keeps it at full resolution (chroma is subsampled).
        coarse = rng.normal(0, 40, (188, 250, 1)).repeat(2, 0).repeat(2, 1)[:375, :500]
        base += coarse + rng.normal(0, 36, (375, 500, 1)) + rng.normal(0, 10, base.shape)
        pixels = np.clip(base, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def released_views(data):
    """Two random-crop views as the released BYOL input pipeline makes them (our own code)."""
    tf = import_tf()
    shape = tf.image.extract_jpeg_shape(data)

    def view():
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
            min_object_covered=0.1,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        crop = tf.image.decode_and_crop_jpeg(data, window, channels=3)
        return tf.image.resize(crop, [224, 224], method="bicubic")

    return view(), view()


def ours_before(data):
    tf = import_tf()
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    scale = SOURCE / tf.cast(tf.reduce_max(tf.shape(image)[:2]), tf.float32)
    new = tf.cast(tf.round(tf.cast(tf.shape(image)[:2], tf.float32) * scale), tf.int32)
    resized = tf.image.resize(image, new, method="bilinear", antialias=True)
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return tf.image.pad_to_bounding_box(resized, 0, 0, SOURCE, SOURCE)


def ours(data):
    return decode.resize_and_pad(decode.decode_for_size(data, SOURCE), SOURCE)


def _one_thread_iterator(fn: Callable, images: list[bytes]):
    """``fn`` over ``images`` forever on one host thread (tf.data with a one-thread pool)."""
    tf = import_tf()
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    ds = tf.data.Dataset.from_tensor_slices(images).repeat().map(fn).with_options(options)
    iterator = iter(ds)
    for _ in range(8):  # warm-up: tracing and first allocations
        next(iterator)
    return iterator


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rate(iterator, seconds: float, per_item: Callable = lambda x: 1) -> float:
    """Images per CPU second of this process (all its threads): images/s per core, whatever
    the thread count and however busy the host is."""
    count, start, cpu = 0, time.perf_counter(), _cpu_seconds()
    while time.perf_counter() - start < seconds:
        count += per_item(next(iterator))
    return count / (_cpu_seconds() - cpu)


def interleaved_rates(iterators: dict, seconds: float, rounds: int) -> dict[str, float]:
    """Median rate of each iterator over ``rounds`` alternating bursts, so that load from other
    processes on a shared host hits every method alike."""
    samples: dict[str, list[float]] = {name: [] for name in iterators}
    for _ in range(rounds):
        for name, (iterator, per_item, scale) in iterators.items():
            samples[name].append(_rate(iterator, seconds / rounds, per_item) * scale)
    return {name: float(np.median(values)) for name, values in samples.items()}


def stream_iterators(images: list[bytes], root: str) -> dict:
    """The whole training stream (reads, permutation, decode, batching) from a folder of the
    images and from its packed copy, on one host thread."""
    from byol_jax.data import packed, train_batches

    for i, data in enumerate(images):
        with open(os.path.join(root, "images", f"{i:05d}.JPEG"), "wb") as f:
            f.write(data)
    packed.pack_folder(os.path.join(root, "images"), os.path.join(root, "packed"), num_shards=4)
    out = {}
    for name, dataset, where in (
        ("ours, folder stream", "folder", "images"),
        ("ours, packed stream", "packed", "packed"),
    ):
        batches = train_batches(dataset, "train", data_dir=os.path.join(root, where),
                                batch_size=32, source_size=SOURCE, seed=0,
                                host_threads=1)  # fmt: skip
        next(batches)
        out[name] = (batches, lambda b: len(b["image"]), 1.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=6.0, help="per method")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    images = imagenet_like_jpegs(args.images)
    kb = np.mean([len(b) for b in images]) / 1024
    print(f"{len(images)} JPEGs of 500 x 375, quality 90, mean {kb:.0f} KB; {os.cpu_count()} cores")
    one = (lambda x: 1, 1.0)
    iterators = {
        RELEASED: (_one_thread_iterator(released_views, images), *one),
        "ours before (full decode, antialiased 384)": (
            _one_thread_iterator(ours_before, images), *one),
        OURS: (_one_thread_iterator(ours, images), *one),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "images"))
        iterators.update(stream_iterators(images, root))
        rates = interleaved_rates(iterators, args.seconds * len(iterators), args.rounds)
    released = rates[RELEASED]
    print(f"{'host work per image':48s} {'img/s/core':>10s} {'vs released':>11s}")
    for name, rate in rates.items():
        print(f"{name:48s} {rate:10.0f} {rate / released:10.2f}x")
    ours_rate = rates[OURS]
    print(
        f"\nhost cores per chip at {UTILISATION:.0%} of bf16 peak, "
        f"{GFLOP_PER_IMAGE:.0f} GFLOP/image"
    )
    print(
        f"{'chip':8s} {'img/s':>7s} {'cores (ours)':>12s} {'(released)':>10s} "
        f"{'host vCPU/chip':>14s}"
    )
    for chip, tflops, vcpus in CHIPS:
        need = UTILISATION * tflops * 1e12 / (GFLOP_PER_IMAGE * 1e9)
        print(f"{chip:8s} {need:7.0f} {need / ours_rate:12.1f} {need / released:10.1f} {vcpus:14d}")


if __name__ == "__main__":
    main()
