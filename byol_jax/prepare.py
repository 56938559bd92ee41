"""Packs a folder of images into TFRecord shards that tfds reads (``tfds.builder_from_directory``).

    python -m byol_jax.prepare --folder=/data/my_images --out=/data/my_images_packed

Then train from the packed copy with ``--config.data.dataset=packed
--config.data.folder=/data/my_images_packed``: the same examples as the folder, read as a few
large files per host (what pods reading from GCS need). ``--labels`` takes the first-level
subfolders as classes (an ImageFolder layout ``split/label/*`` is detected either way).
"""

from __future__ import annotations

import sys

from absl import app, flags

_FOLDER = flags.DEFINE_string("folder", None, "Folder of images (local path or gs://...).")
_OUT = flags.DEFINE_string("out", None, "Output directory for the packed dataset.")
_LABELS = flags.DEFINE_bool("labels", False, "First-level subfolders are the classes.")
_SHARDS = flags.DEFINE_integer("num_shards", 0, "Record files per split (0: tfds chooses).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _FOLDER.value or not _OUT.value:
        raise app.UsageError("--folder and --out are required")
    from byol_jax.data import DatasetError, packed

    try:
        path, sizes = packed.pack_folder(
            _FOLDER.value, _OUT.value, labelled=_LABELS.value, num_shards=_SHARDS.value or None
        )
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    counts = ", ".join(f"{split}: {n}" for split, n in sizes.items())
    print(f"packed {counts} images into {path}")
    print(f"train with --config.data.dataset=packed --config.data.folder={_OUT.value}")


if __name__ == "__main__":
    app.run(main)
