"""Weighted k-nearest-neighbour classification on frozen features (Wu et al., 2018).

Features are L2-normalized, so the dot product is the cosine similarity. Each query takes its
``k`` most similar training examples; neighbour ``i`` votes for its class with weight
``exp(sim_i / temperature)`` and the class with the largest summed weight wins (the common
k=200, T=0.1 setting of instance-discrimination and BYOL-style papers).

The memory bank lives on the default device and queries run in fixed-size chunks, so one
compilation serves every chunk and the similarity matrix never exceeds ``chunk_size x N``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import features
from byol_jax.evaluators.base import EvalData

DEFAULT_K = 200
DEFAULT_TEMPERATURE = 0.1


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _chunk_scores(
    queries: jax.Array,
    bank: jax.Array,
    bank_labels: jax.Array,
    temperature: jax.Array,
    *,
    k: int,
    num_classes: int,
) -> jax.Array:
    # HIGHEST: TF32/bf16 matmuls (GPU/TPU defaults) would reorder near-tied neighbours.
    sims = jnp.dot(queries, bank.T, precision=jax.lax.Precision.HIGHEST)
    top_sims, top_index = jax.lax.top_k(sims, k)
    weights = jnp.exp(top_sims / temperature)
    votes = jax.nn.one_hot(bank_labels[top_index], num_classes, dtype=weights.dtype)
    return jnp.einsum("qk,qkc->qc", weights, votes)


def knn_scores(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    query_features: np.ndarray,
    *,
    num_classes: int,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int = 256,
) -> np.ndarray:
    """Class scores [Q, num_classes]: summed ``exp(cos / T)`` of each query's k nearest neighbours.

    Training examples with a negative (missing) label are left out of the bank; ``k`` is
    capped at the bank size.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    labels = np.asarray(train_labels)
    keep = labels >= 0
    bank = jnp.asarray(_normalize(np.asarray(train_features)[keep]))
    bank_labels = jnp.asarray(labels[keep].astype(np.int32))
    if bank.shape[0] == 0:
        raise ValueError("kNN needs at least one labelled training example")
    k = min(int(k), bank.shape[0])
    queries = _normalize(query_features)
    scores = []
    for start in range(0, len(queries), chunk_size):
        chunk = queries[start : start + chunk_size]
        padded = np.pad(chunk, ((0, chunk_size - len(chunk)), (0, 0)))
        out = _chunk_scores(
            jnp.asarray(padded),
            bank,
            bank_labels,
            jnp.float32(temperature),
            k=k,
            num_classes=num_classes,
        )
        scores.append(np.asarray(out)[: len(chunk)])
    if not scores:
        return np.zeros((0, num_classes), np.float32)
    return np.concatenate(scores)


def knn_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
) -> dict[str, Any]:
    """Top-1/top-5 of the weighted kNN vote over the labelled test examples."""
    scores = knn_scores(
        train_features,
        train_labels,
        test_features,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
    )
    labels = np.asarray(test_labels)
    valid = labels >= 0
    # Stable sort: among tied scores the lower class index ranks first (as argmax does).
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, : min(5, num_classes)]
    top1 = ranked[:, 0] == labels
    top5 = np.any(ranked == labels[:, None], axis=1)
    count = max(int(valid.sum()), 1)
    return {
        "top1": float(np.sum(top1 & valid) / count),
        "top5": float(np.sum(top5 & valid) / count),
        "k": int(min(k, int(np.sum(np.asarray(train_labels) >= 0)))),
        "temperature": float(temperature),
        "num_train_examples": int(np.sum(np.asarray(train_labels) >= 0)),
        "num_test_examples": int(valid.sum()),
    }


class KnnEvaluator:
    """Weighted kNN accuracy of an encoder: its features of a labelled train split form the
    memory bank, its features of the test split are the queries (eval view, BN statistics).

    The splits are held in host memory and embedded over all devices of all processes at each
    ``run``; every process gets the same numbers.
    """

    def __init__(
        self,
        train: features.LabeledImages,
        test: features.LabeledImages,
        *,
        num_classes: int,
        view: features.View,
        k: int = DEFAULT_K,
        temperature: float = DEFAULT_TEMPERATURE,
        batch_size: int = 512,
    ):
        if k < 1 or temperature <= 0:
            raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, T={temperature}")
        self.train, self.test, self.view = train, test, view
        self.num_classes, self.k, self.temperature = num_classes, int(k), float(temperature)
        self.batch_size = batch_size

    @classmethod
    def from_options(
        cls,
        data: EvalData,
        *,
        train_split: str = "",
        test_split: str = "",
        k: int = DEFAULT_K,
        temperature: float = DEFAULT_TEMPERATURE,
    ) -> KnnEvaluator:
        train, test = data.splits(train_split, test_split)
        return cls(train, test, **data.common, k=k, temperature=temperature)

    def run(
        self, encoder: nn.Module, variables: Mapping[str, Any], *, replicated: bool = False
    ) -> dict[str, float]:
        embed = functools.partial(
            features.embed_images,
            encoder,
            variables,
            view=self.view,
            batch_size=self.batch_size,
            replicated=replicated,
        )
        result = knn_accuracy(
            embed(self.train.images),
            self.train.labels,
            embed(self.test.images),
            self.test.labels,
            num_classes=self.num_classes,
            k=self.k,
            temperature=self.temperature,
        )
        return {"accuracy": result["top1"], "top5": result["top5"]}

    def describe(self, metrics: Mapping[str, float]) -> str:
        return (
            f"kNN (k={self.k}, T={self.temperature:g}, {len(self.train.labels)} train / "
            f"{len(self.test.labels)} test images): top-1 {100 * metrics['accuracy']:.2f}%, "
            f"top-5 {100 * metrics['top5']:.2f}%"
        )
