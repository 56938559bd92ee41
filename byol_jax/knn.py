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
import json
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import features, input_pipeline, linear_eval

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


def split_features(
    encoder: nn.Module,
    encoder_variables: Mapping[str, Any],
    dataset: str,
    split: str,
    *,
    source_size: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float = 1.0,
    data_dir: str | None = None,
    idx_dir: str = input_pipeline.DEFAULT_IDX_DIR,
    batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Encoder features [N, D] and labels [N] of every example of a tfds/IDX split (eval view)."""
    batches = input_pipeline.eval_batches(
        dataset,
        split,
        data_dir=data_dir,
        batch_size=linear_eval.device_multiple(batch_size),
        source_size=source_size,
        idx_dir=idx_dir,
    )
    return linear_eval.encode_batches(
        encoder,
        encoder_variables,
        batches,
        image_size=image_size,
        crop_fraction=crop_fraction,
        mean=mean,
        std=std,
    )


def knn_evaluation(
    encoder: nn.Module,
    encoder_variables: Mapping[str, Any],
    train: linear_eval.LabeledImages,
    test: linear_eval.LabeledImages,
    *,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float = 1.0,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Encode both splits (eval transform, BN statistics) and run ``knn_accuracy``."""
    encode = functools.partial(
        linear_eval.encode_images,
        encoder,
        encoder_variables,
        image_size=image_size,
        crop_fraction=crop_fraction,
        mean=mean,
        std=std,
        batch_size=batch_size,
    )
    return knn_accuracy(
        encode(train.images),
        train.labels,
        encode(test.images),
        test.labels,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
    )


def evaluate_pretrained(
    path: str,
    *,
    dataset: str,
    train_split: str = "train",
    test_split: str = "test",
    data_dir: str | None = None,
    idx_dir: str = input_pipeline.DEFAULT_IDX_DIR,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    out_file: str | None = None,
    step: int | None = None,
    batch_size: int = 512,
) -> dict[str, Any]:
    """kNN accuracy of the encoder in a pretraining workdir or export directory.

    Writes the result as JSON to ``out_file`` when given.
    """
    from byol_jax import export  # export imports linear_eval: keep the import graph acyclic

    encoder, variables, spec = export.read_encoder(path, step=step)
    features = functools.partial(
        split_features,
        encoder,
        variables,
        dataset,
        source_size=spec.source_size,
        image_size=spec.image_size,
        mean=spec.mean,
        std=spec.std,
        crop_fraction=spec.crop_fraction,
        data_dir=data_dir,
        idx_dir=idx_dir,
        batch_size=batch_size,
    )
    train_features, train_labels = features(train_split)
    test_features, test_labels = features(test_split)
    result = knn_accuracy(
        train_features,
        train_labels,
        test_features,
        test_labels,
        num_classes=int(np.max(train_labels)) + 1,
        k=k,
        temperature=temperature,
    )
    result.update(
        encoder=spec.encoder,
        pretraining_step=spec.step,
        dataset=dataset,
        train_split=train_split,
        test_split=test_split,
    )
    if out_file:
        with open(out_file, "w") as f:
            json.dump(result, f, indent=2)
    return result


class KnnEvaluator:
    """kNN accuracy of the online encoder, for logging during pretraining (all processes).

    The labelled splits are loaded once; each ``run`` encodes them with the current encoder.
    """

    def __init__(
        self,
        encoder: nn.Module,
        train: linear_eval.LabeledImages,
        test: linear_eval.LabeledImages,
        *,
        num_classes: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_fraction: float,
        k: int,
        temperature: float,
    ):
        self._encoder, self._train, self._test = encoder, train, test
        self._options = dict(
            num_classes=num_classes,
            image_size=image_size,
            mean=mean,
            std=std,
            crop_fraction=crop_fraction,
            k=k,
            temperature=temperature,
        )

    def run(self, replicated_variables: Mapping[str, Any]) -> dict[str, float]:
        """``replicated_variables``: the online encoder's ``{"params", "batch_stats"}`` as they
        sit on the local devices in the training state; nothing else is copied."""
        o = self._options
        view = features.View(o["image_size"], o["crop_fraction"], tuple(o["mean"]), tuple(o["std"]))
        embed = functools.partial(
            features.embed_images, self._encoder, replicated_variables, view=view, replicated=True
        )
        result = knn_accuracy(
            embed(self._train.images),
            self._train.labels,
            embed(self._test.images),
            self._test.labels,
            num_classes=o["num_classes"],
            k=o["k"],
            temperature=o["temperature"],
        )
        return {"knn_accuracy": float(result["top1"])}
