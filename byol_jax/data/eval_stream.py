"""The evaluation stream: one unshuffled, padded pass over this process's part of a split."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from byol_jax.data import decode, idx
from byol_jax.data.errors import DatasetError
from byol_jax.data.source import check_common
from byol_jax.data.sources import resolve_source
from byol_jax.data.tf_env import import_tf
from byol_jax.data.tfds_source import raw_records, shard_splits, tfds_num_examples


def eval_batches(
    dataset: str,
    split: str,
    *,
    data_dir: str | None,
    batch_size: int,
    source_size: int,
    process_index: int = 0,
    process_count: int = 1,
    idx_dir: str = idx.DEFAULT_IDX_DIR,
    folder_labels: bool = False,
    workdir: str | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One unshuffled pass over this process's shard, every example exactly once.

    Yields ``{'image': uint8 [B, S, S, 3], 'label': int32 [B], 'mask': bool [B]}``, all batches
    of exactly ``batch_size``; padding examples are zeros with ``mask`` False. Every process
    yields the same number of batches (enough for the largest shard), so multi-process eval
    steps stay in lockstep; processes with a smaller shard get an extra fully-masked batch when
    needed. Images: shorter side resized to S, centre-cropped.
    """
    check_common(batch_size, source_size, process_index, process_count)
    tf = import_tf()
    source = resolve_source(
        dataset, split, data_dir, idx_dir, folder_labels=folder_labels, workdir=workdir
    )

    if source.kind in ("arrays", "files"):
        bounds = [
            idx.even_shard_bounds(0, source.num_examples, i, process_count)
            for i in range(process_count)
        ]
        lo, hi = bounds[process_index]
        n_local, max_local = hi - lo, max(b - a for a, b in bounds)
    else:
        shards = shard_splits(source, process_count)
        ds, n_local = raw_records(source, shards[process_index])
        max_local = max(tfds_num_examples(source.builder, s) for s in shards)
    if max_local == 0:
        raise DatasetError(f"Split {split!r} of {dataset!r} is empty.")
    num_batches = -(-max_local // batch_size)
    num_padding = num_batches * batch_size - n_local

    if source.kind == "arrays":
        # Pad the raw arrays (zeros stay zeros through the resize) and process whole batches.
        pad = [(0, num_padding)]
        examples = {
            "image": np.pad(source.images[lo:hi], pad + [(0, 0)] * 3),
            "label": np.pad(source.labels[lo:hi], pad),
            "mask": np.pad(np.ones(n_local, bool), pad),
        }
        ds = tf.data.Dataset.from_tensor_slices(examples).batch(batch_size, drop_remainder=True)
        ds = ds.map(decode.decode_fn(False, source_size), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        if source.kind == "files":
            files = tf.data.Dataset.from_tensor_slices(
                {"path": source.paths[lo:hi], "label": source.labels[lo:hi]}
            )
            ds = files.map(
                lambda ex: {"image": tf.io.read_file(ex["path"]), "label": ex["label"]},
                num_parallel_calls=tf.data.AUTOTUNE,
            )

        def with_mask(ex: dict[str, Any]) -> dict[str, Any]:
            return {**ex, "mask": tf.constant(True)}

        convert = decode.decode_fn(source.encoded_image, source_size)
        ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE).map(with_mask)
        if num_padding:
            padding = {
                "image": tf.zeros([source_size, source_size, 3], tf.uint8),
                "label": tf.constant(0, tf.int32),
                "mask": tf.constant(False),
            }
            ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
        ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.with_options(decode.pipeline_options()).prefetch(tf.data.AUTOTUNE)
    return decode.numpy_batches(ds, f"{source.name} {split} (eval)")
