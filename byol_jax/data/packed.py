"""Packed folders: a folder's images as TFRecord shards that tfds reads.

``pack_folder`` (``python -m byol_jax.prepare``) stores every listed image's original bytes,
its label and its relative path with ``tfds.dataset_builders.store_as_tfds_dataset`` in the
listing's order (shuffling off), so ``tfds.builder_from_directory`` (or ``data.dataset="packed"``
with ``data.folder=OUT``) reads it back and the decoded examples are those of the folder. For
pods: a few large sequential reads per host instead of millions of small ones.
"""

from __future__ import annotations

from typing import Any

from byol_jax.data import folder
from byol_jax.data.errors import DatasetError
from byol_jax.data.tf_env import import_tf, import_tfds

PACKED_NAME = "byol_folder"
PACKED_VERSION = "1.0.0"


def packed_dir(out: str) -> str:
    """The tfds dataset directory (the one with dataset_info.json) inside ``out``."""
    gfile = import_tf().io.gfile
    out = str(out).rstrip("/")
    for candidate in (out, f"{out}/{PACKED_NAME}/{PACKED_VERSION}"):
        if candidate and gfile.exists(f"{candidate}/dataset_info.json"):
            return candidate
    raise DatasetError(
        f"data.folder={out!r} holds no packed dataset (no dataset_info.json); create one with "
        "`python -m byol_jax.prepare --folder=IMAGES --out=OUT`."
    )


def packed_builder(out: str) -> Any:
    """The read-only tfds builder of a packed directory."""
    return import_tfds().builder_from_directory(packed_dir(out))


def pack_folder(
    root: str, out: str, *, labelled: bool = False, num_shards: int | None = None
) -> tuple[str, dict[str, int]]:
    """Packs ``root`` into ``out``; returns (dataset directory, {split: examples}).

    An ImageFolder layout keeps its splits; other folders become one 'train' split. Files that
    vanish before they are read are skipped and counted (a warning line); damaged images are
    packed as they are and counted by the training stream, as from the folder.
    """
    tfds = import_tfds()
    gfile = import_tf().io.gfile
    if gfile.exists(f"{str(out).rstrip('/')}/{PACKED_NAME}/{PACKED_VERSION}/dataset_info.json"):
        raise DatasetError(f"{out} already holds a packed dataset; choose another --out.")
    listing = folder.list_folder(root, labelled)
    files, labels = listing["files"], listing["labels"]
    if listing["layout"] == "imagefolder":
        splits = sorted({f.split("/")[0] for f in files})
    else:
        splits = ["train"]
    missing: list[str] = []

    def examples(split: str):
        for name, label in zip(files, labels, strict=True):
            if listing["layout"] == "imagefolder" and name.split("/")[0] != split:
                continue
            try:
                with gfile.GFile(f"{listing['root']}/{name}", "rb") as f:
                    data = f.read()
            except Exception:  # noqa: BLE001 - vanished or unreadable: skip and count
                missing.append(name)
                continue
            example = {"image": data, "file_name": name}
            if listing["label_names"]:
                example["label"] = label
            yield name, example  # (key, example); with shuffling off the order is kept

    feature_dict: dict[str, Any] = {
        "image": tfds.features.Image(shape=(None, None, 3)),
        "file_name": tfds.features.Text(),
    }
    if listing["label_names"]:
        feature_dict["label"] = tfds.features.ClassLabel(names=listing["label_names"])
    config = tfds.download.DownloadConfig(num_shards=num_shards) if num_shards else None
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name=PACKED_NAME,
        version=PACKED_VERSION,
        features=tfds.features.FeaturesDict(feature_dict),
        split_datasets={s: examples(s) for s in splits},
        data_dir=out,
        description=f"Images of {listing['root']}, packed by byol_jax.prepare.",
        download_config=config,
        disable_shuffling=True,  # keep the listing's order
    )
    if missing:
        print(f"warning: skipped {len(missing)} file(s) that could not be read, e.g. {missing[0]}")
    sizes = {s: int(builder.info.splits[s].num_examples) for s in splits}
    return str(builder.data_dir), sizes
