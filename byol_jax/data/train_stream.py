"""The training stream: infinite, shuffled, resumable per-process batches of uint8 images.

The stream is a pure function of ``(seed, position)`` (plus ``stream_shards`` for streamed tfds
data), so resuming at ``start_step`` only has to jump there, and the global batches do not
depend on the process count:

* random-access sources (in-memory IDX arrays, folders of files) are one global stream,
  permuted per epoch by a stateless ``RandomIndexShuffle`` mapping any position to an example
  in O(1); process ``i`` of ``P`` takes rows ``[i*b, (i+1)*b)`` of every global batch and reads
  only the files behind them;
* streamed tfds data (registered datasets, packed folders) has no random access, so it is cut
  into ``stream_shards`` contiguous shards, each read in a fresh seeded order every epoch (see
  ``shard_stream``); every global batch takes an equal block of rows from every shard and each
  process reads only the shards behind its rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from absl import logging

from byol_jax.data import decode, idx, shard_stream
from byol_jax.data.errors import DatasetError
from byol_jax.data.source import Source, check_common, derive_seed
from byol_jax.data.sources import resolve_source
from byol_jax.data.tf_env import import_tf

if TYPE_CHECKING:
    import tensorflow as tf


def _permuted(pos: tf.Tensor, n_total: int, global_seed: int) -> tf.Tensor:
    """Stream positions -> example indices: a fresh stateless permutation every epoch."""
    tf = import_tf()
    epoch, offset = pos // n_total, pos % n_total
    seeds = tf.stack([tf.ones_like(pos) * global_seed, epoch, tf.zeros_like(pos)], -1)
    # The raw op: tf.random.experimental.index_shuffle mis-pads batched [n, 2] seeds (TF 2.21).
    # A batch may straddle epochs, hence one seed row per position.
    return tf.raw_ops.RandomIndexShuffle(
        index=offset, seed=seeds, max_index=tf.constant(n_total - 1, tf.int64), rounds=4
    )


def _looks_like_an_image(data: tf.Tensor) -> tf.Tensor:
    """Whether ``data`` starts like a JPEG, PNG, GIF or BMP file."""
    tf = import_tf()
    head = tf.strings.substr(data, 0, 4)
    return tf.logical_or(
        tf.reduce_any(tf.strings.substr(head, 0, 3) == [b"\xff\xd8\xff", b"GIF"]),
        tf.reduce_any([head == b"\x89PNG", tf.strings.substr(head, 0, 2) == b"BM"]),
    )


def _random_access_stream(
    source: Source, *, seed: int, start_step: int, batch_size: int, process_index: int,
    process_count: int, source_size: int,
) -> tf.data.Dataset:  # fmt: skip
    """Batches of an in-memory split, or per-example records (with 'position') of a file list."""
    tf = import_tf()
    n_total, global_seed = source.num_examples, derive_seed(seed, 0)
    global_batch = batch_size * process_count

    def positions(step: tf.Tensor) -> tf.Tensor:
        first = step * global_batch + process_index * batch_size
        return first + tf.range(batch_size, dtype=tf.int64)

    steps = tf.data.Dataset.counter(start=start_step)
    if source.kind == "arrays":
        images, labels = tf.constant(source.images), tf.constant(source.labels)

        def gather(pos: tf.Tensor) -> dict[str, tf.Tensor]:
            index = _permuted(pos, n_total, global_seed)
            return {"image": tf.gather(images, index), "label": tf.gather(labels, index)}

        # All images have one size, so gather, convert and resize whole batches at once; IDX
        # images are square: resized whole (no 'valid' needed).
        ds = steps.map(positions).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.map(decode.decode_fn(False, source_size), num_parallel_calls=tf.data.AUTOTUNE)

    paths, labels = tf.constant(source.paths), tf.constant(source.labels)

    def read(pos: tf.Tensor, local: tf.Tensor) -> dict[str, tf.Tensor]:
        index = _permuted(pos, n_total, global_seed)
        path = paths[index]
        image = tf.io.read_file(path)
        # Empty or foreign files fail here, naming the file (decoders do not say which it was).
        check = tf.debugging.Assert(_looks_like_an_image(image), ["not an image file:", path])
        with tf.control_dependencies([check]):
            image = tf.identity(image)
        # 'position' counts this process's records, so the host can count the dropped ones.
        return {"image": image, "label": labels[index], "position": local}

    ds = steps.map(positions).unbatch()
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.counter(start=start_step * batch_size))
    # Parallel reads: one file per element, many in flight (what GCS needs).
    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def train_batches(
    dataset: str,
    split: str,
    *,
    data_dir: str | None,
    batch_size: int,
    source_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    idx_dir: str = idx.DEFAULT_IDX_DIR,
    shuffle_buffer: int = 10_000,
    stream_shards: int = 1,
    max_bad_records: int = 0,
    folder_labels: bool = False,
    workdir: str | None = None,
    host_threads: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite iterator of per-process batches.

    Yields ``{'image': uint8 [batch_size, S, S, 3], 'label': int32 [batch_size]}`` with
    S = ``source_size``; ``batch_size`` is the per-process batch, so the global batch is
    ``batch_size * process_count``. Images are decoded, grayscale is replicated to 3 channels,
    the longer side is resized to S and the bottom/right zero-padded to S x S (skipped when
    already S x S). Unless the dataset's images are statically square (IDX data, tfds features
    of shape (n, n, c)), batches also carry ``'valid'``: int32 [batch_size, 2], the (height,
    width) of each image inside its square, so the device's random resized crop covers the
    whole image and never the padding. Labels are -1 for unlabelled datasets.

    ``start_step=k`` yields exactly the batches a ``start_step=0`` iterator yields from its k-th
    on (exact resume); every epoch is reshuffled with its own derived seed. In-memory (IDX) data
    and folders get a full uniform permutation of the whole split per epoch, and process ``i``
    yields rows ``[i*b, (i+1)*b)`` of each global batch: the concatenation over processes equals
    the single-process stream with the global batch size. tfds data is read as
    ``stream_shards`` fixed contiguous shards, each read in a fresh seeded file order every
    epoch and shuffled with a buffer of ``shuffle_buffer // stream_shards`` records; each global
    batch takes the same number of rows from every shard, and process ``i`` reads only the
    shards behind its rows, so here too the global batches are the same for any process count
    that divides ``stream_shards``.

    ``max_bad_records``: records or files that fail to read or decode are skipped, counted and
    logged, up to this many per process; one more raises ``DatasetError`` (0, the default here,
    fails on the first). ``host_threads`` > 0 caps tf.data's thread pool (0: one per core).
    Skipped records shift the later batches of their process, so exact
    resume only holds for clean data. For 'folder', ``data_dir`` is the folder and ``workdir``
    (if it holds one) supplies the stored file list.

    The data source is resolved and validated eagerly: a missing dataset raises here, not on
    the first ``next()``.
    """
    check_common(batch_size, source_size, process_index, process_count)
    if start_step < 0:
        raise DatasetError(f"start_step must be >= 0, got {start_step}.")
    if shuffle_buffer < 1:
        raise DatasetError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}.")
    tf = import_tf()
    source = resolve_source(
        dataset, split, data_dir, idx_dir, folder_labels=folder_labels, workdir=workdir
    )
    what = f"{source.name} {split} (train)"
    common = dict(
        seed=seed, start_step=start_step, batch_size=batch_size, process_index=process_index,
        process_count=process_count,
    )  # fmt: skip
    if source.kind == "arrays":
        ds = _random_access_stream(source, source_size=source_size, **common)
        ds = ds.with_options(decode.pipeline_options(host_threads)).prefetch(tf.data.AUTOTUNE)
        return decode.numpy_batches(ds, what)
    if source.kind == "files":
        ds = _random_access_stream(source, source_size=source_size, **common)
    else:
        ds = shard_stream.sharded_record_stream(
            source, split, stream_shards=stream_shards, shuffle_buffer=shuffle_buffer, **common
        )
        # Each record carries its stream position, so the host can count the dropped ones.
        ds = ds.enumerate(start=start_step * batch_size).map(
            lambda position, ex: {**ex, "position": position}
        )
    if source.square:  # The whole image already: no padding, batches as before.
        convert = decode.decode_fn(source.encoded_image, source_size)
    else:
        convert = decode.train_decode_fn(source.encoded_image, source_size)
    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    if max_bad_records > 0:
        ds = ds.ignore_errors()
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.with_options(decode.pipeline_options(host_threads)).prefetch(tf.data.AUTOTUNE)
    return _count_bad_records(
        decode.numpy_batches(ds, what), start_step * batch_size, max_bad_records, what
    )


def _count_bad_records(
    batches: Iterator[dict[str, np.ndarray]], start: int, max_bad_records: int, what: str
) -> Iterator[dict[str, np.ndarray]]:
    """Strips the ``position`` field; warns about and caps the records dropped before decoding.

    Records that fail to decode leave gaps in the positions of the records that arrive, so the
    number dropped so far is the last position seen minus the records delivered.
    """
    delivered, reported = 0, 0
    for batch in batches:
        positions = batch.pop("position")
        delivered += len(positions)
        dropped = int(positions[-1]) + 1 - start - delivered
        if dropped > max_bad_records:
            raise DatasetError(
                f"Reading {what}: {dropped} records could not be decoded, more than "
                f"max_bad_records={max_bad_records}. The dataset looks damaged; re-prepare it, "
                "or raise data.max_bad_records to keep skipping."
            )
        if dropped > reported:
            logging.warning(
                "%s: skipped %d undecodable record(s) so far (max_bad_records=%d)",
                what,
                dropped,
                max_bad_records,
            )
            reported = dropped
        yield batch
