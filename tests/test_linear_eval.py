"""Linear evaluation, fine-tuning and the baselines on tiny synthetic data (8 fake devices)."""

import jax
import numpy as np
import pytest

from byol_jax import baselines, evaluate, features, linear_eval, models, parallel
from byol_jax.evaluators import logistic

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _separable_features(n, rng, *, dim=16, classes=5):
    """Labels from a random linear map of the features, with a margin: linearly separable."""
    weights = np.random.default_rng(123).normal(size=(dim, classes))
    x = rng.normal(size=(4 * n, dim)).astype(np.float32)
    scores = np.sort(x @ weights, axis=1)
    x = x[scores[:, -1] - scores[:, -2] > 0.5][:n]  # keep a margin between the top two classes
    return x, np.argmax(x @ weights, axis=1).astype(np.int32)


def _coloured_images(n, rng, size=12, classes=4):
    """Noisy images whose class is their dominant colour (and brightness): survives crops/flips."""
    labels = rng.integers(0, classes, n).astype(np.int32)
    colour = np.eye(3)[labels % 3] * np.where(labels >= 3, 150, 90)[:, None] + 40
    noise = rng.integers(0, 60, (n, size, size, 3))
    images = np.clip(noise + colour[:, None, None, :], 0, 255).astype(np.uint8)
    return linear_eval.LabeledImages(images, labels)


@pytest.fixture(scope="module")
def tiny_encoder():
    encoder = models.build_encoder("resnet_tiny", axis_name=parallel.AXIS_NAME, conv_impl="matmul")
    init = jax.jit(lambda key: encoder.init(key, np.zeros((1, 8, 8, 3), np.float32), train=False))
    variables = jax.device_get(init(jax.random.key(0)))
    return encoder, dict(variables)


def test_linear_classifier_separates_separable_features():
    rng = np.random.default_rng(0)
    x_train, y_train = _separable_features(600, rng)
    x_test, y_test = _separable_features(300, rng)
    result = linear_eval.linear_evaluation_on_features(
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
    x_train, y_train = _separable_features(400, rng)
    x_test, y_test = _separable_features(100, rng)
    sweep_args = dict(num_classes=5, epochs=3, batch_size=64, lr_sweep=(0.01, 1.0, 30.0))
    result = linear_eval.linear_evaluation_on_features(
        x_train, y_train, x_test, y_test, holdout_fraction=0.2, **sweep_args
    )
    sweep = result["sweep_holdout_top1"]
    assert list(sweep) == ["0.01", "1.0", "30.0"]
    best = max(sweep_args["lr_sweep"], key=lambda lr: sweep[str(lr)])
    assert result["settings"]["base_lr"] == best
    assert result["settings"]["lr_sweep"] == [0.01, 1.0, 30.0]
    # The test split plays no part in the choice.
    shuffled = linear_eval.linear_evaluation_on_features(
        x_train, y_train, x_test, rng.permutation(y_test), holdout_fraction=0.2, **sweep_args
    )
    assert shuffled["sweep_holdout_top1"] == sweep
    assert shuffled["settings"]["base_lr"] == best


def test_augmented_path_on_pixels_and_precomputed_path_agree():
    rng = np.random.default_rng(2)
    train, test = _coloured_images(256, rng), _coloured_images(128, rng)
    common = dict(num_classes=4, image_size=8, mean=MEAN, std=STD, epochs=4, batch_size=32)
    encoder = linear_eval.PixelEncoder()
    augmented = linear_eval.linear_evaluation(encoder, {}, train, test, augment=True, **common)
    assert augmented["top1"] > 0.9, augmented
    assert not augmented["settings"]["precomputed_features"]

    # The fast path is exactly "encode once, then train on features".
    fast = linear_eval.linear_evaluation(encoder, {}, train, test, augment=False, **common)
    assert fast["settings"]["precomputed_features"]
    encode = dict(image_size=8, crop_fraction=1.0, mean=MEAN, std=STD)
    by_hand = linear_eval.linear_evaluation_on_features(
        linear_eval.encode_images(encoder, {}, train.images, **encode),
        train.labels,
        linear_eval.encode_images(encoder, {}, test.images, **encode),
        test.labels,
        num_classes=4,
        epochs=4,
        batch_size=32,
    )
    assert fast["top1"] == by_hand["top1"] and fast["top5"] == by_hand["top5"]


def test_frozen_encoder_is_untouched_and_fine_tuning_updates_it(tiny_encoder):
    encoder, variables = tiny_encoder
    rng = np.random.default_rng(3)
    train, test = _coloured_images(96, rng), _coloured_images(32, rng)
    common = dict(num_classes=4, image_size=8, mean=MEAN, std=STD, epochs=2, batch_size=32)
    changed = lambda a, b: any(  # noqa: E731
        jax.tree.leaves(jax.tree.map(lambda x, y: not np.array_equal(x, y), a, b))
    )
    frozen = linear_eval.linear_evaluation(
        encoder, variables, train, test, return_variables=True, **common
    )
    assert not changed(frozen["encoder_variables"], variables)
    assert changed(frozen["head_params"], jax.tree.map(np.zeros_like, frozen["head_params"]))

    tuned = linear_eval.linear_evaluation(
        encoder, variables, train, test, fine_tune=True, return_variables=True, **common
    )
    assert tuned["settings"]["mode"] == "fine_tune"
    assert changed(tuned["encoder_variables"]["params"], variables["params"])
    assert changed(tuned["encoder_variables"]["batch_stats"], variables["batch_stats"])
    assert np.isfinite(tuned["top1"])


def test_label_subset_is_class_balanced_and_deterministic():
    labels = np.repeat(np.arange(4), [100, 200, 50, 10])
    labels = np.concatenate([labels, -np.ones(30, int)])  # unlabelled examples never chosen
    subset = linear_eval.label_subset(labels, 0.1, seed=0)
    counts = np.bincount(labels[subset], minlength=4)
    np.testing.assert_array_equal(counts, [10, 20, 5, 1])
    np.testing.assert_array_equal(subset, linear_eval.label_subset(labels, 0.1, seed=0))
    with pytest.raises(ValueError):
        linear_eval.label_subset(labels, 0.0)


def test_bn_calibration_recovers_batch_moments(tiny_encoder):
    encoder, variables = tiny_encoder
    images = _coloured_images(64, np.random.default_rng(4), size=8).images
    calibrated = baselines.random_encoder_variables(
        encoder,
        image_size=8,
        seed=0,
        calibration_images=images,
        calibration_batches=1,
        batch_size=64,
        mean=MEAN,
        std=STD,
    )

    # Reference: one ordinary training-mode update from the initial statistics.
    def update(v, x):
        views = evaluate.eval_views(x, image_size=8, crop_fraction=1.0, mean=MEAN, std=STD)
        return encoder.apply(v, views, train=True, mutable=["batch_stats"])[1]["batch_stats"]

    update = parallel.map_function(update)
    order = np.random.default_rng(0).permutation(64)
    moved = parallel.fetch(
        update(parallel.replicate(variables), parallel.shard_batch(images[order]))
    )
    expected = jax.tree.map(
        lambda new, old: (new - 0.9 * old) / 0.1, moved, variables["batch_stats"]
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        calibrated["batch_stats"],
        expected,
    )


def test_baseline_table_rows(tiny_encoder):
    encoder, variables = tiny_encoder
    rng = np.random.default_rng(5)
    train, test = _coloured_images(128, rng, size=8), _coloured_images(64, rng, size=8)
    view = features.View(8, 1.0, MEAN, STD)
    table = baselines.baseline_table(
        encoder,
        train,
        test,
        num_classes=4,
        view=view,
        pretrained_variables=variables,
        knn_ks=(5, 10),
        l2_grid=(1e-2, 1e-3),
        calibrate_bn=False,  # calibration has its own test
    )
    assert list(table) == ["byol", "random_init", "raw_pixels"]
    for row in table.values():
        assert set(row) == {"linear_top1", "l2", "converged", "dim", "knn5_top1", "knn10_top1"}
        assert row["l2"] in (1e-2, 1e-3) and row["converged"] == 1.0
        assert all(0.0 <= row[c] <= 1.0 for c in row if c.endswith("top1"))
    # Colour classes are trivial in pixel space; raw pixels keep all 3 (distinct) channels.
    assert table["raw_pixels"]["knn10_top1"] > 0.9 and table["raw_pixels"]["dim"] == 8 * 8 * 3
    # The BYOL row is exactly the logistic regression on the embedded features.
    embed = lambda images: features.embed_images(encoder, variables, images, view)
    direct = logistic.select_and_fit(
        embed(train.images), train.labels, embed(test.images), test.labels,
        num_classes=4, l2_grid=(1e-2, 1e-3),
    )  # fmt: skip
    assert table["byol"]["linear_top1"] == direct["top1"] and table["byol"]["l2"] == direct["l2"]
    text = baselines.format_table(table)
    assert "random_init" in text and "%" in text and "L2" in text
