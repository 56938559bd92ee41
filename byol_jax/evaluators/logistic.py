"""Multinomial logistic regression trained to convergence: the fair linear classifier.

What a user checks a table with (scikit-learn's ``LogisticRegression``): standardized features,
softmax cross-entropy plus an L2 penalty on the weights (not the bias), full batch, solved with
L-BFGS (``optax.lbfgs`` with its zoom line search) until the largest gradient entry is below
``tol``.
The L2 strength is chosen per representation on a held-out part of the training split (a small
grid, warm-started from the strongest penalty down), then the model is refit on all of train and
scored once on test. Every row of the baselines table goes through ``select_and_fit``.

Objective: ``mean_i CE(W x_i + b, y_i) + l2 / 2 * ||W||^2`` (scikit-learn's ``C`` is
``1 / (l2 * N)``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

DEFAULT_L2_GRID: tuple[float, ...] = (1e-2, 1e-3, 1e-4)


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and scale of the training features (constant features keep scale 1)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        x = np.asarray(x, np.float64)
        std = x.std(axis=0)
        return cls(
            x.mean(axis=0).astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.mean) / self.scale).astype(np.float32)


def _loss(params: dict[str, jax.Array], x, y, weight, l2, num_classes: int) -> jax.Array:
    logits = x @ params["w"] + params["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    ce = jnp.sum(ce * weight) / jnp.sum(weight)  # zero-weight rows: padding
    return ce + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def _solve(params, x, y, weight, l2, tol, *, num_classes: int, max_iter: int):
    fun = functools.partial(_loss, x=x, y=y, weight=weight, l2=l2, num_classes=num_classes)
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(params, updates), state

    def not_done(carry):
        _, state = carry
        count = optax.tree_utils.tree_get(state, "count")
        grad = optax.tree_utils.tree_get(state, "grad")
        norm = optax.tree_utils.tree_norm(grad, ord=jnp.inf)
        return (count == 0) | ((count < max_iter) & (norm >= tol))

    params, state = jax.lax.while_loop(not_done, step, (params, solver.init(params)))
    grad = jax.grad(fun)(params)
    return (
        params,
        optax.tree_utils.tree_get(state, "count"),
        optax.tree_utils.tree_norm(grad, ord=jnp.inf),
    )


@dataclasses.dataclass(frozen=True)
class Fit:
    """A trained classifier on standardized features, with how the solve ended."""

    weights: np.ndarray  # [D, C]
    bias: np.ndarray  # [C]
    l2: float
    iterations: int
    grad_norm: float
    converged: bool

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(np.asarray(x, np.float32) @ self.weights + self.bias, axis=1)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        y = np.asarray(y)
        valid = y >= 0
        return float(np.mean(self.predict(x[valid]) == y[valid])) if valid.any() else 0.0


def fit(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    l2: float,
    tol: float = 1e-4,
    max_iter: int = 500,
    init: Fit | None = None,
    pad_to: int | None = None,
) -> Fit:
    """Minimize the objective (module docstring) on features ``x`` [N, D] (already scaled).

    ``tol``: largest gradient entry at which the solve counts as converged (scikit-learn's lbfgs
    ``tol``); ``init`` warm-starts. ``pad_to``: pad with zero-weight rows to this many, so that
    fits on subsets of one set share one compilation.
    """
    count = len(x)
    rows = max(pad_to or count, count)
    weight = jnp.asarray(np.arange(rows) < count, jnp.float32)
    x = jnp.asarray(np.pad(np.asarray(x, np.float32), ((0, rows - count), (0, 0))))
    y = jnp.asarray(np.pad(np.asarray(y, np.int32), (0, rows - count)))
    if init is not None:
        params = {"w": jnp.asarray(init.weights), "b": jnp.asarray(init.bias)}
    else:
        params = {
            "w": jnp.zeros((x.shape[1], num_classes), jnp.float32),
            "b": jnp.zeros((num_classes,), jnp.float32),
        }
    params, count, norm = _solve(
        params,
        x,
        y,
        weight,
        jnp.float32(l2),
        jnp.float32(tol),
        num_classes=num_classes,
        max_iter=max_iter,
    )
    norm = float(norm)
    return Fit(
        np.asarray(params["w"]),
        np.asarray(params["b"]),
        float(l2),
        int(count),
        norm,
        norm < tol,
    )


def select_and_fit(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    holdout_fraction: float = 0.1,
    tol: float = 1e-4,
    max_iter: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Choose ``l2`` on a held-out part of train, refit on all of train, score test once.

    Returns ``{"top1", "l2", "holdout_top1": {l2: acc}, "iterations", "grad_norm",
    "converged"}`` (the last three of the final fit).
    """
    labels = np.asarray(train_labels)
    keep = labels >= 0
    x_all, y_all = np.asarray(train_features)[keep], labels[keep].astype(np.int32)
    if len(x_all) < 2:
        raise ValueError("logistic regression needs at least 2 labelled training examples")
    order = np.random.default_rng(seed).permutation(len(x_all))
    held = max(1, int(round(holdout_fraction * len(x_all))))
    held_idx, fit_idx = order[:held], order[held:]
    grid = sorted((float(v) for v in l2_grid), reverse=True)  # strong → weak: warm starts
    scores: dict[str, float] = {}
    if len(grid) > 1:
        scale = Standardizer.fit(x_all[fit_idx])
        x_fit, x_held = scale(x_all[fit_idx]), scale(x_all[held_idx])
        previous = None
        for l2 in grid:
            previous = fit(
                x_fit, y_all[fit_idx], num_classes=num_classes, l2=l2, tol=tol,
                max_iter=max_iter, init=previous, pad_to=len(x_all),
            )  # fmt: skip
            scores[repr(l2)] = previous.accuracy(x_held, y_all[held_idx])
    # max keeps the first of equal scores: ties go to the stronger penalty.
    best = max(grid, key=lambda l2: scores.get(repr(l2), 0.0))
    scale = Standardizer.fit(x_all)
    final = fit(scale(x_all), y_all, num_classes=num_classes, l2=best, tol=tol, max_iter=max_iter)
    return {
        "top1": final.accuracy(scale(test_features), np.asarray(test_labels)),
        "l2": best,
        "holdout_top1": scores,
        "iterations": final.iterations,
        "grad_norm": final.grad_norm,
        "converged": final.converged,
    }
