"""Folders of images as datasets: listing, labels, the stored file list and split slicing.

``data.dataset="folder"`` with ``data.folder=PATH`` (local or ``gs://``, read through
``tf.io.gfile``) trains on every JPEG/PNG/BMP/GIF under PATH at any depth; other files are
skipped by extension and counted. Labels:

* none by default (every label -1);
* ``data.folder_labels=True``: the first-level subfolders are the classes, in sorted order;
* tfds's ``ImageFolder`` layout (``PATH/<split>/<label>/<image>``, the first level only
  split-named folders) is detected: the split picks the folder, its subfolders are the classes.

The listing is sorted, so every process computes the same one; ``write_file_list`` stores it
in the workdir (``data_files.json``, plus ``label_names.txt``) so a resumed run and all processes
of a pod read one fixed order without listing again. A split may be sliced like tfds
(``train[:90%]``, ``train[90%:]``): slices apply to a fixed, seeded shuffle of the list so a
held-out part draws from every class.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from etils import epath

from byol_jax.data import idx
from byol_jax.data.errors import DatasetError
from byol_jax.data.source import Source
from byol_jax.data.tf_env import import_tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SPLIT_NAMES = ("train", "test", "val", "validation", "valid", "eval", "unlabelled")
FILE_LIST = "data_files.json"
LABEL_NAMES = "label_names.txt"
_SLICE_SEED = 20240124  # fixed: held-out slices must not move with config.seed


def _walk(root: str) -> tuple[list[str], int]:
    """Image paths under ``root`` relative to it (sorted) and the number of other files."""
    gfile = import_tf().io.gfile
    images, others = [], 0
    for dirpath, _, filenames in gfile.walk(root):
        rel = dirpath[len(root) :].strip("/")
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(f"{rel}/{name}" if rel else name)
            else:
                others += 1
    return sorted(images), others


def _subdirs(root: str) -> list[str]:
    gfile = import_tf().io.gfile
    return sorted(n.rstrip("/") for n in gfile.listdir(root) if gfile.isdir(f"{root}/{n}"))


def list_folder(root: str, labelled: bool) -> dict[str, Any]:
    """The folder's listing: {'root', 'layout', 'files', 'labels', 'label_names', 'skipped'}.

    ``layout`` is 'imagefolder' (split/label/image), 'classes' (label/image) or 'flat'; files are
    relative to root, sorted. Raises ``DatasetError`` for a missing folder or one without images.
    """
    gfile = import_tf().io.gfile
    root = str(root).rstrip("/")
    if not root or not gfile.isdir(root):
        raise DatasetError(
            f"data.folder={root!r} is not a folder; point it at a folder of images "
            "(local path or gs://bucket/path)."
        )
    top = _subdirs(root)
    top_files = [n for n in gfile.listdir(root) if not gfile.isdir(f"{root}/{n}")]
    imagefolder = (
        bool(top)
        and not top_files
        and all(d.lower() in SPLIT_NAMES for d in top)
        and all(_subdirs(f"{root}/{d}") for d in top)
    )
    files, skipped = _walk(root)
    if not files:
        what = "is empty" if not skipped else f"has no images, only {skipped} other file(s)"
        raise DatasetError(
            f"data.folder={root!r} {what}; byol_jax reads {', '.join(IMAGE_EXTENSIONS)} files "
            "at any depth."
        )
    layout = "imagefolder" if imagefolder else ("classes" if labelled else "flat")
    names: list[str] = []
    labels = [-1] * len(files)
    if layout != "flat":
        level = 1 if layout == "imagefolder" else 0
        parts = [f.split("/") for f in files]
        names = sorted({p[level] for p in parts if len(p) > level + 1})
        if not names:
            raise DatasetError(
                f"data.folder_labels=True but {root!r} has no subfolders of images; put each "
                "class in its own subfolder, or set data.folder_labels=False."
            )
        index = {n: i for i, n in enumerate(names)}
        labels = [index.get(p[level], -1) if len(p) > level + 1 else -1 for p in parts]
    return {
        "root": root,
        "layout": layout,
        "files": files,
        "labels": labels,
        "label_names": names,
        "skipped": skipped,
    }


def write_file_list(listing: dict[str, Any], workdir: str) -> epath.Path:
    """Stores the listing (and the label names, one a line) in ``workdir``; returns the path."""
    path = epath.Path(workdir) / FILE_LIST
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (FILE_LIST + ".tmp")
    tmp.write_text(json.dumps(listing))
    tmp.rename(path)  # atomic on local disks: readers never see half a list
    if listing["label_names"]:
        (epath.Path(workdir) / LABEL_NAMES).write_text("\n".join(listing["label_names"]) + "\n")
    return path


def read_file_list(workdir: str | None, root: str, labelled: bool = False) -> dict[str, Any] | None:
    """The listing stored in ``workdir`` for ``root``, or None if there is none (or for another
    folder, or without labels where ``labelled`` asks for them: a run trained unlabelled, then
    evaluated with ``folder_labels=True``)."""
    if not workdir:
        return None
    path = epath.Path(workdir) / FILE_LIST
    if not path.exists():
        return None
    try:
        listing = json.loads(path.read_text())
    except ValueError as e:
        raise DatasetError(f"{path} is damaged ({e}); delete it to list the folder again.") from e
    if listing.get("root") != str(root).rstrip("/"):
        return None
    return None if labelled and listing.get("layout") == "flat" else listing


# Per process: (root, labelled, workdir or "") -> listing. Evaluation asks again on every pass;
# a stored list is written once per workdir, so it is read once, not once per pass.
_listings: dict[tuple[str, bool, str], dict[str, Any]] = {}


def folder_listing(root: str, labelled: bool, workdir: str | None = None) -> dict[str, Any]:
    """The stored listing if ``workdir`` has one, else the folder listed (once per process)."""
    root = str(root).rstrip("/")
    stored_key = (root, labelled, str(workdir or ""))
    if workdir and stored_key not in _listings:
        stored = read_file_list(workdir, root, labelled)
        if stored is not None:
            _listings[stored_key] = stored
    key = stored_key if stored_key in _listings else (root, labelled, "")
    if key not in _listings:
        _listings[key] = list_folder(root, labelled)
    return _listings[key]


def folder_source(
    root: str, split: str, labelled: bool = False, workdir: str | None = None
) -> Source:
    """One split of a folder: all its images, an ImageFolder split, or a slice of either."""
    listing = folder_listing(root, labelled, workdir)
    files = np.asarray(listing["files"], dtype=object)
    labels = np.asarray(listing["labels"], np.int32)
    if listing["layout"] == "imagefolder":
        tops = np.asarray([f.split("/")[0].lower() for f in files])
        sizes = {name: int((tops == name).sum()) for name in sorted(set(tops))}
    else:
        sizes = {"train": len(files)}  # the whole folder is the one split
    name, start, end = idx.resolve_slice(split, sizes)
    chosen = np.flatnonzero(tops == name) if listing["layout"] == "imagefolder" else None
    chosen = np.arange(len(files)) if chosen is None else chosen
    if (start, end) != (0, len(chosen)):
        order = np.random.default_rng(_SLICE_SEED).permutation(len(chosen))
        chosen = np.sort(chosen[order[start:end]])
    if len(chosen) == 0:
        raise DatasetError(f"Split {split!r} of folder {root!r} selects no images.")
    prefix = listing["root"] + "/"
    return Source(
        name=f"folder {listing['root']}",
        num_examples=len(chosen),
        num_classes=len(listing["label_names"]),
        kind="files",
        labels=labels[chosen],
        paths=[prefix + f for f in files[chosen]],
        square=False,
    )


def skipped_message(listing: dict[str, Any]) -> str:
    """One line: how many images were found and how many other files were ignored."""
    classes = f" in {len(listing['label_names'])} classes" if listing["label_names"] else ""
    return (
        f"data.folder {listing['root']}: {len(listing['files'])} images{classes} "
        f"({listing['layout']} layout); ignored {listing['skipped']} non-image file(s)"
    )
