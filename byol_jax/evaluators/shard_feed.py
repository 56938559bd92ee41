"""Training and test sets of the linear protocol as per-process shards fed to the devices.

A split is cut into ``shards`` virtual shards (``features.SplitShards``); process p of P owns
S/P of them. Global batch t takes B/S examples from every shard, in shard order, so it holds
the same examples in the same positions whatever P is: with the per-example augmentation keys
of ``classifier.represent`` (seed, step, global position) the result does not depend on the
process count. Each epoch, every shard's selected examples are cut into windows of
``shuffle_window`` that are permuted by (seed, epoch, shard, window): a streamed shard then needs
only one window in host memory, and the in-memory path gives the same order.

``Selection`` holds the labels of a whole split (ints only) so that label subsets and held-out
parts are drawn as on one host; ``plan`` sizes the global batch; ``local_batches`` yields this
process's part of every step and ``chunk_to_devices`` lays a run of steps out for the devices.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator

import jax
import numpy as np

from byol_jax import features, parallel
from byol_jax.features import LabeledImages

DEFAULT_SHARDS = 16  # shards of the linear protocol's splits (a multiple of the process count)
DEFAULT_SHUFFLE_WINDOW = 1024  # examples per shard permuted together each epoch


@dataclasses.dataclass
class Source:
    """One owned shard of a training or test set: its real examples in order, in chunks."""

    chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # (inputs, labels)
    labels: Callable[[], np.ndarray]  # all labels of the shard, in order
    shard: int  # global shard index


def image_sources(split: features.SplitShards) -> list[Source]:
    def chunks(shard: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in split.batches(shard):
            keep = np.asarray(batch["mask"], bool)
            yield np.asarray(batch["image"])[keep], np.asarray(batch["label"])[keep]

    return [
        Source(functools.partial(chunks, v), functools.partial(split.labels, v), v)
        for v in split.owned
    ]


def feature_sources(local: features.LocalFeatures, first_shard: int) -> list[Source]:
    sources = []
    for i in range(len(local.labels) // local.shard_rows):
        x, y = local.shard(i)
        sources.append(Source(lambda x=x, y=y: iter([(x, y)]), lambda y=y: y, first_shard + i))
    return sources


def selected(source: Source, keep: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The shard's examples whose position is kept (``keep``: bool per example; None: all)."""
    position = 0
    for inputs, labels in source.chunks():
        if keep is None:
            yield inputs, labels
        else:
            mask = keep[position : position + len(labels)]
            yield inputs[mask], labels[mask]
        position += len(labels)


def _pieces(
    source: Source, keep: np.ndarray, piece: int, seed: int, epoch: int, window: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``piece``-sized parts of one epoch of a shard: windows of its kept examples, permuted."""
    held_x: list[np.ndarray] = []
    held_y: list[np.ndarray] = []
    count, index = 0, 0
    left_x = left_y = None

    def flush(x, y, index):
        order = np.random.default_rng([seed, epoch, source.shard, index]).permutation(len(y))
        return x[order], y[order]

    def emit(x, y):
        nonlocal left_x, left_y
        if left_x is not None:
            x, y = np.concatenate([left_x, x]), np.concatenate([left_y, y])
        whole = len(y) // piece * piece
        for start in range(0, whole, piece):
            yield x[start : start + piece], y[start : start + piece]
        left_x, left_y = x[whole:], y[whole:]

    for inputs, labels in selected(source, keep):
        while len(labels):
            take = min(window - count, len(labels))
            held_x.append(inputs[:take])
            held_y.append(labels[:take])
            inputs, labels, count = inputs[take:], labels[take:], count + take
            if count == window:
                yield from emit(*flush(np.concatenate(held_x), np.concatenate(held_y), index))
                held_x, held_y, count, index = [], [], 0, index + 1
    if count:
        yield from emit(*flush(np.concatenate(held_x), np.concatenate(held_y), index))


def local_batches(
    sources: list[Source],
    keeps: list[np.ndarray],
    piece: int,
    steps: int,
    seed: int,
    epoch: int,
    window: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This process's part of each of an epoch's ``steps`` global batches."""
    streams = [
        _pieces(src, keep, piece, seed, epoch, window)
        for src, keep in zip(sources, keeps, strict=True)
    ]
    for _ in range(steps):
        parts = [next(stream) for stream in streams]
        yield np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def chunk_to_devices(
    local: list[tuple[np.ndarray, np.ndarray]], chunk_steps: int
) -> dict[str, jax.Array]:
    """Local batches of ``chunk_steps`` steps → per-device [chunk, local batch, ...] arrays."""
    devices = parallel.local_device_count()
    valid = np.arange(chunk_steps) < len(local)
    local = local + [local[0]] * (chunk_steps - len(local))  # padding steps, masked by valid
    inputs, labels = np.stack([x for x, _ in local]), np.stack([y for _, y in local])
    k, b = labels.shape

    def layout(x: np.ndarray) -> np.ndarray:
        # [K, B, ...] → [D*K, B/D, ...] so that shard_batch hands device d its [K, B/D] slice
        # of every step (positions d*B/D ... (d+1)*B/D - 1, as global_example_index assumes).
        x = x.reshape(k, devices, b // devices, *x.shape[2:]).swapaxes(0, 1)
        return x.reshape(devices * k, b // devices, *x.shape[3:])

    chunk = {"inputs": layout(inputs), "label": layout(labels.astype(np.int32))}
    sharded = parallel.shard_batch(chunk)
    sharded["valid"] = parallel.shard_batch(np.tile(valid, devices))
    return sharded


@dataclasses.dataclass
class Plan:
    """Global batch, steps per epoch and per-step share of every shard (same on all processes)."""

    batch: int
    piece: int
    steps_per_epoch: int
    shards: int
    window: int
    example_bytes: int = 0  # host bytes of one input (image or feature vector)


def plan(
    keeps: list[np.ndarray], *, batch_size: int, shards: int, window: int, example_bytes: int
) -> Plan:
    """The global batch: a multiple of the shard count and of all devices; no larger than the
    kept examples allow (every step takes batch/shards examples from every shard)."""
    unit = math.lcm(shards, parallel.global_device_count())
    fewest = -parallel.max_over_processes(-min(int(np.sum(k)) for k in keeps))
    batch = min(batch_size, fewest * shards) // unit * unit
    if batch < unit:
        raise ValueError(
            f"a global batch needs a multiple of {unit} examples (shards {shards}, "
            f"{parallel.global_device_count()} devices); the smallest shard has {fewest} "
            f"training examples, so {shards} shards allow at most {fewest * shards}"
        )
    piece = batch // shards
    return Plan(batch, piece, fewest // piece, shards, window, example_bytes)


class Selection:
    """The labels of a whole training split in shard order (ints only: O(N), never images), so
    that label subsets and held-out parts are drawn as on one host, whatever the process count;
    ``local`` cuts a per-example mask of the whole split back to this process's shards."""

    def __init__(self, sources: list[Source]):
        local = [src.labels() for src in sources]
        rows = parallel.max_over_processes(max(len(labels) for labels in local))
        padded = np.full((len(local), rows), -2, np.int32)  # -2: no example (-1: unlabelled)
        for i, labels in enumerate(local):
            padded[i, : len(labels)] = labels
        every = parallel.gather_from_processes(padded).reshape(-1, rows)  # [shards, rows]
        lengths = np.sum(every != -2, axis=1)
        self.labels = every[every != -2]
        starts = np.concatenate([[0], np.cumsum(lengths)])
        self._bounds = [(starts[s.shard], starts[s.shard + 1]) for s in sources]

    def local(self, mask: np.ndarray) -> list[np.ndarray]:
        return [mask[lo:hi] for lo, hi in self._bounds]


def label_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced ``fraction`` of the labelled examples (>= 1 per class).

    Unlabelled examples (label < 0) are never selected.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == cls)
        count = max(1, int(round(fraction * len(members))))
        chosen.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def labelled(labels: np.ndarray, label_fraction: float, seed: int) -> np.ndarray:
    """Bool per example: labelled, and in the class-balanced ``label_fraction`` subset."""
    labels = np.asarray(labels)
    keep = np.zeros(len(labels), bool)
    if label_fraction < 1.0:
        keep[label_subset(labels, label_fraction, seed)] = True
    else:
        keep[labels >= 0] = True
    return keep


def as_shards(split: features.SplitShards | LabeledImages, shards: int) -> features.SplitShards:
    if isinstance(split, features.SplitShards):
        if split.num_shards != shards:
            raise ValueError(
                f"split {split.name!r} is read as {split.num_shards} shards; the linear "
                f"evaluation was configured with shards={shards}"
            )
        return split
    return features.SplitShards.from_arrays(split.images, split.labels, num_shards=shards)


def local_arrays(x: np.ndarray, y: np.ndarray, shards: int) -> features.LocalFeatures:
    """Host arrays (the same on every process) → this process's rows of ``shards`` shards."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    total, rows = len(y), -(-len(y) // shards)
    per_process = shards // jax.process_count()
    first = jax.process_index() * per_process
    feats = np.zeros((per_process * rows, x.shape[1]), np.float32)
    labels = np.full(per_process * rows, -1, np.int32)
    mask = np.zeros(per_process * rows, bool)
    for i in range(per_process):
        lo, hi = (first + i) * total // shards, (first + i + 1) * total // shards
        feats[i * rows : i * rows + hi - lo] = x[lo:hi]
        labels[i * rows : i * rows + hi - lo] = y[lo:hi]
        mask[i * rows : i * rows + hi - lo] = True
    return features.LocalFeatures(feats, labels, mask, rows, total)


def check_shards(shards: int) -> None:
    if shards < 1 or shards % jax.process_count():
        raise ValueError(
            f"shards={shards} must be a positive multiple of the process count "
            f"({jax.process_count()}); the same value on any process count gives the same result"
        )
