"""Offline MNIST-format (IDX) data and tfds-style split arithmetic for in-memory arrays.

Fashion-MNIST is the offline default: Debian's ``dataset-fashion-mnist`` installs the four IDX
files under ``DEFAULT_IDX_DIR``. This module parses them (gzip or raw) with full header checks,
finds them in a directory, loads a split once per file version, and slices it with the split
syntax and even sharding arithmetic of TensorFlow Datasets, so in-memory data and tfds data are
addressed alike.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import re
import zlib

import numpy as np

from byol_jax.data.errors import DatasetError

DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"

# Datasets with an offline IDX fallback. Files are looked up as ``<prefix>-<kind>.gz`` (or without
# ``.gz``) inside ``idx_dir``.
_IDX_DATASETS = ("fashion_mnist", "mnist")
_IDX_SPLITS = {"train": "train", "test": "t10k"}
IDX_NUM_CLASSES = 10

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an IDX file (optionally gzip-compressed) into a numpy array in native byte order.

    Format: 2 zero bytes, a type code, the number of dims, then one big-endian uint32 per dim,
    then the data. Raises ``DatasetError`` on a bad magic number or a truncated/oversized file.
    """
    path = os.fspath(path)
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as e:
        raise DatasetError(f"IDX file not found: {path}") from e
    except (OSError, EOFError, zlib.error) as e:
        # gzip raises BadGzipFile (an OSError) / EOFError for corrupt or truncated archives.
        raise DatasetError(
            f"Cannot read IDX file {path}: {e}. The file is corrupt or truncated; reinstall it "
            "(e.g. `apt-get install --reinstall dataset-fashion-mnist`)."
        ) from e
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: str) -> np.ndarray:
    def corrupt(what: str) -> DatasetError:
        return DatasetError(
            f"Corrupt IDX file {path}: {what}. Re-download or reinstall it "
            "(e.g. `apt-get install --reinstall dataset-fashion-mnist`)."
        )

    if len(raw) < 4:
        raise corrupt(f"only {len(raw)} bytes, too short for the 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise corrupt(f"bad magic number 0x{raw[:4].hex()} (expected 0x0000<type><ndim>)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header_len = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_len:
        raise corrupt(f"header with {ndim} dims does not fit in {len(raw)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    actual = len(raw) - header_len
    if actual != expected:
        state = "truncated" if actual < expected else "has trailing bytes"
        raise corrupt(f"{state}: dims {dims} need {expected} data bytes, found {actual}")
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=False)


def _find_idx_file(idx_dir: str, prefix: str, kind: str) -> str | None:
    for name in (f"{prefix}-{kind}.gz", f"{prefix}-{kind}"):
        path = os.path.join(idx_dir, name)
        if os.path.isfile(path):
            return path
    return None


def find_idx_files(dataset: str, idx_dir: str) -> dict[str, tuple[str, str]] | None:
    """Returns {split: (images_path, labels_path)} if the IDX fallback applies, else None."""
    if dataset not in _IDX_DATASETS or not idx_dir:
        return None
    if dataset == "mnist" and os.path.abspath(idx_dir) == os.path.abspath(DEFAULT_IDX_DIR):
        # The default directory holds Fashion-MNIST, which has the same file names as MNIST.
        return None
    files = {}
    for split, prefix in _IDX_SPLITS.items():
        images = _find_idx_file(idx_dir, prefix, "images-idx3-ubyte")
        labels = _find_idx_file(idx_dir, prefix, "labels-idx1-ubyte")
        if images is None or labels is None:
            return None
        files[split] = (images, labels)
    return files


@functools.lru_cache(maxsize=4)
def _load_idx_split_cached(
    images_path: str, labels_path: str, _stamp: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(
            f"{images_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}."
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(
            f"{labels_path}: expected {images.shape[0]} labels [N], got shape {labels.shape}."
        )
    labels = labels.astype(np.int32)
    if labels.size and (labels.min() < 0 or labels.max() >= IDX_NUM_CLASSES):
        raise DatasetError(f"{labels_path}: labels outside 0..{IDX_NUM_CLASSES - 1}.")
    images = images[..., None]  # [N, H, W, 1]
    # Cached arrays are shared between callers: make accidental in-place edits fail loudly.
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_idx_split(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    # The stamp invalidates the cache if the files change on disk.
    stamp = tuple(
        x for p in (images_path, labels_path) for x in (os.stat(p).st_mtime_ns, os.stat(p).st_size)
    )
    return _load_idx_split_cached(images_path, labels_path, stamp)


_SPLIT_RE = re.compile(r"^\s*(?P<name>[\w-]+)\s*(\[(?P<slice>[^\]]*)\])?\s*$")
_BOUND_RE = re.compile(r"^\s*(?P<val>-?\d+)\s*(?P<pct>%)?\s*$")


def resolve_slice(split: str, sizes: dict[str, int]) -> tuple[str, int, int]:
    """Parses a tfds-style split ('train', 'train[:10%]', 'test[100:-5]') to (name, start, end).

    Follows tfds semantics: percentages round to the closest example, negative bounds count
    from the end, out-of-range bounds are errors.
    """
    m = _SPLIT_RE.match(split)
    if not m:
        raise DatasetError(f"Cannot parse split {split!r}; use e.g. 'train', 'train[:10%]'.")
    name, spec = m.group("name"), m.group("slice")
    if name not in sizes:
        raise DatasetError(f"Unknown split {name!r}; available splits: {sorted(sizes)}.")
    n = sizes[name]
    if spec is None:
        return name, 0, n
    parts = spec.split(":")
    if len(parts) != 2:
        raise DatasetError(f"Split {split!r}: only [A:B] slices are supported (no step).")

    def bound(text: str, default: int) -> int:
        if not text.strip():
            return default
        bm = _BOUND_RE.match(text)
        if not bm:
            raise DatasetError(f"Split {split!r}: bad slice bound {text!r}.")
        val = int(bm.group("val"))
        if bm.group("pct"):
            if abs(val) > 100:
                raise DatasetError(f"Split {split!r}: percentage {val}% out of range.")
            val = int(round(val * n / 100.0))
        if abs(val) > n:
            raise DatasetError(f"Split {split!r}: bound {val} out of range for {n} examples.")
        return val + n if val < 0 else val

    start, end = bound(parts[0], 0), bound(parts[1], n)
    return name, start, max(start, end)


def even_shard_bounds(start: int, end: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous shard ``index`` of ``count`` over [start, end), sizes differing by at most 1.

    Same arithmetic as ``tfds.even_splits(..., drop_remainder=False)``, so both data sources
    shard identically.
    """
    n = end - start
    per, rem = divmod(n, count)
    lo = start + per * index + min(index, rem)
    hi = start + per * (index + 1) + min(index + 1, rem)
    return lo, hi


def idx_num_examples(path: str) -> int:
    """First dimension of an IDX file, from its header only (no full decompression)."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            header = f.read(8)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"Cannot read IDX file {path}: {e}. Reinstall or re-download it.") from e
    if len(header) < 8 or header[:2] != b"\x00\x00" or header[3] == 0:
        raise DatasetError(f"Corrupt IDX file {path}: bad header 0x{header.hex()}.")
    return int.from_bytes(header[4:8], "big")
