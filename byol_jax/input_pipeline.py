"""Host-side input pipeline: deterministic, resumable, per-process image batches.

tf.data is used only to read, decode, resize and batch images on the host CPU; all augmentation
happens on the accelerator in JAX. Every iterator yields plain numpy dicts:

* ``train_batches``: infinite, shuffled, ``{'image': uint8 [B, S, S, 3], 'label': int32 [B]}``
  plus, for datasets whose images are not all square (e.g. ImageNet), ``'valid': int32 [B, 2]``:
  the whole image, longer side resized to S and zero-padded at the bottom/right to a square,
  with its valid (height, width); the device draws its random crops from that region only.
  Datasets of square images (Fashion-MNIST, CIFAR) are resized whole, exactly as before.
* ``eval_batches``: one pass, unshuffled, padded; shorter side resized to S and centre-cropped
  to a square (the standard resize/centre-crop evaluation); adds ``'mask'`` (bool [B]).

Data sources, tried in this order:

1. TensorFlow Datasets (``tfds.builder(name, data_dir=...)``) when the dataset is prepared.
2. Offline IDX files for ``fashion_mnist`` (Debian package ``dataset-fashion-mnist``) or ``mnist``
   (only with an explicit ``idx_dir``), read by ``idx_data``.
3. ``builder.download_and_prepare()``; if that fails (e.g. no network) a ``DatasetError`` explains
   how to obtain the data.

Determinism and exact resume: the training stream is a pure function of ``(seed, position)``
(plus ``stream_shards`` for streamed tfds data) and every epoch is shuffled with its own seed.
Resuming at ``start_step`` therefore only has to jump there. In-memory (IDX) data is one global
stream, permuted per epoch by a stateless ``RandomIndexShuffle`` that maps any position to an
example in O(1); process ``i`` of ``P`` takes rows ``[i*b, (i+1)*b)`` of every global batch, so
the global batches are identical for any process count. Streamed tfds data has no random
access, so it is cut into a fixed number of contiguous shards (``data.stream_shards``), each a
seeded, buffer-shuffled stream; every global batch takes an equal block of rows from every shard,
and each process reads only the shards behind its own rows. The global batches are again the
same for any process count dividing the shard count, and a resumed stream skips at most one epoch
of undecoded records per shard (images are decoded after the skip).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import logging

from byol_jax import idx_data
from byol_jax.data_errors import DatasetError
from byol_jax.idx_data import DEFAULT_IDX_DIR, read_idx

if TYPE_CHECKING:  # Heavy imports stay lazy so importing this module is cheap.
    import tensorflow as tf

__all__ = [
    "DEFAULT_IDX_DIR",
    "DatasetError",
    "DatasetInfo",
    "dataset_info",
    "eval_batches",
    "is_known_dataset",
    "read_idx",
    "train_batches",
]

# Shown when a dataset name is unknown; the full list comes from tfds.list_builders().
_EXAMPLE_DATASETS = (
    "imagenet2012, imagenette, cifar10, cifar100, stl10, fashion_mnist, mnist, "
    "food101, oxford_flowers102, caltech_birds2011"
)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset split, as seen by the training loop."""

    name: str
    num_examples: int  # of the requested split (whole split, all processes)
    num_classes: int  # 0 if no labels
    source_shape: tuple[int, int, int]  # (S, S, 3) as yielded


# --------------------------------------------------------------------------------------------
# Lazy TensorFlow setup.
# --------------------------------------------------------------------------------------------


_accelerators_hidden = False


def _hide_accelerators_from_tf() -> None:
    """Keeps TensorFlow off GPUs/TPUs so it never competes with JAX for accelerator memory."""
    global _accelerators_hidden
    if _accelerators_hidden:
        return
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        # RuntimeError: TF devices were already initialised (by someone else), too late to
        # change; ValueError: this TF build does not know the device type.
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.set_visible_devices([], kind)
    _accelerators_hidden = True


def _import_tf() -> Any:
    _hide_accelerators_from_tf()
    import tensorflow as tf

    return tf


def _import_tfds() -> Any:
    _hide_accelerators_from_tf()
    import tensorflow_datasets as tfds

    return tfds


# --------------------------------------------------------------------------------------------
# Source resolution: which backend serves (dataset, split).
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Source:
    name: str
    num_examples: int
    num_classes: int
    # 'arrays' (in-memory IDX data) or 'tfds'.
    kind: str
    # kind == 'arrays': the whole requested split.
    images: np.ndarray | None = None  # uint8 [N, H, W, C]
    labels: np.ndarray | None = None  # int32 [N]
    # kind == 'tfds'.
    builder: Any = None
    split: str = ""
    encoded_image: bool = True
    has_label: bool = True
    # Every image is square (IDX data; tfds features with a static square shape): training
    # batches then keep today's format, whole square images with no 'valid' sizes.
    square: bool = True


def _base_name(dataset: str) -> str:
    """'imagenet2012_subset/1pct:5.0.0' -> 'imagenet2012_subset'."""
    return dataset.split("/")[0].split(":")[0].strip()


def is_known_dataset(dataset: str) -> bool:
    """Whether ``dataset`` names a tfds builder (configs/versions allowed: 'name/config:1.0.0')."""
    tfds = _import_tfds()
    try:
        known = tfds.list_builders(with_community_datasets=False)
    except TypeError:  # Older tfds without the keyword.
        known = tfds.list_builders()
    return bool(dataset) and _base_name(dataset) in set(known)


def _check_known_dataset(dataset: str) -> None:
    if not is_known_dataset(dataset):
        raise DatasetError(
            f"Unknown dataset {dataset!r}. Use a TensorFlow Datasets name, e.g. "
            f"{_EXAMPLE_DATASETS} (full list: `tfds.list_builders()`)."
        )


def _missing_data_error(dataset: str, data_dir: str | None, idx_dir: str, cause: str) -> str:
    base = _base_name(dataset)
    where = data_dir or "~/tensorflow_datasets (the tfds default)"
    lines = [f"Dataset {dataset!r} is not available offline and could not be prepared ({cause})."]
    if base == "fashion_mnist":
        lines.append(
            f"* Offline: `apt-get install dataset-fashion-mnist` (installs the IDX files into "
            f"{DEFAULT_IDX_DIR}) or point idx_dir at a directory with the 4 Fashion-MNIST "
            f"*-ubyte.gz files (looked in {idx_dir!r})."
        )
    elif base == "mnist":
        lines.append(
            "* Offline: point idx_dir at a directory with the 4 MNIST files "
            f"train-images-idx3-ubyte.gz, ... (looked in {idx_dir!r})."
        )
    if base.startswith("imagenet2012"):
        lines.append(
            "* ImageNet needs a manual download: get ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar from https://image-net.org, put them in "
            f"{where}/downloads/manual/, then run `tfds build {base} --data_dir={where}`."
        )
    else:
        lines.append(
            f"* Prepare it with tfds on a machine with internet access: "
            f"`tfds build {base} --data_dir=DIR`, copy DIR here and set "
            f"--config.data.data_dir=DIR (currently {where})."
        )
    return "\n".join(lines)


def _tfds_num_examples(builder: Any, split: Any) -> int:
    """Examples in ``split`` from metadata, or by cardinality when metadata lacks split info."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, AssertionError, TypeError):
        pass  # e.g. mocked builders have no split metadata.
    ds = builder.as_dataset(split=split, decoders=_tfds_decoders(builder), shuffle_files=False)
    n = int(ds.cardinality())
    if n < 0:  # Unknown: count records (undecoded, so this only reads bytes).
        n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    return n


def _tfds_decoders(builder: Any) -> dict[str, Any] | None:
    tfds = _import_tfds()
    if isinstance(builder.info.features["image"], tfds.features.Image):
        # Decode ourselves, after any resume-skip, so skipped records cost no decoding.
        return {"image": tfds.decode.SkipDecoding()}
    return None


def _check_features(dataset: str, image: Any, label: Any) -> None:
    """Refuse image/label features the pipeline cannot turn into uint8 RGB images and int labels.

    Checked from the dataset's metadata, so a custom dataset with the wrong layout fails before
    any record is read, with what was found and what is allowed.
    """
    shape, dtype = tuple(image.shape), np.dtype(image.np_dtype)
    if dtype != np.uint8:
        raise DatasetError(
            f"Dataset {dataset!r}: the 'image' feature has dtype {dtype}; byol_jax needs uint8 "
            "images with values 0-255 (scale and cast float or 16-bit images when building it)."
        )
    if len(shape) != 3 or shape[-1] not in (1, 3, 4, None):
        raise DatasetError(
            f"Dataset {dataset!r}: the 'image' feature has shape {shape}; byol_jax needs "
            "(height, width, channels) with 1, 3 or 4 channels."
        )
    if label is not None and (
        tuple(label.shape) != () or not np.issubdtype(np.dtype(label.np_dtype), np.integer)
    ):
        raise DatasetError(
            f"Dataset {dataset!r}: the 'label' feature has shape {tuple(label.shape)} and dtype "
            f"{np.dtype(label.np_dtype)}; byol_jax needs one integer class per image (or no "
            "'label' feature for unlabelled data)."
        )


def _statically_square(shape: Any) -> bool:
    """Whether an image feature of this (height, width, channels) shape is always square."""
    height, width = tuple(shape)[:2]
    return height is not None and height == width


def _tfds_source(builder: Any, dataset: str, split: str) -> _Source:
    tfds = _import_tfds()
    features = builder.info.features
    if "image" not in features:
        raise DatasetError(
            f"Dataset {dataset!r} has no 'image' feature (features: {list(features)}); "
            "byol_jax needs an image dataset."
        )
    # FeaturesDict has no .get().
    label = features["label"] if "label" in features else None  # noqa: SIM401
    _check_features(dataset, features["image"], label)
    num_classes = int(getattr(label, "num_classes", 0) or 0) if label is not None else 0
    try:
        num_examples = _tfds_num_examples(builder, split)
    except Exception as e:  # tfds raises assorted errors for bad split strings.
        available = list(builder.info.splits) or "unknown"
        raise DatasetError(
            f"Invalid split {split!r} for {dataset!r}: {e}. Available splits: {available}; "
            "slices like 'train[:10%]' or 'train[1000:]' are allowed."
        ) from e
    if num_examples <= 0:
        raise DatasetError(f"Split {split!r} of {dataset!r} is empty.")
    return _Source(
        name=dataset,
        num_examples=num_examples,
        num_classes=num_classes,
        kind="tfds",
        builder=builder,
        split=split,
        encoded_image=isinstance(features["image"], tfds.features.Image),
        has_label=label is not None,
        square=_statically_square(features["image"].shape),
    )


def _idx_source(dataset: str, split: str, files: dict[str, tuple[str, str]]) -> _Source:
    sizes = {name: idx_data.idx_num_examples(images) for name, (images, _) in files.items()}
    name, start, end = idx_data.resolve_slice(split, sizes)
    if end <= start:
        raise DatasetError(f"Split {split!r} of {dataset!r} selects no examples.")
    images, labels = idx_data.load_idx_split(*files[name])
    return _Source(
        name=dataset,
        num_examples=end - start,
        num_classes=idx_data.IDX_NUM_CLASSES,
        kind="arrays",
        images=images[start:end],
        labels=labels[start:end],
    )


def _resolve_source(dataset: str, split: str, data_dir: str | None, idx_dir: str) -> _Source:
    tfds = _import_tfds()
    _check_known_dataset(dataset)
    data_dir = data_dir or None  # An empty config string means the tfds default.
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except Exception as e:  # Bad config/version strings, unreadable data_dir, ...
        raise DatasetError(f"Cannot create tfds builder for {dataset!r}: {e}") from e

    # 1. Already prepared tfds data wins.
    if builder.is_prepared():
        return _tfds_source(builder, dataset, split)
    # 2. Offline IDX files: preferred over a download attempt, which may hang without network.
    files = idx_data.find_idx_files(_base_name(dataset), idx_dir)
    if files is not None:
        return _idx_source(dataset, split, files)
    # 3. Try to prepare it (works with network access, or a filled manual_dir).
    try:
        builder.download_and_prepare()
    except Exception as e:
        cause = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        raise DatasetError(_missing_data_error(dataset, data_dir, idx_dir, cause)) from e
    return _tfds_source(builder, dataset, split)


# --------------------------------------------------------------------------------------------
# tf.data building blocks.
# --------------------------------------------------------------------------------------------


def _check_common(batch_size: int, source_size: int, process_index: int, process_count: int):
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1, got {batch_size}.")
    if source_size < 1:
        raise DatasetError(f"source_size must be >= 1, got {source_size}.")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DatasetError(
            f"Need 0 <= process_index < process_count, got {process_index}, {process_count}."
        )


def _derive_seed(seed: int, process_index: int) -> int:
    """A 31-bit seed from (seed, process_index); small enough to mix with epochs in int64."""
    state = np.random.SeedSequence([seed % 2**63, process_index]).generate_state(1)[0]
    return int(state) & 0x7FFFFFFF


def _shard_splits(source: _Source, count: int) -> list[Any]:
    """``source.split`` cut into ``count`` contiguous, near-equal parts (``tfds.even_splits``)."""
    return [source.split] if count == 1 else _import_tfds().even_splits(source.split, n=count)


def _raw_records(source: _Source, split: Any) -> tuple[tf.data.Dataset, int]:
    """One (sub)split of a tfds source: undecoded {'image', 'label': int32} records, and size."""
    tf = _import_tf()
    n_local = _tfds_num_examples(source.builder, split)
    ds = source.builder.as_dataset(
        split=split,
        decoders=_tfds_decoders(source.builder),
        shuffle_files=False,  # File order must be reproducible; shuffling happens below.
    )
    has_label = source.has_label

    def select(ex: dict[str, Any]) -> dict[str, Any]:
        label = tf.cast(ex["label"], tf.int32) if has_label else tf.constant(-1, tf.int32)
        return {"image": ex["image"], "label": label}

    return ds.map(select), n_local


def _to_rgb_uint8(image: tf.Tensor, encoded: bool) -> tf.Tensor:
    """Encoded bytes -> uint8 [H, W, 3]; raw uint8 [..., H, W, C] -> uint8 [..., H, W, 3]."""
    tf = _import_tf()
    if encoded:
        # channels=3 turns grayscale into RGB and drops alpha; expand_animations=False keeps GIFs
        # as a single frame so every image is rank 3.
        return tf.io.decode_image(image, channels=3, expand_animations=False, dtype=tf.uint8)
    image = tf.convert_to_tensor(image)
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise DatasetError(f"Unsupported image with {channels} channels (need 1, 3 or 4).")
    if image.dtype != tf.uint8:
        image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
    return image


def _resize_and_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes the shorter side to ``size`` (keeping aspect ratio), then center-crops a square.

    Works on one image [H, W, 3] or a batch of equally sized images [N, H, W, 3].
    """
    tf = _import_tf()
    static_h, static_w = image.shape[-3], image.shape[-2]
    out_shape = [*image.shape[:-3], size, size, 3]
    if static_h == size and static_w == size:
        return image  # Already the right size: no resampling, exact pixels.

    def resize() -> tf.Tensor:
        h, w = tf.shape(image)[-3], tf.shape(image)[-2]
        scale = size / tf.cast(tf.minimum(h, w), tf.float32)
        new_h = tf.maximum(size, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
        new_w = tf.maximum(size, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))
        # Antialiasing keeps downscaling (e.g. ImageNet -> 224) free of aliasing.
        resized = tf.image.resize(image, [new_h, new_w], method="bilinear", antialias=True)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        cropped = resized[..., top : top + size, left : left + size, :]
        return tf.cast(tf.clip_by_value(tf.round(cropped), 0.0, 255.0), tf.uint8)

    if static_h is not None and static_w is not None:
        out = resize()
    else:
        h, w = tf.shape(image)[-3], tf.shape(image)[-2]
        out = tf.cond(tf.logical_and(h == size, w == size), lambda: image, resize)
    return tf.ensure_shape(out, out_shape)


def _resize_and_pad(image: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Resizes the longer side to ``size`` (keeping aspect ratio) and zero-pads the bottom and
    right to ``size`` x ``size``; returns the image and its valid ``[height, width]`` (int32).

    The whole image is kept, so the device's random resized crop can be drawn from all of it
    (``augment.random_resized_crop`` with ``valid``); the padding never enters a view. Works on one
    image [H, W, 3] or a batch of equally sized images [N, H, W, 3] (one shared valid size).
    Square images end up exactly as ``_resize_and_crop`` leaves them.
    """
    tf = _import_tf()
    static_h, static_w = image.shape[-3], image.shape[-2]
    out_shape = [*image.shape[:-3], size, size, 3]
    full = tf.constant([size, size], tf.int32)
    if static_h == size and static_w == size:
        return image, full  # Already the right size: no resampling, exact pixels.

    def resize() -> tuple[tf.Tensor, tf.Tensor]:
        h, w = tf.shape(image)[-3], tf.shape(image)[-2]
        scale = size / tf.cast(tf.maximum(h, w), tf.float32)
        new_h = tf.clip_by_value(
            tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32), 1, size
        )
        new_w = tf.clip_by_value(
            tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32), 1, size
        )
        # Antialiasing keeps downscaling (e.g. ImageNet -> source_size) free of aliasing.
        resized = tf.image.resize(image, [new_h, new_w], method="bilinear", antialias=True)
        resized = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
        padded = tf.image.pad_to_bounding_box(resized, 0, 0, size, size)
        return padded, tf.stack([new_h, new_w])

    if static_h is not None and static_w is not None:
        out, valid = resize()
    else:
        h, w = tf.shape(image)[-3], tf.shape(image)[-2]
        out, valid = tf.cond(tf.logical_and(h == size, w == size), lambda: (image, full), resize)
    return tf.ensure_shape(out, out_shape), tf.ensure_shape(valid, [2])


def _train_decode_fn(encoded: bool, size: int):
    """Per-example (tfds records) or per-batch (in-memory arrays) conversion for training: the
    whole image, padded to a square, plus ``valid`` (int32 [2], or [N, 2] for a batch)."""
    tf = _import_tf()

    def decode(ex: dict[str, Any]) -> dict[str, Any]:
        image, valid = _resize_and_pad(_to_rgb_uint8(ex["image"], encoded), size)
        if image.shape.rank == 4:  # A batch of equally sized images shares one valid size.
            valid = tf.tile(valid[None], [tf.shape(image)[0], 1])
        return {**ex, "image": image, "valid": valid}

    return decode


def _decode_fn(encoded: bool, size: int):
    """Per-example (tfds records) or per-batch (in-memory arrays) image conversion."""

    def decode(ex: dict[str, Any]) -> dict[str, Any]:
        return {**ex, "image": _resize_and_crop(_to_rgb_uint8(ex["image"], encoded), size)}

    return decode


def _deterministic_options() -> tf.data.Options:
    tf = _import_tf()
    options = tf.data.Options()
    options.deterministic = True  # Parallel maps must keep order for reproducible batches.
    return options


def _numpy_batches(ds: tf.data.Dataset, what: str) -> Iterator[dict[str, np.ndarray]]:
    """Iterates a batched dataset as numpy dicts, turning tf errors into DatasetError."""
    tf = _import_tf()
    iterator = ds.as_numpy_iterator()
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            raise DatasetError(
                f"Reading {what} failed: {e.message.strip()}. If a few records are corrupt, "
                "Set data.max_bad_records > 0 to skip (and count) undecodable records."
            ) from e
        yield batch


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


def dataset_info(
    dataset: str,
    split: str,
    *,
    data_dir: str | None,
    source_size: int,
    idx_dir: str = DEFAULT_IDX_DIR,
) -> DatasetInfo:
    """Describes ``split`` of ``dataset`` (whole split, all processes) without reading images."""
    source = _resolve_source(dataset, split, data_dir, idx_dir)
    return DatasetInfo(
        name=dataset,
        num_examples=source.num_examples,
        num_classes=source.num_classes,
        source_shape=(source_size, source_size, 3),
    )


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
    idx_dir: str = DEFAULT_IDX_DIR,
    shuffle_buffer: int = 10_000,
    stream_shards: int = 1,
    max_bad_records: int = 0,
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
    gets a full uniform permutation of the whole split per epoch, and process ``i`` yields rows
    ``[i*b, (i+1)*b)`` of each global batch: the concatenation over processes equals the
    single-process stream with the global batch size. tfds data is read as ``stream_shards``
    fixed contiguous shards (``tfds.even_splits``), each shuffled with a buffer of
    ``shuffle_buffer // stream_shards`` records (files are always read in the same order); each
    global batch takes the same number of rows from every shard, and process ``i`` reads only
    the shards behind its rows, so here too the global batches are the same for any process
    count that divides ``stream_shards`` (see ``_sharded_record_stream``).

    ``max_bad_records``: records that fail to decode are skipped, counted and logged, up to this
    many per process; one more raises ``DatasetError`` (0, the default here, fails on the first).
    Skipped records shift the later batches, so exact resume only holds for clean data.

    The data source is resolved and validated eagerly: a missing dataset raises here, not on
    the first ``next()``.
    """
    _check_common(batch_size, source_size, process_index, process_count)
    if start_step < 0:
        raise DatasetError(f"start_step must be >= 0, got {start_step}.")
    if shuffle_buffer < 1:
        raise DatasetError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}.")
    tf = _import_tf()
    source = _resolve_source(dataset, split, data_dir, idx_dir)

    if source.kind == "arrays":
        # One global stream over the whole split, shuffled per epoch with a seed that does not
        # depend on the process: global batch k is stream positions [k*B, (k+1)*B) and process
        # i takes rows [i*b, (i+1)*b) of it. The global batches (hence the trained weights) are
        # the same for any process count; each process reads disjoint rows of every batch.
        n_total = source.num_examples
        global_seed = _derive_seed(seed, 0)
        global_batch = batch_size * process_count
        images = tf.constant(source.images)
        labels = tf.constant(source.labels)

        def positions(step: tf.Tensor) -> tf.Tensor:
            first = step * global_batch + process_index * batch_size
            return first + tf.range(batch_size, dtype=tf.int64)

        def lookup(pos: tf.Tensor) -> dict[str, tf.Tensor]:
            # Stateless permutation per epoch: stream position -> example index in O(1), so
            # resuming at any step needs no skipping at all.
            epoch, offset = pos // n_total, pos % n_total
            seeds = tf.stack([tf.ones_like(pos) * global_seed, epoch, tf.zeros_like(pos)], 1)
            # The raw op: tf.random.experimental.index_shuffle mis-pads batched [n, 2] seeds
            # (TF 2.21). A batch may straddle epochs, hence one seed row per position.
            idx = tf.raw_ops.RandomIndexShuffle(
                index=offset, seed=seeds, max_index=tf.constant(n_total - 1, tf.int64), rounds=4
            )
            return {"image": tf.gather(images, idx), "label": tf.gather(labels, idx)}

        # All images have one size, so gather, convert and resize whole batches at once.
        ds = tf.data.Dataset.counter(start=start_step).map(positions)
        ds = ds.map(lookup, num_parallel_calls=tf.data.AUTOTUNE)
        # IDX images are square: resized whole, as before (no 'valid' needed).
        ds = ds.map(_decode_fn(False, source_size), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = _sharded_record_stream(
            source, split, seed=seed, start_step=start_step, batch_size=batch_size,
            process_index=process_index, process_count=process_count,
            stream_shards=stream_shards, shuffle_buffer=shuffle_buffer,
        )  # fmt: skip
        # Each record carries its stream position, so the host can count the dropped ones.
        ds = ds.enumerate(start=start_step * batch_size).map(
            lambda position, ex: {**ex, "position": position}
        )
        if source.square:  # The whole image already: no padding, batches as before.
            decode = _decode_fn(source.encoded_image, source_size)
        else:
            decode = _train_decode_fn(source.encoded_image, source_size)
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        if max_bad_records > 0:
            ds = ds.ignore_errors()
        ds = ds.batch(batch_size, drop_remainder=True)
        ds = ds.with_options(_deterministic_options()).prefetch(tf.data.AUTOTUNE)
        what = f"{dataset} {split} (train)"
        return _count_bad_records(
            _numpy_batches(ds, what), start_step * batch_size, max_bad_records, what
        )
    ds = ds.with_options(_deterministic_options()).prefetch(tf.data.AUTOTUNE)
    return _numpy_batches(ds, f"{dataset} {split} (train)")


def _check_stream_shards(stream_shards: int, process_count: int, global_batch: int) -> None:
    if stream_shards < 1 or stream_shards % process_count or global_batch % stream_shards:
        raise DatasetError(
            f"data.stream_shards={stream_shards} does not fit this run: streamed tfds data is "
            "read as stream_shards fixed shards, so it must be a positive multiple of the "
            f"process count ({process_count}) and divide the global batch ({global_batch}). "
            "Keep one value for every process count you use: it fixes the data order."
        )


def _sharded_record_stream(
    source: _Source,
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
    """This process's undecoded records, in the order that makes every global batch P-independent.

    The split is cut into ``S = stream_shards`` contiguous shards (``tfds.even_splits``), each an
    endless stream reshuffled every epoch with a seed of its own. Global batch k takes the next
    ``B/S`` records of every shard, shard s filling rows ``[s*B/S, (s+1)*B/S)``. Process i of P owns
    shards ``[i*S/P, (i+1)*S/P)``, which are exactly its rows ``[i*b, (i+1)*b)``: it reads only
    those files, and the global batches do not depend on P. Each shard keeps a shuffle buffer of
    ``shuffle_buffer // S`` records, so a process holds ``shuffle_buffer / P`` of them in memory.
    """
    tf = _import_tf()
    global_batch = batch_size * process_count
    _check_stream_shards(stream_shards, process_count, global_batch)
    rows_per_shard = global_batch // stream_shards
    shards_per_process = stream_shards // process_count
    shard_buffer = max(1, shuffle_buffer // stream_shards)
    if source.num_examples < stream_shards:  # even_splits would leave some shards empty
        raise DatasetError(
            f"Split {split!r} of {source.name!r} has {source.num_examples} examples, fewer "
            f"than data.stream_shards={stream_shards}; use a larger split or fewer shards."
        )
    splits = _shard_splits(source, stream_shards)
    # Records of each shard consumed by the first ``start_step`` global batches.
    consumed = start_step * rows_per_shard

    def shard_stream(shard: int) -> tf.data.Dataset:
        records, n_shard = _raw_records(source, splits[shard])
        shard_seed = _derive_seed(seed, shard)
        first_epoch, offset = divmod(consumed, n_shard)

        def epoch_records(epoch: tf.Tensor) -> tf.data.Dataset:
            # Each epoch's order depends only on (seed, shard, epoch), so a resumed stream
            # starts at the right epoch and skips only within it.
            epoch_seed = tf.constant(shard_seed, tf.int64) * 1_000_003 + epoch
            buffer = min(shard_buffer, n_shard)
            return records.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)

        stream = tf.data.Dataset.counter(start=first_epoch).flat_map(epoch_records)
        return stream.skip(offset)  # Undecoded records: cheap.

    first = process_index * shards_per_process
    streams = [shard_stream(s) for s in range(first, first + shards_per_process)]
    if len(streams) == 1:
        return streams[0]
    # Local record j comes from local shard (j // rows_per_shard) mod S/P: blocks of B/S rows.
    choice = tf.data.Dataset.counter().map(lambda j: (j // rows_per_shard) % shards_per_process)
    return tf.data.Dataset.choose_from_datasets(streams, choice)


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


def eval_batches(
    dataset: str,
    split: str,
    *,
    data_dir: str | None,
    batch_size: int,
    source_size: int,
    process_index: int = 0,
    process_count: int = 1,
    idx_dir: str = DEFAULT_IDX_DIR,
) -> Iterator[dict[str, np.ndarray]]:
    """One unshuffled pass over this process's shard, every example exactly once.

    Yields ``{'image': uint8 [B, S, S, 3], 'label': int32 [B], 'mask': bool [B]}``, all batches
    of exactly ``batch_size``; padding examples are zeros with ``mask`` False. Every process
    yields the same number of batches (enough for the largest shard), so multi-process eval
    steps stay in lockstep; processes with a smaller shard get an extra fully-masked batch when
    needed.
    """
    _check_common(batch_size, source_size, process_index, process_count)
    tf = _import_tf()
    source = _resolve_source(dataset, split, data_dir, idx_dir)

    if source.kind == "arrays":
        bounds = [
            idx_data.even_shard_bounds(0, source.num_examples, i, process_count)
            for i in range(process_count)
        ]
        lo, hi = bounds[process_index]
        n_local, max_local = hi - lo, max(b - a for a, b in bounds)
    else:
        shards = _shard_splits(source, process_count)
        ds, n_local = _raw_records(source, shards[process_index])
        max_local = max(_tfds_num_examples(source.builder, s) for s in shards)
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
        ds = ds.map(_decode_fn(False, source_size), num_parallel_calls=tf.data.AUTOTUNE)
    else:

        def with_mask(ex: dict[str, Any]) -> dict[str, Any]:
            return {**ex, "mask": tf.constant(True)}

        decode = _decode_fn(source.encoded_image, source_size)
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).map(with_mask)
        if num_padding:
            padding = {
                "image": tf.zeros([source_size, source_size, 3], tf.uint8),
                "label": tf.constant(0, tf.int32),
                "mask": tf.constant(False),
            }
            ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
        ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.with_options(_deterministic_options()).prefetch(tf.data.AUTOTUNE)
    return _numpy_batches(ds, f"{dataset} {split} (eval)")
