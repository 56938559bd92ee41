"""Evaluators built from config entries: every shipped entry builds; bad entries are explained."""

import numpy as np
import pytest
from evaluator_helpers import coloured_images, in_memory_data

from byol_jax.evaluators import registry
from configs import common, fashion_mnist


def _data():
    rng = np.random.default_rng(0)
    split = coloured_images(32, rng, size=8)
    return in_memory_data(
        {"train": split, "test": split, "train[:10000]": split, "test[:2000]": split}, size=8
    )


def test_every_default_entry_builds_with_its_type():
    data = _data()
    for config in (common.base_config(), fashion_mnist.get_config()):
        for name, entry in config.evals.items():
            scheduled = registry.build(name, entry.to_dict(), data)
            assert isinstance(scheduled.evaluator, registry.TYPES[entry.type])
            assert scheduled.name == name
    config = fashion_mnist.get_config()
    assert config.evals.knn.every_steps == 1000 and config.evals.table.at_end


@pytest.mark.parametrize(
    "entry, message",
    [
        (dict(type="svm"), "config.evals.bad.type='svm' is not an evaluator"),
        (dict(type="knn", kk=3), "unknown option(s) ['kk'] for type 'knn'"),
        (dict(type="knn", every_steps=-1), "every_steps=-1"),
        (dict(type="knn", k=0), "config.evals.bad: kNN needs k >= 1"),
        (dict(type="baselines", holdout_fraction=1.5), "holdout_fraction must be in (0, 1)"),
    ],
)
def test_bad_entries_are_one_clear_error(entry, message):
    with pytest.raises(registry.EvaluatorError) as error:
        registry.build("bad", entry, _data())
    assert message in str(error.value)


def test_schedule():
    periodic = registry.Scheduled("knn", "knn", evaluator=None, every_steps=4)
    assert [s for s in range(1, 11) if periodic.due(s, 10)] == [4, 8, 10]
    at_end = registry.Scheduled("table", "baselines", evaluator=None, at_end=True)
    assert not any(at_end.due(s, 10) for s in range(1, 11))
