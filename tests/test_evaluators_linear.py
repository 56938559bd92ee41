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
