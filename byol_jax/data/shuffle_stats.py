"""How well the streamed tfds order mixes: neighbours of one epoch, batch-mates in the next?

    python -m byol_jax.data.shuffle_stats [--examples=8192] [--files=32]

Writes a tfds dataset of tiny images whose label is their index, in ``--files`` record files,
and reads three epochs of the training stream twice: with the fixed file order of before
(``shard_stream`` made to skip its direct file reads) and with today's seeded per-epoch file
order, rotation and interleave. Prints the fraction of pairs adjacent in epoch e that share a
global batch in epoch e+1, next to what a uniform shuffle gives ((B-1)/(N-1)).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from unittest import mock

import numpy as np

from byol_jax.data import shard_stream, train_batches
from byol_jax.data.tf_env import import_tfds


def write_indexed_dataset(data_dir: str, examples: int, files: int) -> str:
    """A tfds dataset 'byol_indexed' in ``files`` files: 2x2 images, label = example index."""
    tfds = import_tfds()

    def generate() -> Iterator[tuple[int, dict]]:
        for i in range(examples):
            yield i, {"image": np.full((2, 2, 3), i % 256, np.uint8), "label": i}

    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(2, 2, 3)),
            "label": tfds.features.ClassLabel(num_classes=examples),
        }
    )
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name="byol_indexed", version="1.0.0", features=features,
        split_datasets={"train": generate()}, data_dir=data_dir,
        download_config=tfds.download.DownloadConfig(num_shards=files), disable_shuffling=True,
    )  # fmt: skip
    return str(builder.data_dir)


def epoch_orders(dataset_dir: str, epochs: int, batch: int, shards: int, buffer: int,
                 before: bool) -> np.ndarray:  # fmt: skip
    """[epochs, N] example indices in global stream order."""
    builder = import_tfds().builder_from_directory(dataset_dir)
    n = builder.info.splits["train"].num_examples
    patch = (
        mock.patch.object(shard_stream, "_file_instructions", return_value=None)
        if before
        else contextlib.nullcontext()
    )
    with patch:  # data.dataset="packed" reads any tfds dataset directory
        stream = train_batches("packed", "train", data_dir=dataset_dir, batch_size=batch,
                               source_size=2, seed=0, stream_shards=shards,
                               shuffle_buffer=buffer)  # fmt: skip
        labels = np.concatenate([next(stream)["label"] for _ in range(epochs * n // batch)])
    return labels[: epochs * n].reshape(epochs, n)


def neighbours_in_one_batch(orders: np.ndarray, batch: int) -> float:
    """Fraction of pairs adjacent in epoch e that fall in one global batch of epoch e+1."""
    hits, total = 0, 0
    for e in range(len(orders) - 1):
        step_next = np.empty(orders.shape[1], np.int64)
        step_next[orders[e + 1]] = np.arange(orders.shape[1]) // batch
        pairs = step_next[orders[e][:-1]] == step_next[orders[e][1:]]
        hits, total = hits + int(pairs.sum()), total + len(pairs)
    return hits / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--buffer", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        path = write_indexed_dataset(data_dir, args.examples, args.files)
        print(
            f"{args.examples} examples in {args.files} files, global batch {args.batch}, "
            f"{args.shards} stream shards, shuffle buffer {args.buffer} "
            f"({args.buffer // args.shards} per shard)"
        )
        uniform = (args.batch - 1) / (args.examples - 1)
        for name, before in (("before: fixed file order", True), ("now", False)):
            orders = epoch_orders(path, 3, args.batch, args.shards, args.buffer, before)
            rate = neighbours_in_one_batch(orders, args.batch)
            print(f"{name:28s} {rate:6.3f} of neighbours share a batch next epoch "
                  f"({rate / uniform:.1f}x a uniform shuffle's {uniform:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
