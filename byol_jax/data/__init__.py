"""The data layer: host-side, deterministic, resumable, per-process image batches.

tf.data only reads, decodes, resizes and batches images on the host CPU; all augmentation
happens on the accelerator in JAX. Modules, imported one way (left may import right):

    train_stream, eval_stream -> shard_stream -> sources -> folder, packed, tfds_source, idx
                                                          -> decode, source, tf_env, errors

* ``sources``: which backend serves (dataset, split); ``prepare_dataset`` (write-once work);
* ``tfds_source`` (registered tfds datasets), ``idx`` (offline IDX files), ``folder`` (folders
  of images, their labels and stored file list), ``packed`` (folders packed into tfds shards);
* ``train_stream`` (infinite shuffled batches), ``shard_stream`` (streamed tfds order),
  ``eval_stream`` (one padded pass), ``decode`` (bytes/arrays -> uint8 RGB squares).

The names below are the public API; other modules import ``byol_jax.data`` only.
"""

from byol_jax.data.errors import DatasetError
from byol_jax.data.eval_stream import eval_batches
from byol_jax.data.idx import DEFAULT_IDX_DIR, read_idx
from byol_jax.data.packed import packed_dir
from byol_jax.data.source import DatasetInfo
from byol_jax.data.sources import (
    PATH_DATASETS,
    dataset_info,
    is_known_dataset,
    prepare_dataset,
)
from byol_jax.data.train_stream import train_batches

__all__ = [
    "DEFAULT_IDX_DIR",
    "PATH_DATASETS",
    "DatasetError",
    "DatasetInfo",
    "dataset_info",
    "eval_batches",
    "is_known_dataset",
    "packed_dir",
    "prepare_dataset",
    "read_idx",
    "train_batches",
]
