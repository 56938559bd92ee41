"""What ``config.data`` names, as readers: the training stream, dataset sizes, evaluation splits.

The training loop (``train.py``), ``launch.py`` and the benchmarks read the config; these helpers
turn its ``data`` section (and the batch and seed) into the keyword arguments of ``byol_jax.data``
and into the ``EvalData`` every evaluator draws on. Nothing below this module reads a config.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from byol_jax import data as input_pipeline
from byol_jax import features
from byol_jax.evaluators.base import EvalData


def source_options(data: ml_collections.ConfigDict) -> dict[str, Any]:
    """The keyword arguments of ``config.data`` every data reader takes (``dataset_info``,
    ``train_batches``, ``eval_batches``): where the data is and how folders are labelled."""
    path_dataset = data.dataset in input_pipeline.PATH_DATASETS
    return {
        "data_dir": data.get("folder") if path_dataset else data.data_dir,
        "idx_dir": data.idx_dir,
        "folder_labels": bool(data.get("folder_labels", False)),
    }


def train_dataset_info(
    config: ml_collections.ConfigDict, workdir: str | None = None
) -> input_pipeline.DatasetInfo:
    """Size and classes of the training split named by ``config.data``."""
    data = config.data
    return input_pipeline.dataset_info(
        data.dataset,
        data.train_split,
        source_size=data.source_size,
        workdir=workdir,
        **source_options(data),
    )


def host_train_batches(
    config: ml_collections.ConfigDict, start_step: int = 0, workdir: str | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of the global training batches from ``start_step`` on."""
    data = config.data
    return input_pipeline.train_batches(
        data.dataset,
        data.train_split,
        batch_size=config.batch_size // jax.process_count(),
        source_size=data.train_source_size or data.source_size,
        seed=config.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        shuffle_buffer=data.shuffle_buffer,
        stream_shards=stream_shards(data.stream_shards, config.batch_size, jax.process_count()),
        max_bad_records=data.max_bad_records,
        workdir=workdir,
        **source_options(data),
    )


def train_source_shape(config: ml_collections.ConfigDict) -> tuple[int, bool]:
    """(host image size, whether batches carry per-image ``valid`` sizes) of training.

    Whole-image training (``data.train_source_size`` set, e.g. ImageNet) sends non-square images
    padded to a square with their valid sizes; square datasets send the whole array. Synthetic
    batches (bench, preflight) follow this so they drive the step training compiles.
    """
    data = config.data
    return int(data.train_source_size or data.source_size), bool(data.train_source_size)


MAX_AUTO_STREAM_SHARDS = 64


def stream_shards(requested: int, global_batch: int, process_count: int) -> int:
    """``requested`` if set (> 0); else the largest count <= 64 that divides the global batch
    and is a multiple of the process count (only streamed tfds data uses it).

    The automatic count depends on the batch, not on the process count, wherever possible, so
    the data order stays the same when a run moves between process counts.
    """
    if requested > 0:
        return requested
    for count in range(min(global_batch, MAX_AUTO_STREAM_SHARDS), 0, -1):
        if global_batch % count == 0 and count % process_count == 0:
            return count
    return process_count  # validation guarantees process_count divides the batch


def eval_view(config: ml_collections.ConfigDict) -> features.View:
    """The deterministic evaluation transform of ``config.data``."""
    data = config.data
    return features.View(
        data.image_size, data.eval_crop_fraction, tuple(data.mean), tuple(data.std)
    )


def eval_data(
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    workdir: str | None = None,
    source_size: int | None = None,
    view: features.View | None = None,
) -> EvalData:
    """The data every evaluator draws on: splits of ``config.data`` at the evaluation source
    size, each process reading only its own shards (``features.SplitShards``); shares of at most
    ``features.IN_MEMORY_BYTES`` decoded bytes per process are kept in memory between passes.

    ``workdir``: a run's folder, whose stored file list (folder datasets) evaluation then reads,
    as training does: the same images and class indices, and no process lists the folder again.
    """
    data = config.data
    size = int(source_size or data.source_size)

    def read(split: str, index: int, count: int, batch_size: int) -> Iterator[dict[str, Any]]:
        return input_pipeline.eval_batches(
            data.dataset,
            split,
            batch_size=batch_size,
            source_size=size,
            process_index=index,
            process_count=count,
            workdir=workdir,
            **source_options(data),
        )

    def num_examples(split: str) -> int:
        info = input_pipeline.dataset_info(
            data.dataset, split, source_size=size, workdir=workdir, **source_options(data)
        )
        return info.num_examples

    batch_size = _eval_batch_size(data.eval_batch_size)
    return EvalData(
        read_shard=read,
        num_examples=num_examples,
        example_bytes=size * size * 3,
        stream_split=lambda split: read(
            split, jax.process_index(), jax.process_count(), batch_size
        ),
        train_split=data.train_split,
        test_split=data.eval_split,
        num_classes=num_classes,
        view=view or eval_view(config),
        seed=config.seed,
        batch_size=batch_size,
    )


def _eval_batch_size(requested: int) -> int:
    """Round the eval batch up to a multiple of the local device count."""
    devices = jax.local_device_count()
    return int(np.ceil(requested / devices) * devices)
