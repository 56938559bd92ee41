"""Run files on local disk or object storage: the one place that turns a workdir into paths.

A workdir may be a local folder or a bucket URL (``gs://bucket/run``, as TPU VM users keep
them). Everything the project writes or reads there goes through ``etils.epath``, which speaks
both: on a host with TensorFlow it uses ``tf.io.gfile`` for ``gs://``; with ``EPATH_USE_TF=false``
it uses fsspec (``gcsfs``), which honours ``STORAGE_EMULATOR_HOST`` (the tests' GCS server).

Object stores have no rename and no append: an object is written whole or not at all, so a
single write is already atomic there. Local files are written aside and renamed.
"""

from __future__ import annotations

import os

from etils import epath

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
    """True for ``scheme://...`` paths (gs://, s3://): object storage, not the local disk."""
    return "://" in os.fspath(path)


def path(location: PathLike) -> epath.Path:
    """An ``epath.Path`` for ``location``: URLs as they are, local paths made absolute.

    Absolute local paths keep a later ``chdir`` (or Orbax, which wants them) from moving them;
    ``os.path.abspath`` on a URL would turn ``gs://b/run`` into ``$PWD/gs:/b/run``.
    """
    text = os.fspath(location)
    if is_url(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def write_bytes(target: PathLike, content: bytes) -> None:
    """Write ``target`` so that a reader sees the old content or the new, never a part."""
    target = path(target)
    if is_url(target):
        target.write_bytes(content)  # one object upload: atomic by the store's semantics
        return
    partial = target.parent / f"{target.name}.tmp"
    partial.write_bytes(content)
    partial.replace(target)


def write_text(target: PathLike, content: str) -> None:
    """``write_bytes`` for UTF-8 text."""
    write_bytes(target, content.encode())


def read_text(source: PathLike) -> str:
    return path(source).read_text()


def read_bytes(source: PathLike) -> bytes:
    return path(source).read_bytes()


def exists(location: PathLike) -> bool:
    return path(location).exists()


def makedirs(location: PathLike) -> epath.Path:
    """Create ``location`` (a no-op on object stores, whose folders are name prefixes)."""
    folder = path(location)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
