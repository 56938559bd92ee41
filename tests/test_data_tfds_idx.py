"""Tests for the data layer on tfds and IDX sources (byol_jax.data).

Three data paths are exercised without network access:
* the offline IDX fallback, using the real Fashion-MNIST files of the Debian package
  ``dataset-fashion-mnist`` (tests skip if it is not installed);
* tfds with ``tfds.testing.mock_data`` (random examples with the real feature specs);
* a real, prepared tfds dataset: a tiny builder defined here and written to a tmp data_dir, so
  the file reading, ``even_splits`` sharding and resize paths run as in production.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct

import numpy as np
import pytest

from byol_jax import data as ip
from byol_jax.data import idx as idx_data
from byol_jax.data import tf_env

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

IDX_DIR = ip.DEFAULT_IDX_DIR
needs_idx = pytest.mark.skipif(
    not os.path.isfile(os.path.join(IDX_DIR, "train-images-idx3-ubyte.gz")),
    reason="needs `apt-get install dataset-fashion-mnist`",
)


def _take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def _hashes(images: np.ndarray, labels: np.ndarray) -> list[str]:
    return [
        hashlib.sha1(img.tobytes() + int(lbl).to_bytes(4, "little", signed=True)).hexdigest()
        for img, lbl in zip(images, labels, strict=True)
    ]


def _stream_hashes(batches: list[dict[str, np.ndarray]]) -> list[str]:
    return [h for b in batches for h in _hashes(b["image"], b["label"])]


def _assert_batches_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _check_batch(
    batch: dict[str, np.ndarray], batch_size: int, size: int, whole_image: bool = False
) -> None:
    assert batch["image"].shape == (batch_size, size, size, 3)
    assert batch["image"].dtype == np.uint8
    assert batch["label"].shape == (batch_size,)
    assert batch["label"].dtype == np.int32
    # Only sources of non-square images send valid sizes; square ones keep the old format.
    assert ("valid" in batch) == whole_image
    if whole_image:
        assert batch["valid"].shape == (batch_size, 2) and batch["valid"].dtype == np.int32


@pytest.fixture()
def no_download(monkeypatch):
    """Simulates no network: download_and_prepare fails at once instead of retrying for minutes."""

    def fail(self, *args, **kwargs):
        raise ConnectionError("network is unreachable (simulated)")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)


# ---------------------------------------------------------------------------------------------
# IDX reader and split slicing.
# ---------------------------------------------------------------------------------------------


@needs_idx
def test_read_idx_real_files_match_hand_parsed_header():
    for prefix, n in (("train", 60000), ("t10k", 10000)):
        images_path = os.path.join(IDX_DIR, f"{prefix}-images-idx3-ubyte.gz")
        labels_path = os.path.join(IDX_DIR, f"{prefix}-labels-idx1-ubyte.gz")
        with gzip.open(images_path, "rb") as f:
            magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
            first = np.frombuffer(f.read(rows * cols), np.uint8).reshape(rows, cols)
        assert magic == 0x0803 and count == n
        images = ip.read_idx(images_path)
        labels = ip.read_idx(labels_path)
        assert images.shape == (n, rows, cols) == (n, 28, 28)
        assert images.dtype == np.uint8
        np.testing.assert_array_equal(images[0], first)
        assert labels.shape == (n,)
        assert labels.min() == 0 and labels.max() == 9


def test_read_idx_roundtrip_and_corrupt_files(tmp_path):
    data = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    good = tmp_path / "good-idx3"
    good.write_bytes(bytes([0, 0, 0x0C, 3]) + struct.pack(">III", 2, 3, 4) + data.tobytes())
    out = ip.read_idx(good)
    np.testing.assert_array_equal(out, data)
    assert out.dtype == np.int32 and out.dtype.isnative

    gz = tmp_path / "good-idx3.gz"
    gz.write_bytes(gzip.compress(good.read_bytes()))
    np.testing.assert_array_equal(ip.read_idx(gz), data)

    cases = {
        "bad_magic": b"\x08\x03\x00\x00" + good.read_bytes()[4:],
        "truncated": good.read_bytes()[:-5],
        "trailing": good.read_bytes() + b"\x00",
        "short_header": bytes([0, 0, 0x08, 3, 0, 0]),
        "empty": b"",
    }
    for name, raw in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        with pytest.raises(ip.DatasetError, match="Corrupt IDX"):
            ip.read_idx(path)
    truncated_gz = tmp_path / "truncated.gz"
    truncated_gz.write_bytes(gz.read_bytes()[:-12])
    with pytest.raises(ip.DatasetError, match="corrupt or truncated"):
        ip.read_idx(truncated_gz)
    with pytest.raises(ip.DatasetError, match="not found"):
        ip.read_idx(tmp_path / "missing.gz")


def test_resolve_slice_follows_tfds_semantics():
    sizes = {"train": 60000, "test": 10000}
    r = idx_data.resolve_slice
    assert r("train", sizes) == ("train", 0, 60000)
    assert r("test[:10%]", sizes) == ("test", 0, 1000)
    assert r("train[:5000]", sizes) == ("train", 0, 5000)
    assert r("train[5000:]", sizes) == ("train", 5000, 60000)
    assert r("train[10:20]", sizes) == ("train", 10, 20)
    assert r("train[-100:]", sizes) == ("train", 59900, 60000)
    assert r("test[25%:75%]", sizes) == ("test", 2500, 7500)
    for bad in ("validation", "train[::2]", "train[:x]", "train[:70000]", "train[:101%]"):
        with pytest.raises(ip.DatasetError):
            r(bad, sizes)
    # Shards are contiguous, disjoint, cover the range, and differ in size by at most one.
    bounds = [idx_data.even_shard_bounds(3, 26, i, 3) for i in range(3)]
    assert bounds == [(3, 11), (11, 19), (19, 26)]


# ---------------------------------------------------------------------------------------------
# Offline IDX path.
# ---------------------------------------------------------------------------------------------


@needs_idx
def test_idx_dataset_info_and_batches(tmp_path):
    info = ip.dataset_info(
        "fashion_mnist", "train[:10%]", data_dir=str(tmp_path), source_size=32, idx_dir=IDX_DIR
    )
    assert info == ip.DatasetInfo("fashion_mnist", 6000, 10, (32, 32, 3))
    test_info = ip.dataset_info(
        "fashion_mnist", "test", data_dir=str(tmp_path), source_size=28, idx_dir=IDX_DIR
    )
    assert test_info.num_examples == 10000

    it = ip.train_batches(
        "fashion_mnist", "train[:64]", data_dir=str(tmp_path), batch_size=8, source_size=32,
        seed=0, idx_dir=IDX_DIR,
    )  # fmt: skip
    batch = next(it)
    _check_batch(batch, 8, 32)
    img = batch["image"]
    np.testing.assert_array_equal(img[..., 0], img[..., 1])
    np.testing.assert_array_equal(img[..., 0], img[..., 2])
    assert ((batch["label"] >= 0) & (batch["label"] < 10)).all()

    # At the native size the pixels are passed through untouched.
    raw_images = ip.read_idx(os.path.join(IDX_DIR, "train-images-idx3-ubyte.gz"))[:64]
    raw_labels = ip.read_idx(os.path.join(IDX_DIR, "train-labels-idx1-ubyte.gz"))[:64]
    expected = set(_hashes(np.repeat(raw_images[..., None], 3, -1), raw_labels.astype(np.int32)))
    native = next(
        ip.train_batches(
            "fashion_mnist", "train[:64]", data_dir=str(tmp_path), batch_size=8,
            source_size=28, seed=0, idx_dir=IDX_DIR,
        )
    )  # fmt: skip
    assert set(_hashes(native["image"], native["label"])) <= expected


@needs_idx
def test_idx_determinism_and_resume_across_epochs(tmp_path):
    def make(seed: int, start_step: int = 0):
        return ip.train_batches(
            "fashion_mnist", "train[100:120]", data_dir=str(tmp_path), batch_size=8,
            source_size=28, seed=seed, start_step=start_step, idx_dir=IDX_DIR,
        )  # fmt: skip

    ref = _take(make(seed=3), 8)  # 64 examples = 3.2 epochs of 20.
    for a, b in zip(ref, _take(make(seed=3), 8), strict=True):
        _assert_batches_equal(a, b)
    other = next(make(seed=4))
    assert not np.array_equal(other["image"], ref[0]["image"])
    # Step 2 straddles the first epoch boundary (examples 16..23), 7 is in the fourth epoch.
    for k in (1, 2, 3, 7):
        _assert_batches_equal(next(make(seed=3, start_step=k)), ref[k])

    # Every epoch is a permutation of the split, and epochs are reshuffled.
    stream = _stream_hashes(ref)
    epochs = [stream[i : i + 20] for i in (0, 20, 40)]
    for epoch in epochs:
        assert len(set(epoch)) == 20 and set(epoch) == set(epochs[0])
    assert epochs[0] != epochs[1]


@needs_idx
def test_idx_process_rows_form_the_single_process_global_batch(tmp_path):
    def stream(process_index, process_count, batch_size, start_step=0):
        return ip.train_batches(
            "fashion_mnist", "train[:64]", data_dir=str(tmp_path), batch_size=batch_size,
            source_size=28, seed=0, process_index=process_index, process_count=process_count,
            start_step=start_step, idx_dir=IDX_DIR,
        )  # fmt: skip

    single = _take(stream(0, 1, 24), 6)  # 144 examples: two epochs of 64 and a part of one.
    for count in (2, 3):
        parts = [_take(stream(i, count, 24 // count), 6) for i in range(count)]
        for k in range(6):
            for key in ("image", "label"):
                joined = np.concatenate([p[k][key] for p in parts])
                np.testing.assert_array_equal(joined, single[k][key])
        # Rows of different processes are disjoint within an epoch (steps 0-1 are 48 of 64).
        first_epoch = [set(_stream_hashes(p[:2])) for p in parts]
        assert sum(map(len, first_epoch)) == len(set().union(*first_epoch)) == 48
    # Resuming one process at step 4 continues its rows of the global stream.
    _assert_batches_equal(next(stream(1, 2, 12, start_step=4)), _take(stream(1, 2, 12), 5)[4])


@needs_idx
def test_idx_eval_batches_every_example_once_with_padding(tmp_path):
    raw_images = ip.read_idx(os.path.join(IDX_DIR, "t10k-images-idx3-ubyte.gz"))[:51]
    raw_labels = ip.read_idx(os.path.join(IDX_DIR, "t10k-labels-idx1-ubyte.gz"))[:51]

    batches = list(
        ip.eval_batches(
            "fashion_mnist", "test[:50]", data_dir=str(tmp_path), batch_size=16,
            source_size=28, idx_dir=IDX_DIR,
        )
    )  # fmt: skip
    assert len(batches) == 4
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.dtype == np.bool_ and mask.sum() == 50 and mask[:50].all()
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert labels.dtype == np.int32
    # Unshuffled, in split order; padding is zeros.
    np.testing.assert_array_equal(images[:50, ..., 1], raw_images[:50])
    np.testing.assert_array_equal(labels[:50], raw_labels[:50])
    assert not images[50:].any() and not labels[50:].any()

    # Two processes, 51 examples: shards of 26 and 25, same number of batches each.
    per_process = [
        list(
            ip.eval_batches(
                "fashion_mnist",
                "test[:51]",
                data_dir=str(tmp_path),
                batch_size=8,
                source_size=28,
                process_index=i,
                process_count=2,
                idx_dir=IDX_DIR,
            )
        )  # fmt: skip
        for i in range(2)
    ]
    assert [len(p) for p in per_process] == [4, 4]
    seen = []
    for p in per_process:
        m = np.concatenate([b["mask"] for b in p])
        seen.extend(_hashes(np.concatenate([b["image"] for b in p])[m],
                            np.concatenate([b["label"] for b in p])[m]))  # fmt: skip
    expected = _hashes(np.repeat(raw_images[..., None], 3, -1), raw_labels.astype(np.int32))
    assert sorted(seen) == sorted(expected)


# ---------------------------------------------------------------------------------------------
# tfds path with mocked data.
# ---------------------------------------------------------------------------------------------


def test_mock_tfds_cifar10_shapes_determinism_resume(tmp_path):
    def make(seed: int, start_step: int = 0, size: int = 32):
        return ip.train_batches(
            "cifar10", "train", data_dir=str(tmp_path), batch_size=4, source_size=size,
            seed=seed, start_step=start_step, shuffle_buffer=6,
        )  # fmt: skip

    with tfds.testing.mock_data(num_examples=10):
        info = ip.dataset_info("cifar10", "train", data_dir=str(tmp_path), source_size=32)
        assert (info.num_examples, info.num_classes, info.source_shape) == (10, 10, (32, 32, 3))
        ref = _take(make(seed=0), 6)  # 24 examples = 2.4 epochs of 10.
        _check_batch(ref[0], 4, 32)
        for a, b in zip(ref, _take(make(seed=0), 6), strict=True):
            _assert_batches_equal(a, b)
        assert not np.array_equal(next(make(seed=1))["image"], ref[0]["image"])
        for k in (2, 3, 5):  # Step 2 straddles the first epoch boundary.
            _assert_batches_equal(next(make(seed=0, start_step=k)), ref[k])
        stream = _stream_hashes(ref)
        assert set(stream[:10]) == set(stream[10:20]) and len(set(stream[:10])) == 10

        resized = next(make(seed=0, size=40))
        _check_batch(resized, 4, 40)


def test_mock_tfds_fashion_mnist_grayscale_and_eval(tmp_path):
    empty_idx = tmp_path / "no_idx"
    empty_idx.mkdir()
    with tfds.testing.mock_data(num_examples=6):
        # idx_dir without files, so the (mocked) tfds builder serves the data.
        batch = next(
            ip.train_batches(
                "fashion_mnist", "train", data_dir=str(tmp_path), batch_size=4,
                source_size=28, seed=0, idx_dir=str(empty_idx),
            )
        )  # fmt: skip
        _check_batch(batch, 4, 28)
        img = batch["image"]
        np.testing.assert_array_equal(img[..., 0], img[..., 2])
        batches = list(
            ip.eval_batches(
                "fashion_mnist", "test", data_dir=str(tmp_path), batch_size=4,
                source_size=28, idx_dir=str(empty_idx),
            )
        )  # fmt: skip
        assert len(batches) == 2
        np.testing.assert_array_equal(batches[1]["mask"], [True, True, False, False])


def test_bad_records_are_counted_skipped_and_capped(tmp_path, caplog):
    good = tf.io.encode_png(np.full((32, 32, 3), 7, np.uint8)).numpy()
    bad = {2: b"definitely not an image", 7: good[: len(good) // 2]}  # garbage, truncated PNG
    images = [bad.get(i, good) for i in range(12)]

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        return tf.data.Dataset.from_tensor_slices(
            {"image": images, "label": np.arange(12, dtype=np.int64), "id": [b"x"] * 12}
        )

    def make(max_bad_records: int):
        return ip.train_batches(
            "cifar10", "train", data_dir=str(tmp_path), batch_size=5, source_size=32, seed=0,
            shuffle_buffer=1, max_bad_records=max_bad_records,
        )  # fmt: skip

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        with pytest.raises(ip.DatasetError, match="max_bad_records"):
            _take(make(0), 1)  # Strict: the first bad record stops the run.
        # Cap 1: the first batch skips one record; the second reaches the second bad record.
        capped = make(1)
        assert next(capped)["label"].tolist() == [0, 1, 3, 4, 5]
        with pytest.raises(ip.DatasetError, match="2 records could not be decoded, more than"):
            next(capped)
        # Cap 2: both are skipped, logged with the running count, and the stream goes on.
        with caplog.at_level("WARNING"):
            batches = _take(make(2), 2)
        labels = np.concatenate([b["label"] for b in batches])
        assert labels.tolist() == [0, 1, 3, 4, 5, 6, 8, 9, 10, 11]
        assert "skipped 1 undecodable record(s)" in caplog.text
        assert "skipped 2 undecodable record(s)" in caplog.text
        assert all("position" not in b for b in batches)


# ---------------------------------------------------------------------------------------------
# A real prepared tfds dataset (tiny, generated here).
# ---------------------------------------------------------------------------------------------

_TINY_N = 23


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
    """Prepares two tiny tfds datasets (registered under unique names) in a tmp data_dir."""

    class ByolTestTinyImages(tfds.core.GeneratorBasedBuilder):
        """Variable-size RGB PNGs; label i identifies example i."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "label": tfds.features.ClassLabel(num_classes=_TINY_N),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            rng = np.random.default_rng(0)
            for i in range(_TINY_N):
                shape = (12 + i % 5, 20 - i % 3, 3)
                yield i, {"image": rng.integers(0, 256, shape, np.uint8), "label": i}

    class ByolTestTinyUnlabelled(tfds.core.GeneratorBasedBuilder):
        """Grayscale images and no label feature."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {"image": tfds.features.Image(shape=(8, 8, 1))}
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"unlabelled": self._generate_examples()}

        def _generate_examples(self):
            for i in range(5):
                yield i, {"image": np.full((8, 8, 1), i, np.uint8)}

    data_dir = tmp_path_factory.mktemp("tfds")
    for cls in (ByolTestTinyImages, ByolTestTinyUnlabelled):
        cls(data_dir=str(data_dir)).download_and_prepare()
    return str(data_dir)


def test_prepared_tfds_info_resize_and_resume(tiny_data_dir):
    name = "byol_test_tiny_images"
    info = ip.dataset_info(name, "train", data_dir=tiny_data_dir, source_size=16)
    assert info == ip.DatasetInfo(name, _TINY_N, _TINY_N, (16, 16, 3))
    half = ip.dataset_info(name, "train[:50%]", data_dir=tiny_data_dir, source_size=16)
    assert half.num_examples == 12

    def make(start_step: int = 0):
        return ip.train_batches(
            name, "train", data_dir=tiny_data_dir, batch_size=5, source_size=16, seed=0,
            start_step=start_step, shuffle_buffer=8,
        )  # fmt: skip

    ref = _take(make(), 10)  # 50 examples, > 2 epochs of 23.
    _check_batch(ref[0], 5, 16, whole_image=True)
    labels = np.concatenate([b["label"] for b in ref])
    assert sorted(labels[:_TINY_N]) == list(range(_TINY_N))
    assert sorted(labels[_TINY_N : 2 * _TINY_N]) == list(range(_TINY_N))
    assert not np.array_equal(labels[:_TINY_N], labels[_TINY_N : 2 * _TINY_N])
    for k in (4, 9):  # Step 4 straddles the first epoch boundary (examples 20..24).
        _assert_batches_equal(next(make(k)), ref[k])


def test_prepared_tfds_whole_image_resize_and_padding(tiny_data_dir):
    """Non-square images: the longer side becomes the source size, the aspect ratio is kept, the
    rest of the square is zero padding, and ``valid`` says where the image is."""
    name = "byol_test_tiny_images"
    size = 16
    batches = _take(
        ip.train_batches(
            name, "train", data_dir=tiny_data_dir, batch_size=_TINY_N, source_size=size, seed=0
        ),
        1,
    )
    rng = np.random.default_rng(0)  # the builder's generator, replayed
    raw = [rng.integers(0, 256, (12 + i % 5, 20 - i % 3, 3), np.uint8) for i in range(_TINY_N)]
    batch = batches[0]
    for image, label, valid in zip(batch["image"], batch["label"], batch["valid"], strict=True):
        h, w = raw[label].shape[:2]
        scale = size / max(h, w)
        expected = (min(size, round(h * scale)), min(size, round(w * scale)))
        assert tuple(valid) == expected and max(expected) == size
        assert abs(expected[1] / expected[0] - w / h) < 0.1  # aspect kept, to rounding
        assert not image[valid[0] :].any() and not image[:, valid[1] :].any()  # zero padding
        # The image part is a plain resize of the whole original (nothing cropped away),
        # bilinear and antialiased only when shrinking by more than 2x (byol_jax.data.decode).
        antialias = scale < 0.5
        resized = tf.image.resize(raw[label], expected, method="bilinear", antialias=antialias)
        ref = np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(image[: valid[0], : valid[1]], ref)


def test_prepared_tfds_sharding_and_eval(tiny_data_dir):
    name = "byol_test_tiny_images"
    seen_train, seen_eval, num_batches = [], [], []
    for i in range(2):
        it = ip.train_batches(
            name, "train", data_dir=tiny_data_dir, batch_size=4, source_size=16, seed=0,
            process_index=i, process_count=2, stream_shards=2,
        )  # fmt: skip
        shard_size = 12 if i == 0 else 11  # tfds.even_splits of 23.
        labels = np.concatenate([b["label"] for b in _take(it, 6)])[:shard_size]
        assert len(set(labels)) == shard_size
        seen_train.append(set(labels.tolist()))
        batches = list(
            ip.eval_batches(
                name, "train", data_dir=tiny_data_dir, batch_size=5, source_size=16,
                process_index=i, process_count=2,
            )
        )  # fmt: skip
        num_batches.append(len(batches))
        mask = np.concatenate([b["mask"] for b in batches])
        assert mask.sum() == shard_size
        seen_eval.extend(np.concatenate([b["label"] for b in batches])[mask].tolist())
    assert not seen_train[0] & seen_train[1]
    assert seen_train[0] | seen_train[1] == set(range(_TINY_N))
    assert sorted(seen_eval) == list(range(_TINY_N))
    assert num_batches == [3, 3]


def test_prepared_tfds_global_batches_do_not_depend_on_process_count(tiny_data_dir):
    name, shards, global_batch, steps = "byol_test_tiny_images", 4, 8, 8

    def global_stream(process_count: int, start_step: int = 0) -> list[dict[str, np.ndarray]]:
        per_process = [
            _take(
                ip.train_batches(
                    name, "train", data_dir=tiny_data_dir, batch_size=global_batch // process_count,
                    source_size=16, seed=3, start_step=start_step, process_index=i,
                    process_count=process_count, shuffle_buffer=16, stream_shards=shards,
                ),
                steps - start_step,
            )
            for i in range(process_count)
        ]  # fmt: skip
        return [
            {
                k: np.concatenate([p[step][k] for p in per_process])
                for k in ("image", "label", "valid")
            }
            for step in range(steps - start_step)
        ]

    single = global_stream(1)
    for process_count in (2, 4):
        for a, b in zip(single, global_stream(process_count), strict=True):
            _assert_batches_equal(a, b)
    for a, b in zip(single[5:], global_stream(2, start_step=5), strict=True):
        _assert_batches_equal(a, b)  # Exact resume, mid-epoch for every shard.

    # Rows [2s, 2s+2) of every global batch come from shard s (the s-th of tfds.even_splits,
    # read here straight from tfds), which serves each of its examples once per epoch.
    builder = tfds.builder(name, data_dir=tiny_data_dir)
    labels = np.stack([b["label"] for b in single])  # [steps, global_batch]
    first_epochs = []
    for s, split in enumerate(tfds.even_splits("train", n=shards)):
        members = sorted(int(ex["label"]) for ex in tfds.as_numpy(builder.as_dataset(split=split)))
        assert len(members) == (6 if s < 3 else 5)  # 23 = 6 + 6 + 6 + 5
        from_shard = labels[:, 2 * s : 2 * s + 2].reshape(-1)
        n = len(members)
        assert sorted(from_shard[:n]) == members and sorted(from_shard[n : 2 * n]) == members
        first_epochs.append(tuple(members.index(x) for x in from_shard[:5]))
    # Every shard is shuffled with a seed of its own: not all in the same relative order.
    assert len(set(first_epochs)) > 1


@pytest.mark.parametrize(
    "batch_size, process_count, stream_shards, message",
    [
        (4, 3, 4, "multiple of the process count \\(3\\)"),
        (3, 2, 4, "divide the global batch \\(6\\)"),
        (32, 1, 32, "fewer than data.stream_shards=32"),
    ],
)
def test_stream_shards_that_do_not_fit_are_clear_errors(
    tiny_data_dir, batch_size, process_count, stream_shards, message
):
    with pytest.raises(ip.DatasetError, match=message):
        ip.train_batches(
            "byol_test_tiny_images", "train", data_dir=tiny_data_dir, batch_size=batch_size,
            source_size=16, seed=0, process_count=process_count, stream_shards=stream_shards,
        )  # fmt: skip


def test_prepared_tfds_unlabelled_grayscale(tiny_data_dir):
    name = "byol_test_tiny_unlabelled"
    info = ip.dataset_info(name, "unlabelled", data_dir=tiny_data_dir, source_size=8)
    assert (info.num_examples, info.num_classes) == (5, 0)
    batch = next(
        ip.train_batches(
            name, "unlabelled", data_dir=tiny_data_dir, batch_size=5, source_size=8, seed=0
        )
    )
    _check_batch(batch, 5, 8)
    assert (batch["label"] == -1).all()
    # Constant images stay constant through gray->RGB; all 5 appear once.
    assert sorted(batch["image"][:, 0, 0, 0].tolist()) == [0, 1, 2, 3, 4]
    assert (batch["image"] == batch["image"][:, :1, :1, :1]).all()
    with pytest.raises(ip.DatasetError, match="Invalid split"):
        ip.dataset_info(name, "validation", data_dir=tiny_data_dir, source_size=8)


# ---------------------------------------------------------------------------------------------
# Errors and TF device hiding.
# ---------------------------------------------------------------------------------------------


def test_unknown_dataset_name():
    assert ip.is_known_dataset("cifar10") and ip.is_known_dataset("imagenet2012_subset/1pct")
    assert not ip.is_known_dataset("cifar_11") and not ip.is_known_dataset("")
    with pytest.raises(ip.DatasetError, match="Unknown dataset 'cifar_11'") as e:
        ip.dataset_info("cifar_11", "train", data_dir=None, source_size=32)
    assert "cifar10" in str(e.value) and "fashion_mnist" in str(e.value)


def test_missing_data_gives_instructions(tmp_path, no_download):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ip.DatasetError) as e:
        ip.train_batches(
            "fashion_mnist", "train", data_dir=str(empty), batch_size=8, source_size=28,
            seed=0, idx_dir=str(empty),
        )  # fmt: skip
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "tfds build fashion_mnist" in msg and "ConnectionError" in msg

    with pytest.raises(ip.DatasetError, match="manual download"):
        ip.dataset_info("imagenet2012", "train", data_dir=str(empty), source_size=224)
    # The default IDX directory holds Fashion-MNIST: it must not be served as MNIST.
    with pytest.raises(ip.DatasetError, match="tfds build mnist"):
        ip.dataset_info("mnist", "train", data_dir=str(empty), source_size=28)


def test_tensorflow_sees_no_accelerators():
    tf_env.hide_accelerators_from_tf()
    assert tf.config.get_visible_devices("GPU") == []


@pytest.mark.parametrize(
    "image, label, message",
    [
        ((tf.float32, (8, 8, 3)), tf.int64, r"'image' feature has dtype float32; .* needs uint8"),
        ((tf.uint8, (8, 8)), tf.int64, r"shape \(8, 8\); .* 1, 3 or 4 channels"),
        ((tf.uint8, (8, 8, 2)), tf.int64, r"shape \(8, 8, 2\)"),
        ((tf.uint8, (8, 8, 3)), tf.float32, r"'label' .* dtype float32; .* one integer class"),
    ],
)
def test_custom_dataset_with_wrong_features_is_a_clear_error(tmp_path, image, label, message):
    image_dtype, image_shape = image

    def info(self):
        features = {
            "image": tfds.features.Tensor(shape=image_shape, dtype=image_dtype),
            "label": tfds.features.Tensor(shape=(), dtype=label),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def examples(self):
        for i in range(2):
            yield i, {"image": np.zeros(image_shape, image_dtype.as_numpy_dtype), "label": i}

    # A custom dataset whose features the pipeline cannot use, registered under a unique name.
    class_name = f"ByolTestBadFeatures{abs(hash(message)) % 10**8}"
    builder_class = type(
        class_name,
        (tfds.core.GeneratorBasedBuilder,),
        {
            "VERSION": tfds.core.Version("1.0.0"),
            "_info": info,
            "_split_generators": lambda self, dl_manager: {"train": examples(self)},
            "_generate_examples": examples,
        },
    )
    builder_class(data_dir=str(tmp_path)).download_and_prepare()
    with pytest.raises(ip.DatasetError, match=message):
        ip.dataset_info(builder_class.name, "train", data_dir=str(tmp_path), source_size=8)
