"""Streamed tfds records in an order that is resumable and the same for any process count.

A split is cut into ``S = stream_shards`` contiguous shards (``tfds.even_splits``), each an
endless stream with a seed of its own. Every epoch of a shard reads its record files in a fresh
seeded order, each file rotated to start at a seeded record, interleaving up to ``_CYCLE``
files at a time, and then shuffles with a buffer of ``shuffle_buffer // S`` records: neighbours
in one epoch are scattered in the next (before, files were read in one fixed order, so each
epoch repeated nearly the same sequence; see docs/data.md for the measurement). A rotation
reads the skipped head of a file twice: on average half a file more I/O per file and epoch. Sources
whose files cannot be read directly (mocked or non-TFRecord builders) keep the fixed file order
and only the buffer.

Global batch k takes the next ``B/S`` records of every shard, shard s filling rows
``[s*B/S, (s+1)*B/S)``. Process i of P owns shards ``[i*S/P, (i+1)*S/P)``, which are exactly its
rows ``[i*b, (i+1)*b)``: it reads only those files, and the global batches do not depend on P.
A resumed stream starts at the right epoch (each epoch's order depends only on (seed, shard,
epoch)) and skips undecoded records within it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from byol_jax.data.errors import DatasetError
from byol_jax.data.source import Source, derive_seed
from byol_jax.data.tf_env import import_tf
from byol_jax.data.tfds_source import raw_records, shard_splits, tfds_decoders

if TYPE_CHECKING:
    import tensorflow as tf

_CYCLE = 16  # record files read at once within a shard


def check_stream_shards(stream_shards: int, process_count: int, global_batch: int) -> None:
    """Raises ``DatasetError`` unless ``stream_shards`` fits the process count and batch."""
    if stream_shards < 1 or stream_shards % process_count or global_batch % stream_shards:
        raise DatasetError(
            f"data.stream_shards={stream_shards} does not fit this run: streamed tfds data is "
            "read as stream_shards fixed shards, so it must be a positive multiple of the "
            f"process count ({process_count}) and divide the global batch ({global_batch}). "
            "Keep one value for every process count you use: it fixes the data order."
        )


def _file_instructions(source: Source, split: Any) -> list[Any] | None:
    """The (file, skip, take) pieces of ``split`` if its TFRecord files can be read directly."""
    tf = import_tf()
    try:
        if str(source.builder.info.file_format.value) != "tfrecord":
            return None
        pieces = list(source.builder.info.splits[split].file_instructions)
    except Exception:  # noqa: BLE001 - no split metadata (e.g. mocked builders): fall back
        return None
    if not pieces or not all(tf.io.gfile.exists(p.filename) for p in pieces):
        return None
    return pieces


def _epoch_file_reader(source: Source, pieces: list[Any], shard_seed: int):
    """epoch (tensor) -> the shard's records of that epoch, files in a seeded order."""
    tf = import_tf()
    features, decoders = source.builder.info.features, tfds_decoders(source.builder)
    names = tf.constant([p.filename for p in pieces])
    skips = tf.constant([p.skip for p in pieces], tf.int64)
    takes = tf.constant([p.take for p in pieces], tf.int64)
    has_label = source.has_label

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        ex = features.deserialize_example(serialized, decoders=decoders)
        label = tf.cast(ex["label"], tf.int32) if has_label else tf.constant(-1, tf.int32)
        return {"image": ex["image"], "label": label}

    def read(name: tf.Tensor, skip: tf.Tensor, take: tf.Tensor, turn: tf.Tensor):
        # The piece rotated by ``turn`` records: files read side by side no longer stay in
        # lockstep (record i of every file together) from one epoch to the next.
        records = tf.data.TFRecordDataset(name).skip(skip)
        return records.skip(turn).take(take - turn).concatenate(records.take(turn))

    def epoch_records(epoch: tf.Tensor) -> tf.data.Dataset:
        seed = tf.stack([tf.constant(shard_seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(len(pieces)), seed=seed)
        fractions = tf.random.stateless_uniform([len(pieces)], seed=seed + 1)
        turns = tf.cast(fractions * tf.cast(takes, tf.float32), tf.int64)
        files = tf.data.Dataset.from_tensor_slices(
            (tf.gather(names, order), tf.gather(skips, order), tf.gather(takes, order),
             tf.gather(turns, order))
        )  # fmt: skip
        records = files.interleave(
            read,
            cycle_length=min(_CYCLE, len(pieces)),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,  # parallel reads, order kept
            deterministic=True,
        )
        return records.map(parse)

    return epoch_records


def sharded_record_stream(
    source: Source,
    split: str,
    *,
    seed: int,
    start_step: int,
    batch_size: int,
    process_index: int,
    process_count: int,
    stream_shards: int,
    shuffle_buffer: int,
) -> tf.data.Dataset:
    """This process's undecoded records, in the order that makes every global batch P-independent
    (see the module docstring). A process holds ``shuffle_buffer / P`` records in memory."""
    tf = import_tf()
    global_batch = batch_size * process_count
    check_stream_shards(stream_shards, process_count, global_batch)
    rows_per_shard = global_batch // stream_shards
    shards_per_process = stream_shards // process_count
    shard_buffer = max(1, shuffle_buffer // stream_shards)
    if source.num_examples < stream_shards:  # even_splits would leave some shards empty
        raise DatasetError(
            f"Split {split!r} of {source.name!r} has {source.num_examples} examples, fewer "
            f"than data.stream_shards={stream_shards}; use a larger split or fewer shards."
        )
    splits = shard_splits(source, stream_shards)
    # Records of each shard consumed by the first ``start_step`` global batches.
    consumed = start_step * rows_per_shard

    def shard_stream(shard: int) -> tf.data.Dataset:
        records, n_shard = raw_records(source, splits[shard])
        shard_seed = derive_seed(seed, shard)
        first_epoch, offset = divmod(consumed, n_shard)
        pieces = _file_instructions(source, splits[shard])
        read_epoch = _epoch_file_reader(source, pieces, shard_seed) if pieces else None

        def epoch_records(epoch: tf.Tensor) -> tf.data.Dataset:
            # Each epoch's order depends only on (seed, shard, epoch), so a resumed stream
            # starts at the right epoch and skips only within it.
            epoch_seed = tf.constant(shard_seed, tf.int64) * 1_000_003 + epoch
            buffer = min(shard_buffer, n_shard)
            ds = records if read_epoch is None else read_epoch(epoch)
            return ds.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)

        stream = tf.data.Dataset.counter(start=first_epoch).flat_map(epoch_records)
        return stream.skip(offset)  # Undecoded records: cheap.

    first = process_index * shards_per_process
    streams = [shard_stream(s) for s in range(first, first + shards_per_process)]
    if len(streams) == 1:
        return streams[0]
    # Local record j comes from local shard (j // rows_per_shard) mod S/P: blocks of B/S rows.
    choice = tf.data.Dataset.counter().map(lambda j: (j // rows_per_shard) % shards_per_process)
    return tf.data.Dataset.choose_from_datasets(streams, choice)
