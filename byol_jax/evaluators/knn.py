"""Weighted k-nearest-neighbour classification on frozen features (Wu et al., 2018).

Features are L2-normalized, so the dot product is the cosine similarity. Each query takes its
``k`` most similar training examples; neighbour ``i`` votes for its class with weight
``exp(sim_i / temperature)`` and the class with the largest summed weight wins (the common
k=200, T=0.1 setting of instance-discrimination and BYOL-style papers).

Two implementations of the same vote:

* ``knn_scores`` / ``knn_accuracy``: host arrays, the bank on one device (small data, tests);
* ``sharded_knn``, which the evaluator runs: the bank stays split over every device of every
  process (each process's own ``features.LocalFeatures``, never gathered). Each call takes a
  chunk of queries from every device, all-gathers only those queries, scores them against each
  device's bank rows, keeps a top-k per device, and an all-to-all sends each device just the
  candidates (similarity, label) of its own queries, which it merges into the final top-k. The
  global top-k is contained in the union of per-shard top-k, so the merge is exact: the scores
  equal the single-device vote up to float summation order.

Precision: similarities use ``Precision.HIGHEST`` (on TPU, bf16 passes would reorder near-tied
neighbours; on CPU it is the default anyway). ``recall_target < 1`` swaps the per-device
``lax.top_k`` for ``lax.approx_max_k`` (TPU's partial-reduce top-k; exact on CPU/GPU), whose
per-shard recall is at least that target in expectation; the merge stays exact. At ImageNet size
(1.28 M x 2048 bank) exact top-k is affordable: each device holds N x D / devices of the bank.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import features, parallel
from byol_jax.evaluators.base import EvalData

DEFAULT_K = 200
DEFAULT_TEMPERATURE = 0.1
SIMILARITY_BYTES = 1 << 28  # the largest block of query x bank similarities per device


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


# ---- the bank split over every device of every process -------------------------------------


def _local_top(queries, bank, bank_labels, *, k: int, recall_target: float):
    # All devices' query chunks against this device's bank rows; rows with label -1 (padding,
    # unlabelled) never win.
    sims = jnp.dot(queries, bank.T, precision=jax.lax.Precision.HIGHEST)
    sims = jnp.where(bank_labels[None, :] >= 0, sims, -jnp.inf)
    if recall_target < 1.0:
        top_sims, top_index = jax.lax.approx_max_k(sims, k, recall_target=recall_target)
    else:
        top_sims, top_index = jax.lax.top_k(sims, k)
    return top_sims, bank_labels[top_index]


def _sharded_chunk(
    bank: jax.Array,
    bank_labels: jax.Array,
    queries: jax.Array,
    query_labels: jax.Array,
    temperature: jax.Array,
    *,
    ks: tuple[int, ...],
    num_classes: int,
    recall_target: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    chunk = queries.shape[0]
    every_query = parallel.gather_over_devices(queries)  # [devices * chunk, D]
    devices = every_query.shape[0] // chunk
    k = max(ks)
    local_k = min(k, bank.shape[0])
    top_sims, top_labels = _local_top(
        every_query, bank, bank_labels, k=local_k, recall_target=recall_target
    )
    # Block j (queries of device j) goes to device j; what arrives are all devices' candidates
    # for this device's own queries: [devices, chunk, local_k].
    sims = parallel.exchange_over_devices(top_sims.reshape(devices, chunk, local_k))
    labels = parallel.exchange_over_devices(top_labels.reshape(devices, chunk, local_k))
    sims = sims.transpose(1, 0, 2).reshape(chunk, devices * local_k)
    labels = labels.transpose(1, 0, 2).reshape(chunk, devices * local_k)
    best, index = jax.lax.top_k(sims, min(k, devices * local_k))
    weights = jnp.exp(best / temperature)  # exp(-inf) = 0: fewer than k labelled rows
    votes = jax.nn.one_hot(jnp.take_along_axis(labels, index, 1), num_classes, dtype=jnp.float32)
    valid = query_labels >= 0
    all_scores, counts = [], {"count": jnp.sum(valid)}
    for i, k_ in enumerate(ks):
        # top_k sorts: the k_ nearest of every smaller k are the first k_ of the largest one.
        scores = jnp.einsum("qk,qkc->qc", weights[:, :k_], votes[:, :k_])
        # Ties in score: the lower class ranks first (lax.top_k), as a stable argsort does.
        ranked = jax.lax.top_k(scores, min(5, num_classes))[1]
        counts[f"top1_{i}"] = jnp.sum((ranked[:, 0] == query_labels) & valid)
        counts[f"top5_{i}"] = jnp.sum(jnp.any(ranked == query_labels[:, None], axis=1) & valid)
        all_scores.append(scores)
    return jnp.stack(all_scores), parallel.sum_over_devices(counts)


@functools.lru_cache(maxsize=16)
def _sharded_fn(ks: tuple[int, ...], num_classes: int, recall_target: float):
    fn = functools.partial(
        _sharded_chunk, ks=ks, num_classes=num_classes, recall_target=recall_target
    )
    return parallel.map_function(fn, in_axes=(0, 0, 0, 0, None))


def _pad_rows(x: np.ndarray, rows: int, fill: float | int = 0) -> np.ndarray:
    out = np.full((rows, *x.shape[1:]), fill, x.dtype)
    out[: len(x)] = x
    return out


def sharded_knn(
    bank: features.LocalFeatures,
    queries: features.LocalFeatures,
    *,
    num_classes: int,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int = 1024,
    recall_target: float = 1.0,
    return_scores: bool = False,
) -> dict[str, Any]:
    """Top-1/top-5 of the weighted kNN vote, the bank split over all devices (module docstring).

    ``bank``/``queries``: this process's rows (every process calls this with its own; all get
    the same metrics). ``chunk_size``: queries scored per call over all devices (the per-device
    similarity block is ``chunk_size x bank rows per device``, capped at ``SIMILARITY_BYTES``).
    ``return_scores`` adds this process's class scores [query rows, num_classes] (padding rows
    included).
    """
    return sharded_knn_ks(
        bank, queries, num_classes=num_classes, ks=(k,), temperature=temperature,
        chunk_size=chunk_size, recall_target=recall_target, return_scores=return_scores,
    )[k]  # fmt: skip


def sharded_knn_ks(
    bank: features.LocalFeatures,
    queries: features.LocalFeatures,
    *,
    num_classes: int,
    ks: Sequence[int] = (DEFAULT_K,),
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int = 1024,
    recall_target: float = 1.0,
    return_scores: bool = False,
) -> dict[int, dict[str, Any]]:
    """``sharded_knn`` for several ``ks`` at the cost of the largest: one similarity pass and
    one top-k, whose first k entries are every smaller k's neighbours. Returns ``{k: result}``.
    """
    ks = tuple(int(k) for k in ks)
    if temperature <= 0 or not ks or min(ks) < 1:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={ks}, T={temperature}")
    if not 0.0 < recall_target <= 1.0:
        raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
    labelled = int(parallel.sum_over_processes(np.int64(np.sum(bank.labels >= 0))))
    if labelled == 0:
        raise ValueError("kNN needs at least one labelled training example")
    devices = parallel.local_device_count()
    local_rows = -(-len(bank.labels) // devices) * devices
    bank_rows = local_rows // devices  # per device
    bank_x = _pad_rows(_normalize(bank.features), local_rows)
    bank_y = _pad_rows(bank.labels.astype(np.int32), local_rows, -1)
    device_bank = parallel.shard_batch({"x": bank_x, "y": bank_y})

    # Queries per device and call: chunk_size over all devices, and at most SIMILARITY_BYTES of
    # similarities per device (on CPU that block is host memory).
    every = parallel.global_device_count()
    per_device = max(1, min(chunk_size // every, SIMILARITY_BYTES // (4 * every * bank_rows)))
    per_call = per_device * devices
    # Every process makes the same number of calls (query rows are equal on all processes).
    calls = max(1, parallel.max_over_processes(-(-len(queries.labels) // per_call)))
    query_x = _pad_rows(_normalize(queries.features), calls * per_call)
    query_y = _pad_rows(queries.labels.astype(np.int32), calls * per_call, -1)
    fn = _sharded_fn(ks, int(num_classes), float(recall_target))
    totals: dict[str, int] = {}
    scores = []
    for call in range(calls):
        rows = slice(call * per_call, (call + 1) * per_call)
        out, counts = fn(
            device_bank["x"],
            device_bank["y"],
            parallel.shard_batch(query_x[rows]),
            parallel.shard_batch(query_y[rows]),
            jnp.float32(temperature),
        )
        for name, value in parallel.fetch(counts).items():
            totals[name] = totals.get(name, 0) + int(value)
        if return_scores:
            scores.append(np.asarray(out))  # [local devices, len(ks), per device, classes]
    count = max(totals["count"], 1)
    results = {}
    for i, k in enumerate(ks):
        results[k] = {
            "top1": totals[f"top1_{i}"] / count,
            "top5": totals[f"top5_{i}"] / count,
            "k": min(k, labelled),
            "temperature": float(temperature),
            "num_train_examples": labelled,
            "num_test_examples": totals["count"],
        }
        if return_scores:
            rows = [block[:, i].reshape(-1, block.shape[-1]) for block in scores]
            results[k]["scores"] = np.concatenate(rows)[: len(queries.labels)]
    return results


class KnnEvaluator:
    """Weighted kNN accuracy of an encoder: its features of a labelled train split form the
    memory bank, its features of the test split are the queries (eval view, BN statistics).

    Each process reads and embeds only its shards of both splits; the bank stays split over all
    devices (``sharded_knn``); every process gets the same numbers.
    """

    def __init__(
        self,
        train: features.SplitShards,
        test: features.SplitShards,
        *,
        num_classes: int,
        view: features.View,
        k: int = DEFAULT_K,
        temperature: float = DEFAULT_TEMPERATURE,
        recall_target: float = 1.0,
        chunk_size: int = 1024,
    ):
        if k < 1 or temperature <= 0:
            raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, T={temperature}")
        if not 0.0 < recall_target <= 1.0:
            raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
        self.train, self.test, self.view = train, test, view
        self.num_classes, self.k, self.temperature = num_classes, int(k), float(temperature)
        self.recall_target, self.chunk_size = float(recall_target), int(chunk_size)

    @classmethod
    def from_options(
        cls,
        data: EvalData,
        *,
        train_split: str = "",
        test_split: str = "",
        k: int = DEFAULT_K,
        temperature: float = DEFAULT_TEMPERATURE,
        recall_target: float = 1.0,
        chunk_size: int = 1024,
    ) -> KnnEvaluator:
        train, test = data.splits(train_split, test_split)
        return cls(
            train, test, **data.common, k=k, temperature=temperature,
            recall_target=recall_target, chunk_size=chunk_size,
        )  # fmt: skip

    def run(
        self, encoder: nn.Module, variables: Mapping[str, Any], *, replicated: bool = False
    ) -> dict[str, float]:
        if not replicated:
            variables, replicated = parallel.replicate(dict(variables)), True
        embed = functools.partial(
            features.embed_split, encoder, variables, view=self.view, replicated=replicated
        )
        result = sharded_knn(
            embed(self.train),
            embed(self.test),
            num_classes=self.num_classes,
            k=self.k,
            temperature=self.temperature,
            chunk_size=self.chunk_size,
            recall_target=self.recall_target,
        )
        return {"accuracy": result["top1"], "top5": result["top5"]}

    def describe(self, metrics: Mapping[str, float]) -> str:
        return (
            f"kNN (k={self.k}, T={self.temperature:g}, {self.train.num_examples} train / "
            f"{self.test.num_examples} test images): top-1 {100 * metrics['accuracy']:.2f}%, "
            f"top-5 {100 * metrics['top5']:.2f}%"
        )
