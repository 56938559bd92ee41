"""BYOL loss values and gradients; τ schedule and EMA against hand computations."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import ema, losses


class LossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_identical_directions_give_zero(self):
        p = jax.random.normal(jax.random.key(0), (5, 7))
        loss = self.variant(losses.byol_loss)(p, p * 2.0, 3.0 * p, p)
        np.testing.assert_allclose(loss, 0.0, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_opposite_directions_give_four_per_direction(self):
        p = jax.random.normal(jax.random.key(0), (5, 7))
        np.testing.assert_allclose(self.variant(losses.normalized_mse)(p, -p), 4.0, rtol=1e-6)
        # Both directions summed: 8 for the symmetric loss.
        np.testing.assert_allclose(self.variant(losses.byol_loss)(p, p, -p, -p), 8.0, rtol=1e-6)

    def test_scale_invariance_and_cosine_formula(self):
        k1, k2 = jax.random.split(jax.random.key(1))
        p, z = jax.random.normal(k1, (6, 9)), jax.random.normal(k2, (6, 9))
        cos = np.sum(p * z, -1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(z, axis=-1))
        np.testing.assert_allclose(losses.normalized_mse(p, z), 2 - 2 * cos, rtol=1e-5)
        np.testing.assert_allclose(
            losses.normalized_mse(3.5 * p, 0.01 * z), losses.normalized_mse(p, z), rtol=1e-5
        )

    def test_symmetric_pairing_and_batch_mean(self):
        keys = jax.random.split(jax.random.key(2), 4)
        p1, p2, z1, z2 = (jax.random.normal(k, (4, 3)) for k in keys)
        expected = np.mean(
            np.asarray(losses.normalized_mse(p1, z2)) + np.asarray(losses.normalized_mse(p2, z1))
        )
        np.testing.assert_allclose(losses.byol_loss(p1, p2, z1, z2), expected, rtol=1e-6)

    def test_no_gradient_reaches_target(self):
        keys = jax.random.split(jax.random.key(3), 4)
        p1, p2, z1, z2 = (jax.random.normal(k, (4, 3)) for k in keys)
        grads = jax.grad(losses.byol_loss, argnums=(0, 1, 2, 3))(p1, p2, z1, z2)
        assert np.all(grads[2] == 0) and np.all(grads[3] == 0)
        assert np.any(grads[0] != 0) and np.any(grads[1] != 0)

    def test_zero_vector_is_finite(self):
        z = jnp.zeros((2, 4))
        assert np.all(np.isfinite(losses.normalized_mse(z, jnp.ones((2, 4)))))

    def test_masked_cross_entropy_ignores_unlabelled(self):
        logits = jnp.array([[2.0, 0.0], [0.0, 3.0], [5.0, 0.0]])
        labels = jnp.array([0, 0, -1])
        loss, accuracy = losses.masked_cross_entropy(logits, labels)
        expected = np.mean(
            [-math.log(math.exp(2) / (math.exp(2) + 1)), -math.log(1 / (1 + math.exp(3)))]
        )
        np.testing.assert_allclose(loss, expected, rtol=1e-6)
        np.testing.assert_allclose(accuracy, 0.5)

    def test_projection_std_detects_collapse(self):
        collapsed = jnp.tile(jnp.arange(1.0, 5.0), (16, 1))
        spread = jax.random.normal(jax.random.key(0), (4096, 64))
        assert float(losses.projection_std(collapsed)) == pytest.approx(0.0, abs=1e-6)
        assert float(losses.projection_std(spread)) == pytest.approx(1 / 8, rel=0.05)


def test_tau_schedule_endpoints_and_midpoint():
    tau = ema.tau_schedule(0.996, 1000)
    np.testing.assert_allclose(tau(0), 0.996, rtol=1e-7)
    np.testing.assert_allclose(tau(1000), 1.0, rtol=1e-7)
    np.testing.assert_allclose(tau(5000), 1.0, rtol=1e-7)  # clamped past the end
    np.testing.assert_allclose(tau(500), 0.998, rtol=1e-7)
    np.testing.assert_allclose(tau(250), 1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2, rtol=1e-7)


def test_tau_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="base_tau"):
        ema.tau_schedule(1.5, 10)
    with pytest.raises(ValueError, match="total_steps"):
        ema.tau_schedule(0.99, 0)


def test_ema_update_against_hand_computation():
    target = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(4.0)}}
    online = {"a": jnp.array([3.0, -2.0]), "b": {"c": jnp.array(0.0)}}
    new = ema.ema_update(target, online, jnp.float32(0.9))
    np.testing.assert_allclose(new["a"], [0.9 * 1 + 0.1 * 3, 0.9 * 2 - 0.1 * 2], rtol=1e-6)
    np.testing.assert_allclose(new["b"]["c"], 3.6, rtol=1e-6)
