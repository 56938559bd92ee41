"""The baselines table (BYOL vs random init vs raw pixels) on tiny data (8 fake devices)."""

import jax
import numpy as np
import pytest
from evaluator_helpers import MEAN, STD, coloured_images, in_memory_data, tiny_encoder

from byol_jax import features, models, parallel, validation, workdir_config
from byol_jax.evaluators import baselines, logistic, registry
from configs import smoke


@pytest.fixture(scope="module", name="tiny_encoder")
def tiny_encoder_fixture():
    return tiny_encoder(8)


def test_bn_calibration_recovers_batch_moments(tiny_encoder):
    encoder, variables = tiny_encoder
    images = coloured_images(64, np.random.default_rng(4), size=8).images
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
        views = features.eval_views(x, features.View(8, 1.0, MEAN, STD))
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
    train, test = coloured_images(128, rng, size=8), coloured_images(64, rng, size=8)
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
        extend_l2_grid=False,  # the grid's extension has its own test (logistic)
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
        num_classes=4, l2_grid=(1e-2, 1e-3), extend_grid=False,
    )  # fmt: skip
    assert table["byol"]["linear_top1"] == direct["top1"] and table["byol"]["l2"] == direct["l2"]
    # rows=("byol",) computes that row alone, identically (comparing runs needs no baselines).
    alone = baselines.baseline_table(
        encoder, train, test, num_classes=4, view=view, pretrained_variables=variables,
        knn_ks=(5, 10), l2_grid=(1e-2, 1e-3), extend_l2_grid=False, calibrate_bn=False,
        rows=("byol",), details=(details := {}),
    )  # fmt: skip
    assert alone == {"byol": table["byol"]}
    # details: how each row's L2 was chosen, as select_and_fit reports it.
    assert details["byol"]["holdout_top1"] == pytest.approx(direct["holdout_top1"], abs=0.02)
    assert details["byol"]["iterations"] > 0 and details["byol"]["grad_norm"] < 1e-4
    assert baselines.ROWS == validation.TABLE_ROWS  # what config validation accepts
    with pytest.raises(ValueError, match="rows must be a non-empty subset"):
        baselines.baseline_table(encoder, train, test, num_classes=4, view=view, rows=("pixels",))
    text = baselines.format_table(table)
    assert "*" not in text  # every row converged
    table["raw_pixels"]["converged"] = 0.0
    assert baselines.format_table(table).splitlines()[3].endswith("*")
    assert "random_init" in text and "%" in text and "L2" in text


def test_baselines_evaluator_runs_the_table_on_replicated_variables(tiny_encoder):
    encoder, variables = tiny_encoder
    rng = np.random.default_rng(8)
    splits = {"train": coloured_images(96, rng, size=8), "test": coloured_images(32, rng, size=8)}
    entry = dict(type="baselines", at_end=True, knn_ks=(5,), l2_grid=(1e-2,), calibrate_bn=False)
    scheduled = registry.build("table", entry, in_memory_data(splits, size=8))
    assert scheduled.at_end and not scheduled.due(10, 10)
    metrics = scheduled.run(encoder, parallel.replicate(variables), replicated=True)
    direct = baselines.baseline_table(
        encoder, splits["train"], splits["test"], num_classes=4,
        view=features.View(8, 1.0, MEAN, STD), pretrained_variables=variables,
        knn_ks=(5,), l2_grid=(1e-2,), calibrate_bn=False,
    )  # fmt: skip
    assert baselines.unflatten({k[len("table_") :]: v for k, v in metrics.items()}) == direct
    assert "raw_pixels" in scheduled.describe(metrics)


def test_random_row_keeps_residual_branches_of_a_zero_init_config():
    # Training with the released network's zero-initialized residual BN scales must not weaken
    # the random-init baseline: at 28 px such a network at init sees one corner of the image
    # through its strided 1x1 shortcuts. The row's encoder is the training module in the
    # end-of-run table and the config's spec in --mode runs: both start every scale at 1.
    config = smoke.get_config()
    config.model.zero_init_last_bn = True
    spec = workdir_config.encoder_spec(config)

    def last_bn_scales(variables):
        flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
        return [v for path, v in flat if "['bn2']['scale']" in jax.tree_util.keystr(path)]

    trained = models.build_encoder(spec.encoder, base_width=spec.base_width, stem=spec.stem,
                                   zero_init_last_bn=True)  # fmt: skip
    zeroed = last_bn_scales(features.random_variables(trained, spec.image_size))
    assert zeroed and all(np.all(v == 0) for v in zeroed)  # what training starts from
    for encoder in (trained, spec.build()):
        variables = baselines.random_encoder_variables(encoder, image_size=spec.image_size)
        random_row = last_bn_scales(variables)
        assert random_row and all(np.all(v == 1) for v in random_row), random_row
