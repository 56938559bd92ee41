"""The one feature path: sharded, padded embedding equals the encoder applied in one piece."""

import jax
import numpy as np
import pytest

from byol_jax import features, models, parallel

VIEW = features.View(8, 1.0, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


@pytest.fixture(scope="module")
def tiny():
    encoder = models.build_encoder("resnet_tiny", axis_name=parallel.AXIS_NAME)
    return encoder, features.random_variables(encoder, 8, seed=3)


def test_embed_images_matches_unsharded_apply_for_any_count(tiny):
    encoder, variables = tiny
    images = np.random.default_rng(0).integers(0, 256, (21, 10, 10, 3), dtype=np.uint8)
    views = features.eval_views(images, features.View(8, 0.8, VIEW.mean, VIEW.std))
    expected = np.asarray(encoder.apply(variables, views, train=False))
    view = features.View(8, 0.8, VIEW.mean, VIEW.std)
    # 21 images over 8 devices in batches of 8: padding inside and at the end.
    got = features.embed_images(encoder, variables, images, view, batch_size=8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Variables already on the devices (as in the training state) give the same rows.
    replicated = parallel.replicate(variables)
    again = features.embed_images(encoder, replicated, images, view, replicated=True)
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-5)


def test_encoder_spec_round_trips_and_knows_its_width():
    spec = features.EncoderSpec(
        encoder="resnet18", width=1, base_width=32, stem="imagenet", dtype="float32",
        image_size=28, source_size=28, crop_fraction=1.0, mean=[0.3] * 3, std=[0.35] * 3,
    )  # fmt: skip
    assert spec.embedding_dim == 256 and spec.view == features.View(
        28, 1.0, (0.3,) * 3, (0.35,) * 3
    )
    assert features.EncoderSpec.from_json(spec.to_json()) == spec
    with pytest.raises(features.SpecError, match="unsupported encoder format"):
        features.EncoderSpec.from_json({**spec.to_json(), "format": "other"})


def test_encoder_variables_selects_the_online_encoder_only():
    state = {
        "online_params": {"encoder": {"w": 1}, "projector": {"w": 2}},
        "online_batch_stats": {"encoder": {"m": 3}},
        "target_params": {"encoder": {"w": 4}},
    }
    assert features.encoder_variables(state) == {"params": {"w": 1}, "batch_stats": {"m": 3}}
    assert jax.tree.leaves(features.encoder_variables(state)) == [3, 1]


def test_split_shards_keep_small_shares_in_memory_and_stream_large_ones():
    images = np.arange(50 * 2 * 2 * 3, dtype=np.uint8).reshape(50, 2, 2, 3)
    labels = np.arange(50) % 7
    reads = []

    def read(index, count):
        reads.append(index)
        return features.read_arrays(images, labels, index, count, 8)

    def passes(limit):
        reads.clear()
        split = features.SplitShards(
            read, num_examples=50, example_bytes=12, num_shards=4, in_memory_bytes=limit
        )
        out = [[{k: v.copy() for k, v in b.items()} for b in split.batches(s)] for s in (0, 3)]
        again = [list(split.batches(s)) for s in (0, 3)]
        return split, out, again

    small, first, second = passes(limit=4 * 13 * 12)  # 4 shards of <= 13 fit: read once, replayed
    assert small.in_memory and reads == [0, 3] and small.owned == range(4)
    big, streamed, _ = passes(limit=4 * 13 * 12 - 1)
    assert not big.in_memory and reads == [0, 3, 0, 3]  # read again on every pass
    for a, b, c in zip(first, second, streamed, strict=True):
        for x, y, z in zip(a, b, c, strict=True):
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])
                np.testing.assert_array_equal(x[key], z[key])
    # Shards are contiguous, near-equal, every one the same number of padded batches.
    assert [len(b) for b in first] == [2, 2]
    assert list(small.labels(3)) == list(labels[37:50])
    assert np.sum(first[0][0]["mask"]) + np.sum(first[0][1]["mask"]) == 12
    with pytest.raises(ValueError, match="another process"):
        small.batches(4)
    with pytest.raises(ValueError, match="multiple of the process count"):
        features.SplitShards(read, num_examples=50, example_bytes=12, num_shards=-1)


def test_embed_split_rows_are_the_encoder_on_each_shard(tiny):
    encoder, variables = tiny
    images = np.random.default_rng(1).integers(0, 256, (29, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(29) % 3
    split = features.SplitShards.from_arrays(images, labels, num_shards=3, batch_size=4)
    local = features.embed_split(encoder, variables, split, VIEW)
    expected = features.embed_images(encoder, variables, images, VIEW)
    bounds = [0, 9, 19, 29]  # index * 29 // 3
    assert local.shard_rows == 16 and local.num_examples == 29  # 10 rows in 2 batches of 8
    for i in range(3):
        x, y = local.shard(i)
        np.testing.assert_allclose(x, expected[bounds[i] : bounds[i + 1]], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(y, labels[bounds[i] : bounds[i + 1]])
    assert np.all(local.labels[~local.mask] == -1)
