"""``python -m byol_jax.prepare``: a folder packed into tfds record shards, read back by
``tfds.builder_from_directory`` and by ``data.dataset="packed"``, gives the folder's examples."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from folder_helpers import make_classes_folder

from byol_jax import data
from byol_jax.data import folder

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 10


def _digest(batch) -> list[tuple[int, str]]:
    return sorted(
        (int(label), hashlib.sha1(image.tobytes() + bytes(valid)).hexdigest())
        for image, label, valid in zip(batch["image"], batch["label"], batch["valid"], strict=True)
    )


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    images = tmp_path_factory.mktemp("images")
    make_classes_folder(images, N)
    out = tmp_path_factory.mktemp("packed") / "out"
    result = subprocess.run(
        [sys.executable, "-m", "byol_jax.prepare", f"--folder={images}", f"--out={out}",
         "--labels", "--num_shards=3"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"packed train: {N} images" in result.stdout
    return images, out


def test_packed_shards_are_a_tfds_dataset_with_the_folders_bytes(packed):
    images, out = packed
    builder = tfds.builder_from_directory(data.packed_dir(str(out)))
    assert builder.info.splits["train"].num_examples == N
    assert len(builder.info.splits["train"].filenames) == 3
    assert builder.info.features["label"].names == [f"cls_{i:02d}" for i in range(N)]
    listing = folder.list_folder(str(images), labelled=True)
    records = list(tfds.as_numpy(builder.as_dataset(split="train", decoders={
        "image": tfds.decode.SkipDecoding()})))  # fmt: skip
    # In the listing's order, byte for byte, with the folder's labels.
    assert [r["file_name"].decode() for r in records] == listing["files"]
    for record, name, label in zip(records, listing["files"], listing["labels"], strict=True):
        assert record["image"] == (images / name).read_bytes()
        assert record["label"] == label


def test_training_from_the_packed_copy_gives_the_folders_examples(packed):
    images, out = packed
    common = dict(batch_size=N, source_size=16, seed=1, folder_labels=True)
    from_folder = next(data.train_batches("folder", "train", data_dir=str(images), **common))
    from_packed = next(
        data.train_batches("packed", "train", data_dir=str(out), shuffle_buffer=4, **common)
    )
    assert _digest(from_folder) == _digest(from_packed)  # one epoch: the same decoded examples
    info = data.dataset_info("packed", "train", data_dir=str(out), source_size=16)
    assert (info.num_examples, info.num_classes) == (N, N)
    evals = list(data.eval_batches("packed", "train", data_dir=str(out), batch_size=4,
                                   source_size=8))  # fmt: skip
    assert np.concatenate([b["mask"] for b in evals]).sum() == N


def test_prepare_refuses_an_existing_output_and_a_bad_folder(packed, tmp_path):
    images, out = packed
    for args, message in (
        ([f"--folder={images}", f"--out={out}"], "already holds a packed dataset"),
        ([f"--folder={tmp_path / 'none'}", f"--out={tmp_path / 'o'}"], "is not a folder"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "byol_jax.prepare", *args],
            capture_output=True, text=True, cwd=ROOT, timeout=600,
        )  # fmt: skip
        assert result.returncode == 2 and message in result.stderr
    with pytest.raises(data.DatasetError, match="holds no packed dataset"):
        data.dataset_info("packed", "train", data_dir=str(tmp_path), source_size=8)
