"""Tiny labelled data and encoders shared by the evaluator tests."""

from __future__ import annotations

import jax
import numpy as np

from byol_jax import features, models, parallel
from byol_jax.evaluators.base import EvalData

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def separable_features(n, rng, *, dim=16, classes=5):
    """Labels from a random linear map of the features, with a margin: linearly separable."""
    weights = np.random.default_rng(123).normal(size=(dim, classes))
    x = rng.normal(size=(4 * n, dim)).astype(np.float32)
    scores = np.sort(x @ weights, axis=1)
    x = x[scores[:, -1] - scores[:, -2] > 0.5][:n]  # keep a margin between the top two classes
    return x, np.argmax(x @ weights, axis=1).astype(np.int32)


def coloured_images(n, rng, size=12, classes=4) -> features.LabeledImages:
    """Noisy images whose class is their dominant colour (and brightness): survives crops/flips."""
    labels = rng.integers(0, classes, n).astype(np.int32)
    colour = np.eye(3)[labels % 3] * np.where(labels >= 3, 150, 90)[:, None] + 40
    noise = rng.integers(0, 60, (n, size, size, 3))
    images = np.clip(noise + colour[:, None, None, :], 0, 255).astype(np.uint8)
    return features.LabeledImages(images, labels)


def tiny_encoder(size: int = 8):
    """A resnet_tiny (matmul convolutions) and its initial host variables."""
    encoder = models.build_encoder("resnet_tiny", axis_name=parallel.AXIS_NAME, conv_impl="matmul")
    dummy = np.zeros((1, size, size, 3), np.float32)
    init = jax.jit(lambda key: encoder.init(key, dummy, train=False))
    return encoder, dict(jax.device_get(init(jax.random.key(0))))


def in_memory_data(
    splits: dict[str, features.LabeledImages], *, size: int, classes: int = 4, **options
) -> EvalData:
    """``EvalData`` over named in-memory splits ("train", "test"), read per shard as
    ``input_pipeline.eval_batches`` would (``features.read_arrays``)."""

    def read(name: str, index: int, count: int, batch_size: int):
        images, labels = splits[name]
        return features.read_arrays(images, labels, index, count, batch_size)

    return EvalData(
        read_shard=read,
        num_examples=lambda name: len(splits[name].labels),
        example_bytes=size * size * 3,
        stream_split=lambda name: read(name, jax.process_index(), jax.process_count(), 32),
        train_split="train",
        test_split="test",
        num_classes=classes,
        view=features.View(size, 1.0, MEAN, STD),
        batch_size=32,
        **options,
    )


def local_features(x, y, *, shards: int, rows: int) -> features.LocalFeatures:
    """Host rows as one process's ``LocalFeatures``: ``shards`` shards padded to ``rows`` each."""
    feats, labels, masks = [], [], []
    for part in np.array_split(np.arange(len(y)), shards):
        pad = rows - len(part)
        feats.append(np.pad(x[part], ((0, pad), (0, 0))))
        labels.append(np.pad(y[part], (0, pad), constant_values=-1))
        masks.append(np.arange(rows) < len(part))
    return features.LocalFeatures(
        np.concatenate(feats).astype(np.float32),
        np.concatenate(labels).astype(np.int32),
        np.concatenate(masks),
        rows,
        len(y),
    )
