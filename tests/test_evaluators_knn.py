"""Weighted kNN (host and sharded-bank implementations) against brute-force NumPy."""

import numpy as np
import pytest
from evaluator_helpers import in_memory_data, local_features

from byol_jax import features, parallel
from byol_jax.evaluators import knn, registry


def _brute_force_scores(train, labels, queries, *, num_classes, k, temperature):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = np.zeros((len(queries), num_classes))
    for q, query in enumerate(queries.astype(np.float64)):
        sims = train.astype(np.float64) @ query
        for i in np.argsort(-sims)[:k]:
            scores[q, labels[i]] += np.exp(sims[i] / temperature)
    return scores


@pytest.mark.parametrize("k, temperature", [(20, 0.1), (1, 0.5), (500, 0.07)])
def test_scores_match_brute_force(k, temperature):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 12)).astype(np.float32) * rng.uniform(0.5, 3, (300, 1))
    labels = rng.integers(0, 6, 300)
    queries = rng.normal(size=(70, 12)).astype(np.float32)
    scores = knn.knn_scores(
        train, labels, queries, num_classes=6, k=k, temperature=temperature, chunk_size=32
    )
    expected = _brute_force_scores(
        train, labels, queries, num_classes=6, k=min(k, 300), temperature=temperature
    )
    np.testing.assert_allclose(scores, expected, rtol=2e-4)
    np.testing.assert_array_equal(np.argmax(scores, 1), np.argmax(expected, 1))


def test_accuracy_matches_brute_force_and_skips_unlabelled():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 8)) * 2
    labels = rng.integers(0, 4, 200)
    train = (centers[labels] + rng.normal(size=(200, 8))).astype(np.float32)
    test_labels = rng.integers(0, 4, 50)
    test = (centers[test_labels] + rng.normal(size=(50, 8))).astype(np.float32)
    train_labels = labels.copy()
    train_labels[:20] = -1  # unlabelled: must not vote
    result = knn.knn_accuracy(train, train_labels, test, test_labels, num_classes=4, k=15)
    scores = _brute_force_scores(
        train[20:], labels[20:], test, num_classes=4, k=15, temperature=0.1
    )
    assert result["top1"] == pytest.approx(np.mean(np.argmax(scores, 1) == test_labels))
    assert result["num_train_examples"] == 180 and result["k"] == 15
    assert result["top1"] > 0.8 and result["top5"] == 1.0


@pytest.mark.parametrize(
    "k, temperature, chunk_size, recall",
    [(20, 0.1, 64, 1.0), (1, 0.5, 8, 1.0), (500, 0.07, 1024, 1.0), (7, 0.1, 40, 0.9)],
)
def test_sharded_bank_matches_brute_force(k, temperature, chunk_size, recall):
    # 300 bank rows in 5 shards over 8 devices (about 40 rows per device, k up to 500 > bank):
    # per-device top-k and the candidate merge must give the exact single-bank vote.
    rng = np.random.default_rng(3)
    train = rng.normal(size=(300, 12)).astype(np.float32) * rng.uniform(0.5, 3, (300, 1))
    labels = rng.integers(0, 6, 300).astype(np.int32)
    labels[::17] = -1  # unlabelled: never a neighbour
    queries = rng.normal(size=(70, 12)).astype(np.float32)
    query_labels = rng.integers(0, 6, 70).astype(np.int32)
    bank = local_features(train, labels, shards=5, rows=64)
    query = local_features(queries, query_labels, shards=3, rows=24)
    result = knn.sharded_knn(
        bank, query, num_classes=6, k=k, temperature=temperature, chunk_size=chunk_size,
        recall_target=recall, return_scores=True,
    )  # fmt: skip
    keep = labels >= 0
    expected = _brute_force_scores(
        train[keep], labels[keep], queries, num_classes=6, k=min(k, int(keep.sum())),
        temperature=temperature,
    )  # fmt: skip
    got = result["scores"][query.mask]
    np.testing.assert_allclose(got, expected, rtol=2e-4)
    ranked = np.argsort(-expected, axis=1, kind="stable")
    assert result["top1"] == pytest.approx(np.mean(ranked[:, 0] == query_labels))
    assert result["top5"] == pytest.approx(
        np.mean(np.any(ranked[:, :5] == query_labels[:, None], 1))
    )
    assert result["num_train_examples"] == keep.sum() and result["num_test_examples"] == 70


def test_several_ks_in_one_pass_match_brute_force_for_each_k():
    # One top-k at the largest k serves every smaller k (the table's k=20 and k=200).
    rng = np.random.default_rng(4)
    train = rng.normal(size=(200, 8)).astype(np.float32)
    labels = rng.integers(0, 5, 200).astype(np.int32)
    queries = rng.normal(size=(50, 8)).astype(np.float32)
    query_labels = rng.integers(0, 5, 50).astype(np.int32)
    bank = local_features(train, labels, shards=4, rows=56)
    query = local_features(queries, query_labels, shards=2, rows=32)
    results = knn.sharded_knn_ks(
        bank, query, num_classes=5, ks=(3, 40, 150), temperature=0.1, chunk_size=16,
        return_scores=True,
    )  # fmt: skip
    assert sorted(results) == [3, 40, 150]
    for k, result in results.items():
        expected = _brute_force_scores(train, labels, queries, num_classes=5, k=k, temperature=0.1)
        np.testing.assert_allclose(result["scores"][query.mask], expected, rtol=2e-4)
        ranked = np.argsort(-expected, axis=1, kind="stable")
        assert result["top1"] == pytest.approx(np.mean(ranked[:, 0] == query_labels))
        assert result["k"] == k


def test_sharded_knn_rejects_bad_settings():
    bank = local_features(np.ones((4, 3)), np.zeros(4, np.int32), shards=1, rows=4)
    with pytest.raises(ValueError, match="recall_target"):
        knn.sharded_knn(bank, bank, num_classes=2, recall_target=0.0)
    with pytest.raises(ValueError, match="labelled"):
        empty = bank._replace(labels=np.full(4, -1, np.int32))
        knn.sharded_knn(empty, bank, num_classes=2)


def test_knn_evaluator_embeds_its_splits_and_votes():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 96).astype(np.int32)
    colour = np.eye(3)[labels][:, None, None, :] * 200
    images = (colour + rng.integers(0, 40, (96, 6, 6, 3))).astype(np.uint8)
    data = features.LabeledImages(images, labels)
    splits = {"train[:96]": data, "test": features.LabeledImages(images[:40], labels[:40])}
    eval_data = in_memory_data(splits, size=6, classes=3)
    entry = dict(type="knn", every_steps=5, train_split="train[:96]", k=5, temperature=0.1)
    scheduled = registry.build("knn", entry, eval_data)
    assert [s for s in range(1, 13) if scheduled.due(s, 12)] == [5, 10, 12]
    encoder = features.PixelEncoder()
    metrics = scheduled.run(encoder, {})
    embedded = features.embed_images(encoder, {}, images, eval_data.view)
    expected = knn.knn_accuracy(
        embedded, labels, embedded[:40], labels[:40], num_classes=3, k=5, temperature=0.1
    )
    assert metrics == {"knn_accuracy": expected["top1"], "knn_top5": expected["top5"]}
    assert metrics["knn_accuracy"] == 1.0
    # Replicated variables (as the training state holds them) give the same numbers.
    assert scheduled.run(encoder, parallel.replicate({}), replicated=True) == metrics
