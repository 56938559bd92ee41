"""The pmapped BYOL step: layout independence, EMA exactness, learning on a fixed batch."""

import jax
import numpy as np
import pytest

from byol_jax import parallel, train
from configs import smoke


@pytest.fixture(scope="module")
def experiment():
    config = smoke.get_config()
    config.num_steps = 40
    return train.build_experiment(config, num_classes=10, num_train_examples=256)


@pytest.fixture(scope="module")
def host_state(experiment):
    return jax.device_get(train.initial_state(experiment, seed=0))


def _batch(size=16, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (size, 16, 16, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, (size,), dtype=np.int32),
    }


def _on_devices(tree, count):
    return jax.tree.map(lambda x: np.broadcast_to(x, (count, *np.shape(x))), tree)


def test_config_augment_reaches_both_views():
    # The config's augment block, as build_experiment binds it into the step (no compile).
    config = smoke.get_config()
    config.augment.crop_area_min = 0.3
    config.augment.crop_aspect_range = (1.0, 1.0)
    config.augment.blur_prob = (0.7, 0.2)
    config.augment.solarize_prob = (0.1, 0.4)
    experiment = train.build_experiment(config, num_classes=10, num_train_examples=256)
    view_1, view_2 = experiment.step_fn.keywords["view_params"]
    for view in (view_1, view_2):
        assert (view.crop_area_range, view.crop_aspect_range) == ((0.3, 1.0), (1.0, 1.0))
    assert (view_1.blur_prob, view_2.blur_prob) == (0.7, 0.2)
    assert (view_1.solarize_prob, view_2.solarize_prob) == (0.1, 0.4)


def test_step_result_does_not_depend_on_device_layout(experiment, host_state):
    assert jax.local_device_count() == 8
    batch = _batch()
    step = parallel.map_step(experiment.step_fn, donate_state=False)
    state_8, metrics_8 = step(parallel.replicate(host_state), parallel.shard_batch(batch))
    one = jax.tree.map(lambda x: x.reshape(1, *x.shape), batch)
    state_1, metrics_1 = step(_on_devices(host_state, 1), one)

    new_8, new_1 = parallel.fetch(state_8), jax.tree.map(lambda x: np.asarray(x[0]), state_1)
    assert int(new_8.step) == int(new_1.step) == 1
    # Compare the leaves the step changes; 1e-4 absorbs the different reduction orders.
    for a, b in zip(jax.tree.leaves(new_8), jax.tree.leaves(new_1), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(
        parallel.fetch(metrics_8)["loss"], np.asarray(metrics_1["loss"][0]), rtol=1e-5
    )
    # All 8 replicas hold the same state.
    leaf = jax.tree.leaves(state_8.online_params)[0]
    for shard in leaf.addressable_shards[1:]:
        np.testing.assert_array_equal(shard.data, leaf.addressable_shards[0].data)


def test_target_moves_toward_online_by_one_minus_tau(experiment, host_state):
    step = parallel.map_step(experiment.step_fn, donate_state=False)
    state = parallel.replicate(host_state)
    # Take a few steps first so that target and online differ.
    for i in range(3):
        state, _ = step(state, parallel.shard_batch(_batch(seed=i)))
    before = parallel.fetch(state)
    state, metrics = step(state, parallel.shard_batch(_batch(seed=9)))
    after = parallel.fetch(state)
    tau = float(parallel.fetch(metrics)["tau"])
    np.testing.assert_allclose(tau, float(experiment.tau_schedule(3)), rtol=1e-7)
    assert tau < 1.0
    online_new = {k: after.online_params[k] for k in ("encoder", "projector")}
    expected = jax.tree.map(lambda t, o: tau * t + (1 - tau) * o, before.target_params, online_new)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        after.target_params,
        expected,
    )
    # The target's BN statistics are its own (updated by its forward passes, not copied).
    stats_changed = jax.tree.map(
        lambda a, b: not np.allclose(a, b), after.target_batch_stats, before.target_batch_stats
    )
    assert any(jax.tree.leaves(stats_changed))


def test_loss_falls_on_a_fixed_batch(experiment, host_state):
    step = parallel.map_step(experiment.step_fn, donate_state=False)
    state = parallel.replicate(host_state)
    batch = parallel.shard_batch(_batch(size=16, seed=3))
    losses, probe_losses = [], []
    for _ in range(30):
        state, metrics = step(state, batch)
        values = parallel.fetch(metrics)
        losses.append(float(values["loss"]))
        probe_losses.append(float(values["probe_loss"]))
    assert np.all(np.isfinite(losses))
    assert min(losses) >= 0.0 and max(losses) <= 8.0
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses
    assert np.mean(probe_losses[-5:]) < np.mean(probe_losses[:3]), probe_losses


def test_bfloat16_loss_curve_tracks_float32():
    """bf16 compute (params, optimizer and loss stay f32) follows the f32 curve on the smoke run."""
    curves = {}
    for dtype in ("float32", "bfloat16"):
        config = smoke.get_config()
        config.num_steps = 12
        config.model.dtype = dtype
        experiment = train.build_experiment(config, num_classes=10, num_train_examples=256)
        state = parallel.replicate(jax.device_get(train.initial_state(experiment, seed=0)))
        step = parallel.map_step(experiment.step_fn)
        curves[dtype] = []
        for i in range(12):
            state, metrics = step(state, parallel.shard_batch(_batch(seed=i)))
            curves[dtype].append(float(parallel.fetch(metrics)["loss"]))
        leaf = jax.tree.leaves(parallel.fetch(state).online_params)[0]
        assert leaf.dtype == np.float32
    f32, bf16 = np.array(curves["float32"]), np.array(curves["bfloat16"])
    assert np.all(np.isfinite(bf16))
    # The loss falls from about 4 by more than 1 over these steps; bf16 stays within 0.25 of f32
    # at every step and within 5% on average.
    assert f32[0] - f32[-3:].mean() > 0.5, f32
    assert np.max(np.abs(bf16 - f32)) < 0.25, (f32, bf16)
    assert abs(bf16.mean() - f32.mean()) < 0.05 * f32.mean(), (f32, bf16)


def test_padding_of_whole_image_batches_does_not_reach_the_step(experiment, host_state):
    """Batches of non-square sources carry each image's valid size; the pixels outside it (the
    host's padding) must not influence the update at all, while the image pixels do."""
    batch = _batch(seed=5)
    rng = np.random.default_rng(6)
    batch["valid"] = np.stack([rng.integers(6, 17, 16), rng.integers(6, 17, 16)], 1).astype(
        np.int32
    )
    batch["valid"][np.arange(16) % 2 == 0, 0] = 16  # landscape and portrait images
    batch["valid"][np.arange(16) % 2 == 1, 1] = 16
    outside = np.ones((16, 16, 16), bool)
    for i, (h, w) in enumerate(batch["valid"]):
        outside[i, :h, :w] = False
    other_padding = {**batch, "image": batch["image"].copy()}
    other_padding["image"][outside] = 255 - other_padding["image"][outside]
    other_image = {**batch, "image": batch["image"].copy()}
    other_image["image"][~outside] = 255 - other_image["image"][~outside]

    step = parallel.map_step(experiment.step_fn, donate_state=False)
    states = [
        parallel.fetch(step(parallel.replicate(host_state), parallel.shard_batch(b))[0])
        for b in (batch, other_padding, other_image)
    ]
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[2]), strict=True)
    )
