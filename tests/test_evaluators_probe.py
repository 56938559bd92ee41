"""The online probe evaluator against an independent NumPy computation (8 fake devices)."""

import jax
import numpy as np
from evaluator_helpers import coloured_images, in_memory_data, tiny_encoder

from byol_jax import features, parallel
from byol_jax.evaluators import registry


def test_probe_accuracy_matches_numpy_on_every_example_once():
    encoder, variables = tiny_encoder(8)
    rng = np.random.default_rng(9)
    test = coloured_images(70, rng, size=8)  # 70: the last streamed batch is padded
    data = in_memory_data({"test": test}, size=8)
    scheduled = registry.build("probe", dict(type="probe", at_end=True), data)
    dim = features.feature_dim(encoder, variables, data.view)
    probe = {
        "kernel": rng.normal(size=(dim, 4)).astype(np.float32),
        "bias": rng.normal(size=4).astype(np.float32),
    }
    metrics = scheduled.run(encoder, {**variables, "probe": probe})

    embedded = features.embed_images(encoder, variables, test.images, data.view)
    predicted = np.argmax(embedded @ probe["kernel"] + probe["bias"], axis=1)
    assert metrics["probe_examples"] == 70
    assert metrics["probe_accuracy"] == np.mean(predicted == test.labels)
    replicated = parallel.replicate(jax.tree.map(np.asarray, {**variables, "probe": probe}))
    assert scheduled.run(encoder, replicated, replicated=True) == metrics
