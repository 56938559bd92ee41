"""Which ``data.source_size`` for ImageNet: detail kept in small crops vs bytes sent per step.

The host sends every training image at ``source_size`` (longer side, padded to a square); the
device's random resized crop then enlarges a box of 8-100% of the image's area to 224 px. A
small source loses the detail that small crops magnify; a large one costs host-to-device bytes
(``S * S * 3`` per image). This measures both on natural photos:

* "original": each photo resized (antialiased) to a 500 px longer side, the size of most
  ImageNet training images (500 x 375 / 375 x 500);
* for each S, the pipeline's own host step (``data.decode.resize_and_pad``) and the device's
  crop (``augment.crop_and_resize`` with ``valid``) of the same relative boxes, compared with
  the crop taken from the original: PSNR in dB (higher = closer; identical = inf).

Photos come from scikit-image's bundled samples (not a byol_jax dependency), e.g.::

    python -m venv --system-site-packages /tmp/venv && /tmp/venv/bin/pip install scikit-image
    /tmp/venv/bin/python -m byol_jax.bench_source_size
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import augment
from byol_jax.data import decode

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
ORIGINAL_SIDE = 500  # longer side of most ImageNet training images
OUT_SIZE = 224


def _photos() -> list[np.ndarray]:
    try:
        from skimage import data
    except ImportError as e:
        raise SystemExit(
            "needs scikit-image for its sample photos: pip install scikit-image (see docstring)"
        ) from e
    return [getattr(data, name)()[..., :3] for name in PHOTOS]


def _resize_longer(image: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The training pipeline's host step: longer side to ``side``, padded square, valid size."""
    import tensorflow as tf

    padded, valid = decode.resize_and_pad(tf.constant(image), side)
    return padded.numpy(), valid.numpy()


@jax.jit
def _crops(image: jax.Array, valid: jax.Array, boxes: jax.Array) -> jax.Array:
    """Crops of relative boxes (top, left, h, w as fractions of the valid image) to 224 px."""
    scale = jnp.concatenate([valid, valid]).astype(jnp.float32)
    pixels = augment.to_float(image)
    return jax.vmap(lambda b: augment.crop_and_resize(pixels, b * scale, OUT_SIZE, valid=valid))(
        boxes
    )


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="160,192,224,256,288,320,384,448,500")
    parser.add_argument("--areas", default="0.08,0.25,1.0")
    parser.add_argument("--boxes", type=int, default=32, help="random boxes per photo and area")
    parser.add_argument("--batch", type=int, default=4096, help="global batch for bytes/step")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    areas = [float(a) for a in args.areas.split(",")]
    rng = np.random.default_rng(0)
    originals = [_resize_longer(p, ORIGINAL_SIDE) for p in _photos()]

    boxes = {}
    for area in areas:  # square boxes of this area fraction at random positions (relative)
        side = np.sqrt(area)
        corner = rng.uniform(0, 1 - side, (args.boxes, 2)) if side < 1 else np.zeros((1, 2))
        boxes[area] = np.concatenate([corner, np.full_like(corner, side)], 1).astype(np.float32)
    references = {
        (i, a): np.asarray(_crops(img, valid, boxes[a]))
        for i, (img, valid) in enumerate(originals)
        for a in areas
    }

    header = f"{'S':>5} {'MB/step':>8} " + " ".join(f"{'PSNR@' + str(a):>10}" for a in areas)
    print(f"source_size study: {len(PHOTOS)} photos at {ORIGINAL_SIDE} px, crops to {OUT_SIZE}")
    print(header)
    for size in sizes:
        row = []
        for area in areas:
            scores = []
            for i, (img, _) in enumerate(originals):
                small, valid = _resize_longer(img[_valid_rows(originals[i])], size)
                crops = np.asarray(_crops(small, valid, boxes[area]))
                scores.append(_psnr(crops, references[(i, area)]))
            row.append(np.mean(scores))
        mb = size * size * 3 * args.batch / 2**20
        print(f"{size:>5} {mb:>8.0f} " + " ".join(f"{v:>10.2f}" for v in row))


def _valid_rows(original: tuple[np.ndarray, np.ndarray]) -> slice:
    """Rows and columns of the original that hold the photo (drops its padding)."""
    return np.s_[: original[1][0], : original[1][1]]


if __name__ == "__main__":
    main()
