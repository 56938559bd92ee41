"""Fine-tuning on label fractions (the semi-supervised evaluator) on tiny data."""

import jax
import numpy as np
import pytest
from evaluator_helpers import MEAN, STD, coloured_images, in_memory_data, tiny_encoder

from byol_jax.evaluators import linear, registry, shard_feed


@pytest.fixture(scope="module", name="tiny_encoder")
def tiny_encoder_fixture():
    return tiny_encoder(8)


def test_frozen_encoder_is_untouched_and_fine_tuning_updates_it(tiny_encoder):
    encoder, variables = tiny_encoder
    rng = np.random.default_rng(3)
    train, test = coloured_images(96, rng), coloured_images(32, rng)
    common = dict(num_classes=4, image_size=8, mean=MEAN, std=STD, epochs=2, batch_size=32)
    changed = lambda a, b: any(  # noqa: E731
        jax.tree.leaves(jax.tree.map(lambda x, y: not np.array_equal(x, y), a, b))
    )
    frozen = linear.linear_evaluation(
        encoder, variables, train, test, return_variables=True, **common
    )
    assert not changed(frozen["encoder_variables"], variables)
    assert changed(frozen["head_params"], jax.tree.map(np.zeros_like, frozen["head_params"]))

    tuned = linear.linear_evaluation(
        encoder, variables, train, test, fine_tune=True, return_variables=True, **common
    )
    assert tuned["settings"]["mode"] == "fine_tune"
    assert changed(tuned["encoder_variables"]["params"], variables["params"])
    assert changed(tuned["encoder_variables"]["batch_stats"], variables["batch_stats"])
    assert np.isfinite(tuned["top1"])


def test_label_subset_is_class_balanced_and_deterministic():
    labels = np.repeat(np.arange(4), [100, 200, 50, 10])
    labels = np.concatenate([labels, -np.ones(30, int)])  # unlabelled examples never chosen
    subset = shard_feed.label_subset(labels, 0.1, seed=0)
    counts = np.bincount(labels[subset], minlength=4)
    np.testing.assert_array_equal(counts, [10, 20, 5, 1])
    np.testing.assert_array_equal(subset, shard_feed.label_subset(labels, 0.1, seed=0))
    with pytest.raises(ValueError):
        shard_feed.label_subset(labels, 0.0)


def test_fine_tune_evaluator_trains_the_encoder_on_the_label_fraction(tiny_encoder):
    encoder, variables = tiny_encoder
    rng = np.random.default_rng(7)
    splits = {"train": coloured_images(160, rng, size=8), "test": coloured_images(32, rng, size=8)}
    entry = dict(type="fine_tune", label_fraction=0.25, epochs=1, batch_size=32)
    scheduled = registry.build("ft", entry, in_memory_data(splits, size=8))
    metrics = scheduled.run(encoder, variables)
    result = scheduled.evaluator.last_result
    expected = len(shard_feed.label_subset(splits["train"].labels, 0.25, seed=0))
    assert result["num_train_examples"] == expected < 160
    assert result["settings"]["mode"] == "fine_tune"
    assert set(metrics) == {"ft_top1", "ft_top5"} and 0.0 <= metrics["ft_top1"] <= 1.0
    with pytest.raises(registry.EvaluatorError, match="label_fraction"):
        entry = dict(type="fine_tune", label_fraction=0.0)
        registry.build("ft", entry, in_memory_data(splits, size=8))
