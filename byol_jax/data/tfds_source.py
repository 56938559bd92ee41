"""TensorFlow Datasets sources: name checks, feature checks, split sizes and preparation.

``tfds_source`` turns a prepared builder into a ``Source``; ``prepare_tfds`` downloads and
prepares a registered dataset (idempotent, network or manual files needed), kept apart from
reading so a multi-process run prepares once on process 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from byol_jax.data.errors import DatasetError
from byol_jax.data.idx import DEFAULT_IDX_DIR
from byol_jax.data.source import Source
from byol_jax.data.tf_env import import_tf, import_tfds

# Shown when a dataset name is unknown; the full list comes from tfds.list_builders().
_EXAMPLE_DATASETS = (
    "imagenet2012, imagenette, cifar10, cifar100, stl10, fashion_mnist, mnist, "
    "food101, oxford_flowers102, caltech_birds2011"
)


def base_name(dataset: str) -> str:
    """'imagenet2012_subset/1pct:5.0.0' -> 'imagenet2012_subset'."""
    return dataset.split("/")[0].split(":")[0].strip()


def is_known_dataset(dataset: str) -> bool:
    """Whether ``dataset`` names a tfds builder (configs/versions allowed: 'name/config:1.0.0')."""
    tfds = import_tfds()
    try:
        known = tfds.list_builders(with_community_datasets=False)
    except TypeError:  # Older tfds without the keyword.
        known = tfds.list_builders()
    return bool(dataset) and base_name(dataset) in set(known)


def check_known_dataset(dataset: str) -> None:
    if not is_known_dataset(dataset):
        raise DatasetError(
            f"Unknown dataset {dataset!r}. Use a TensorFlow Datasets name, e.g. "
            f"{_EXAMPLE_DATASETS} (full list: `tfds.list_builders()`)."
        )


def missing_data_error(dataset: str, data_dir: str | None, idx_dir: str, cause: str) -> str:
    base = base_name(dataset)
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


def tfds_num_examples(builder: Any, split: Any) -> int:
    """Examples in ``split`` from metadata, or by cardinality when metadata lacks split info."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, AssertionError, TypeError):
        pass  # e.g. mocked builders have no split metadata.
    ds = builder.as_dataset(split=split, decoders=tfds_decoders(builder), shuffle_files=False)
    n = int(ds.cardinality())
    if n < 0:  # Unknown: count records (undecoded, so this only reads bytes).
        n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    return n


def tfds_decoders(builder: Any) -> dict[str, Any] | None:
    tfds = import_tfds()
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


def tfds_source(builder: Any, dataset: str, split: str) -> Source:
    tfds = import_tfds()
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
        num_examples = tfds_num_examples(builder, split)
    except Exception as e:  # tfds raises assorted errors for bad split strings.
        available = list(builder.info.splits) or "unknown"
        raise DatasetError(
            f"Invalid split {split!r} for {dataset!r}: {e}. Available splits: {available}; "
            "slices like 'train[:10%]' or 'train[1000:]' are allowed."
        ) from e
    if num_examples <= 0:
        raise DatasetError(f"Split {split!r} of {dataset!r} is empty.")
    return Source(
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


def shard_splits(source: Source, count: int) -> list[Any]:
    """``source.split`` cut into ``count`` contiguous, near-equal parts (``tfds.even_splits``)."""
    return [source.split] if count == 1 else import_tfds().even_splits(source.split, n=count)


def raw_records(source: Source, split: Any) -> tuple[Any, int]:
    """One (sub)split of a tfds source: undecoded {'image', 'label': int32} records, and size."""
    tf = import_tf()
    n_local = tfds_num_examples(source.builder, split)
    ds = source.builder.as_dataset(
        split=split,
        decoders=tfds_decoders(source.builder),
        shuffle_files=False,  # File order must be reproducible; shuffling happens later.
    )
    has_label = source.has_label

    def select(ex: dict[str, Any]) -> dict[str, Any]:
        label = tf.cast(ex["label"], tf.int32) if has_label else tf.constant(-1, tf.int32)
        return {"image": ex["image"], "label": label}

    return ds.map(select), n_local
