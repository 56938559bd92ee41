"""The linear evaluator (the paper's protocol and features-once) on tiny data (8 fake devices)."""

import numpy as np
import pytest
from evaluator_helpers import MEAN, STD, coloured_images, in_memory_data, separable_features

from byol_jax import features
from byol_jax.evaluators import linear, registry


def test_linear_classifier_separatesseparable_features():
    rng = np.random.default_rng(0)
    x_train, y_train = separable_features(600, rng)
    x_test, y_test = separable_features(300, rng)
    result = linear.linear_evaluation_on_features(
        x_train, y_train, x_test, y_test, num_classes=5, epochs=30, batch_size=64, base_lr=1.0
    )
    assert result["top1"] > 0.95, result
    assert result["top5"] == 1.0
    settings = result["settings"]
    assert settings["learning_rate"] == pytest.approx(1.0 * 64 / 256)
    assert settings["optimizer"].startswith("sgd_nesterov") and settings["weight_decay"] == 0.0
    assert result["num_train_examples"] == 600 and result["num_test_examples"] == 300


def test_lr_sweep_selects_on_held_out_train_only():
    rng = np.random.default_rng(1)
    x_train, y_train = separable_features(400, rng)
    x_test, y_test = separable_features(100, rng)
    sweep_args = dict(num_classes=5, epochs=3, batch_size=64, lr_sweep=(0.01, 1.0, 30.0))
    result = linear.linear_evaluation_on_features(
        x_train, y_train, x_test, y_test, holdout_fraction=0.2, **sweep_args
    )
    sweep = result["sweep_holdout_top1"]
    assert list(sweep) == ["0.01", "1.0", "30.0"]
    best = max(sweep_args["lr_sweep"], key=lambda lr: sweep[str(lr)])
    assert result["settings"]["base_lr"] == best
    assert result["settings"]["lr_sweep"] == [0.01, 1.0, 30.0]
    # The test split plays no part in the choice.
    shuffled = linear.linear_evaluation_on_features(
        x_train, y_train, x_test, rng.permutation(y_test), holdout_fraction=0.2, **sweep_args
    )
    assert shuffled["sweep_holdout_top1"] == sweep
    assert shuffled["settings"]["base_lr"] == best


def test_augmented_path_on_pixels_and_precomputed_path_agree():
    rng = np.random.default_rng(2)
    train, test = coloured_images(256, rng), coloured_images(128, rng)
    common = dict(num_classes=4, image_size=8, mean=MEAN, std=STD, epochs=4, batch_size=32)
    encoder = features.PixelEncoder()
    augmented = linear.linear_evaluation(encoder, {}, train, test, augment=True, **common)
    assert augmented["top1"] > 0.9, augmented
    assert not augmented["settings"]["precomputed_features"]

    # The fast path is exactly "encode once, then train on features".
    fast = linear.linear_evaluation(encoder, {}, train, test, augment=False, **common)
    assert fast["settings"]["precomputed_features"]
    encode = dict(image_size=8, crop_fraction=1.0, mean=MEAN, std=STD)
    by_hand = linear.linear_evaluation_on_features(
        linear.encode_images(encoder, {}, train.images, **encode),
        train.labels,
        linear.encode_images(encoder, {}, test.images, **encode),
        test.labels,
        num_classes=4,
        epochs=4,
        batch_size=32,
    )
    assert fast["top1"] == by_hand["top1"] and fast["top5"] == by_hand["top5"]


def test_linear_evaluator_is_linear_evaluation_on_its_splits():
    rng = np.random.default_rng(6)
    splits = {"train": coloured_images(128, rng, size=8), "test": coloured_images(64, rng, size=8)}
    data = in_memory_data(splits, size=8)
    entry = dict(type="linear", augment=False, epochs=3, batch_size=32, every_steps=0)
    scheduled = registry.build("linear", entry, data)
    metrics = scheduled.run(features.PixelEncoder(), {})
    direct = linear.linear_evaluation(
        features.PixelEncoder(), {}, splits["train"], splits["test"], num_classes=4,
        image_size=8, mean=MEAN, std=STD, augment=False, epochs=3, batch_size=32,
    )  # fmt: skip
    assert metrics == {"linear_top1": direct["top1"], "linear_top5": direct["top5"]}
    assert scheduled.evaluator.last_result["settings"]["precomputed_features"] is True
    assert "top-1" in scheduled.describe(metrics)


def test_streamed_and_in_memory_shares_give_identical_results():
    # The paper's protocol (augmentation) with the split read again every epoch, or kept in
    # memory: the same batches, so bitwise the same head. A small shuffle window (several per
    # shard) must not change that either.
    rng = np.random.default_rng(9)
    splits = {"train": coloured_images(150, rng, size=8), "test": coloured_images(40, rng, size=8)}
    common = dict(
        num_classes=4, image_size=8, mean=MEAN, std=STD, epochs=2, batch_size=32, shards=4,
        shuffle_window=10, return_variables=True, steps_per_call=2,
    )  # fmt: skip
    results = []
    for limit in (0, 1 << 20):
        train, test = in_memory_data(splits, size=8, in_memory_bytes=limit).splits(num_shards=4)
        assert train.in_memory == bool(limit)
        results.append(linear.linear_evaluation(features.PixelEncoder(), {}, train, test, **common))
    streamed, kept = results
    assert streamed["top1"] == kept["top1"] and streamed["top5"] == kept["top5"]
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(streamed["head_params"][name], kept["head_params"][name])
    # 150 examples in 4 shards (37 or 38 each): 8 per shard per step, 4 steps per epoch.
    assert streamed["settings"]["steps_per_epoch"] == 4 and streamed["top1"] > 0.8


def test_batch_and_shards_are_checked():
    rng = np.random.default_rng(10)
    train, test = coloured_images(40, rng, size=8), coloured_images(20, rng, size=8)
    common = dict(num_classes=4, image_size=8, mean=MEAN, std=STD, epochs=1, augment=False)
    with pytest.raises(ValueError, match="multiple of the process count"):
        linear.linear_evaluation(features.PixelEncoder(), {}, train, test, shards=0, **common)
    # 16 shards and 8 devices: a global batch is a multiple of 16, more than batch_size=8.
    with pytest.raises(ValueError, match="global batch needs a multiple of 16"):
        linear.linear_evaluation(
            features.PixelEncoder(), {}, train, test, shards=16, batch_size=8, **common
        )
