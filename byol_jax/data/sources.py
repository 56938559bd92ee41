"""Which backend serves (dataset, split): tfds, offline IDX files, a folder or a packed folder.

``resolve_source`` is the one entry point the streams use. ``prepare_dataset`` does the slow,
write-once work apart from reading (tfds download_and_prepare, listing a folder into the
workdir); a multi-process run calls it on process 0, then a barrier.
"""

from __future__ import annotations

from typing import Any

from absl import logging

from byol_jax.data import folder, idx, packed, tfds_source
from byol_jax.data.errors import DatasetError
from byol_jax.data.source import DatasetInfo, Source
from byol_jax.data.tf_env import import_tfds

# data.dataset values that read data.folder instead of a tfds name.
FOLDER, PACKED = "folder", "packed"
PATH_DATASETS = (FOLDER, PACKED)


def is_known_dataset(dataset: str) -> bool:
    """Whether ``dataset`` is 'folder', 'packed' or names a tfds builder ('name/config:1.0.0')."""
    return dataset in PATH_DATASETS or tfds_source.is_known_dataset(dataset)


def _idx_source(dataset: str, split: str, files: dict[str, tuple[str, str]]) -> Source:
    sizes = {name: idx.idx_num_examples(images) for name, (images, _) in files.items()}
    name, start, end = idx.resolve_slice(split, sizes)
    if end <= start:
        raise DatasetError(f"Split {split!r} of {dataset!r} selects no examples.")
    images, labels = idx.load_idx_split(*files[name])
    return Source(
        name=dataset,
        num_examples=end - start,
        num_classes=idx.IDX_NUM_CLASSES,
        kind="arrays",
        images=images[start:end],
        labels=labels[start:end],
    )


def _builder(dataset: str, data_dir: str | None) -> Any:
    tfds_source.check_known_dataset(dataset)
    try:
        return import_tfds().builder(dataset, data_dir=data_dir)
    except Exception as e:  # Bad config/version strings, unreadable data_dir, ...
        raise DatasetError(f"Cannot create tfds builder for {dataset!r}: {e}") from e


def _prepare_builder(builder: Any, dataset: str, data_dir: str | None, idx_dir: str) -> None:
    try:
        builder.download_and_prepare()
    except Exception as e:
        cause = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        raise DatasetError(tfds_source.missing_data_error(dataset, data_dir, idx_dir, cause)) from e


def resolve_source(
    dataset: str,
    split: str,
    data_dir: str | None,
    idx_dir: str = idx.DEFAULT_IDX_DIR,
    *,
    folder_labels: bool = False,
    workdir: str | None = None,
) -> Source:
    """The ``Source`` of one split. For 'folder' and 'packed', ``data_dir`` is the path."""
    if dataset == FOLDER:
        return folder.folder_source(data_dir or "", split, folder_labels, workdir)
    if dataset == PACKED:
        builder = packed.packed_builder(data_dir or "")
        return tfds_source.tfds_source(builder, f"packed {data_dir}", split)
    data_dir = data_dir or None  # An empty config string means the tfds default.
    builder = _builder(dataset, data_dir)
    # 1. Already prepared tfds data wins.
    if builder.is_prepared():
        return tfds_source.tfds_source(builder, dataset, split)
    # 2. Offline IDX files: preferred over a download attempt, which may hang without network.
    files = idx.find_idx_files(tfds_source.base_name(dataset), idx_dir)
    if files is not None:
        return _idx_source(dataset, split, files)
    # 3. Try to prepare it (works with network access, or a filled manual_dir).
    _prepare_builder(builder, dataset, data_dir, idx_dir)
    return tfds_source.tfds_source(builder, dataset, split)


def prepare_dataset(
    dataset: str,
    *,
    data_dir: str | None,
    idx_dir: str = idx.DEFAULT_IDX_DIR,
    folder_labels: bool = False,
    workdir: str | None = None,
) -> str:
    """Makes the data readable; idempotent. Returns one line saying what is there.

    tfds names: ``download_and_prepare`` unless prepared or served by IDX files. 'folder': lists
    it and stores the list (and label names) in ``workdir``, unless already stored there.
    'packed': checks the directory. Call it on process 0, then a barrier, before reading.
    """
    if dataset == FOLDER:
        listing = folder.read_file_list(workdir, data_dir or "")
        if listing is None:
            listing = folder.list_folder(data_dir or "", folder_labels)
            if workdir:
                folder.write_file_list(listing, workdir)
        return folder.skipped_message(listing)
    if dataset == PACKED:
        builder = packed.packed_builder(data_dir or "")
        return f"packed dataset {builder.data_dir}"
    data_dir = data_dir or None
    builder = _builder(dataset, data_dir)
    if builder.is_prepared():
        return f"{dataset}: prepared in {builder.data_dir}"
    if idx.find_idx_files(tfds_source.base_name(dataset), idx_dir) is not None:
        return f"{dataset}: IDX files in {idx_dir}"
    logging.info("preparing %s with tfds (download_and_prepare)", dataset)
    _prepare_builder(builder, dataset, data_dir, idx_dir)
    return f"{dataset}: prepared in {builder.data_dir}"


def dataset_info(
    dataset: str,
    split: str,
    *,
    data_dir: str | None,
    source_size: int,
    idx_dir: str = idx.DEFAULT_IDX_DIR,
    folder_labels: bool = False,
    workdir: str | None = None,
) -> DatasetInfo:
    """Describes ``split`` of ``dataset`` (whole split, all processes) without reading images."""
    source = resolve_source(
        dataset, split, data_dir, idx_dir, folder_labels=folder_labels, workdir=workdir
    )
    return DatasetInfo(
        name=dataset,
        num_examples=source.num_examples,
        num_classes=source.num_classes,
        source_shape=(source_size, source_size, 3),
    )
