"""The fair classifier: L-BFGS logistic regression against Newton's method in float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evaluator_helpers import local_features, separable_features

from byol_jax.evaluators import logistic


def test_transposed_copy_gradient_equals_autodiff():
    # The CPU path's hand-written backward (xt @ g) against autodiff through x @ w.
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(37, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(37, 4)), jnp.float32)

    def through(project):
        return jax.grad(lambda w_: jnp.sum(jnp.sin(project(w_)) * g))(w)

    custom = through(lambda w_: logistic._project(x, logistic._transposed(x, True), w_))
    np.testing.assert_allclose(custom, through(lambda w_: x @ w_), rtol=1e-5, atol=1e-5)
    assert logistic._transposed(x, False) is None
    assert logistic.use_transposed_copy() == (jax.default_backend() == "cpu")


def _newton(x, y, num_classes, l2, iterations=30):
    """Independent solution: full Newton steps on the same objective, in float64."""
    n, d = x.shape
    xb = np.concatenate([x, np.ones((n, 1))], axis=1)  # last row of W is the bias
    w = np.zeros((d + 1, num_classes))
    onehot = np.eye(num_classes)[y]
    penalty = np.ones(d + 1)
    penalty[-1] = 0.0  # the bias is not penalized
    for _ in range(iterations):
        logits = xb @ w
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = xb.T @ (p - onehot) / n + l2 * penalty[:, None] * w
        # Hessian of the mean cross-entropy over the flattened (d+1, C) parameters.
        hess = np.zeros(((d + 1) * num_classes,) * 2)
        for i in range(n):
            block = np.diag(p[i]) - np.outer(p[i], p[i])
            hess += np.kron(np.outer(xb[i], xb[i]), block) / n
        hess += np.diag(np.repeat(l2 * penalty, num_classes))
        # Tiny ridge: softmax parameters are only defined up to a shift of the bias.
        step = np.linalg.solve(hess + 1e-10 * np.eye(len(hess)), grad.reshape(-1))
        w -= step.reshape(d + 1, num_classes)
    return w[:-1], w[-1]


def _plain_autodiff(monkeypatch):
    """What accelerators run: no transposed copy of the features, the gradient by autodiff."""
    monkeypatch.setattr(logistic, "use_transposed_copy", lambda: False)


@pytest.mark.parametrize("transposed", [True, False], ids=["cpu_transposed_copy", "autodiff"])
def test_lbfgs_matches_newton_on_a_small_problem(transposed, monkeypatch):
    if not transposed:
        _plain_autodiff(monkeypatch)
    rng = np.random.default_rng(0)
    n, d, c = 120, 5, 3
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, d)) + 0.8 * np.eye(c, d)[y]  # overlapping classes: finite optimum
    l2 = 1e-2
    fit = logistic.fit(x.astype(np.float32), y, num_classes=c, l2=l2, tol=1e-6, max_iter=500)
    assert fit.converged and fit.grad_norm < 1e-6
    w, b = _newton(x, y, c, l2)
    # The bias is defined up to a common shift: compare logits differences, i.e. centred values.
    np.testing.assert_allclose(fit.weights, w, atol=2e-4)
    np.testing.assert_allclose(fit.bias - fit.bias.mean(), b - b.mean(), atol=2e-4)
    # Zero-weight padding rows (one compilation for subsets of one set) change nothing.
    padded = logistic.fit(x, y, num_classes=c, l2=l2, tol=1e-6, max_iter=500, pad_to=200)
    np.testing.assert_allclose(padded.weights, w, atol=2e-4)


def test_select_and_fit_picks_l2_on_held_out_train_and_standardizes():
    rng = np.random.default_rng(1)
    n, d, c = 400, 20, 4
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, d)) + 1.5 * np.eye(c, d)[y]
    x[:, 0] *= 1000.0  # a badly scaled feature: standardization must make it harmless
    grid = (1.0, 1e-3)
    result = logistic.select_and_fit(
        x[:300], y[:300], x[300:], y[300:], num_classes=c, l2_grid=grid, holdout_fraction=0.2,
        extend_grid=False,
    )  # fmt: skip
    assert set(result["holdout_top1"]) == {repr(v) for v in grid}
    best = max(grid, key=lambda v: result["holdout_top1"][repr(v)])
    assert result["l2"] == best and result["converged"]
    # The reported test accuracy is the refit model's, recomputed here independently.
    scale = logistic.Standardizer.fit(x[:300])
    refit = logistic.fit(scale(x[:300]), y[:300], num_classes=c, l2=best)
    assert result["top1"] == pytest.approx(refit.accuracy(scale(x[300:]), y[300:]))
    assert result["top1"] > 0.6  # separable-ish clusters; chance is 0.25


@pytest.mark.parametrize("grid", [(10.0, 1.0), (1e-5, 1e-6)])
def test_a_choice_at_the_grid_edge_extends_the_grid_until_it_is_inside(grid):
    # Overlapping classes with few examples per feature: the held-out optimum is a moderate L2,
    # far from both starting grids, so the search must walk to it decade by decade.
    rng = np.random.default_rng(4)
    n, d, c = 300, 40, 3
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, d)) + 0.6 * np.eye(c, d)[y]
    result = logistic.select_and_fit(
        x[:240], y[:240], x[240:], y[240:], num_classes=c, l2_grid=grid, holdout_fraction=0.3
    )
    searched = sorted(float(v) for v in result["holdout_top1"])
    assert set(grid) <= set(searched) and len(searched) > len(grid)
    ratios = np.array(searched[1:]) / np.array(searched[:-1])
    np.testing.assert_allclose(ratios, 10.0, rtol=1e-9)  # one decade per step
    # The choice is the held-out argmax (ties to the stronger) and now sits strictly inside.
    scores = result["holdout_top1"]
    best = max(sorted(searched, reverse=True), key=lambda v: scores[repr(v)])
    assert result["l2"] == best and searched[0] < best < searched[-1]
    # Each step beyond the starting grid was taken because its neighbour was the edge winner.
    outside = [v for v in searched if v not in grid]
    assert outside and all(min(grid) / 1e6 < v < max(grid) * 1e6 for v in outside)
    fixed = logistic.select_and_fit(
        x[:240], y[:240], x[240:], y[240:], num_classes=c, l2_grid=grid, holdout_fraction=0.3,
        extend_grid=False,
    )  # fmt: skip
    assert sorted(float(v) for v in fixed["holdout_top1"]) == sorted(grid)


@pytest.mark.parametrize("transposed", [True, False], ids=["cpu_transposed_copy", "autodiff"])
def test_sharded_fit_equals_host_fit_on_the_same_rows(transposed, monkeypatch):
    if not transposed:
        _plain_autodiff(monkeypatch)
    # Rows split into 3 shards (padding between them) over 8 devices: the same held-out rows,
    # standardization, L2 choice and solution as select_and_fit on the concatenated rows.
    rng = np.random.default_rng(7)
    x, y = separable_features(500, rng, dim=10, classes=4)
    x = x + rng.normal(scale=1.5, size=x.shape).astype(np.float32)  # not separable: L2 matters
    y[::23] = -1  # unlabelled rows take no part
    xt, yt = separable_features(120, rng, dim=10, classes=4)
    grid = (1.0, 1e-2, 1e-4)
    host = logistic.select_and_fit(x, y, xt, yt, num_classes=4, l2_grid=grid, seed=3)
    sharded = logistic.select_and_fit_sharded(
        local_features(x, y, shards=3, rows=176),
        local_features(xt, yt, shards=2, rows=64),
        num_classes=4,
        l2_grid=grid,
        seed=3,
    )
    assert sharded["l2"] == host["l2"] and sharded["converged"]
    assert sharded["holdout_top1"] == pytest.approx(host["holdout_top1"], abs=1 / 50)
    assert sharded["top1"] == pytest.approx(host["top1"], abs=1 / 120)
