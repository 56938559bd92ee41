"""The online linear probe's test accuracy (the paper's online probe, trained during pretraining).

The probe is a linear layer on the stop-gradient encoder embedding, trained by the train step on
the un-augmented training images; this evaluator scores it on every example of a split exactly
once (streamed, each process its own share, counts summed over all devices). It needs the
probe's parameters, so it runs on a training state, not on an exported encoder.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from byol_jax import features, parallel
from byol_jax.evaluators.base import EvalData

PROBE_KEY = "probe"  # the probe head's params inside ``variables``


def _probe_counts(
    variables: Mapping[str, Any],
    batch: dict[str, jax.Array],
    *,
    encoder: nn.Module,
    head: nn.Module,
    view: features.View,
) -> dict[str, jax.Array]:
    views = features.eval_views(batch["image"], view)
    encoder_vars = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    embedding = encoder.apply(encoder_vars, views, train=False)
    logits = head.apply({"params": variables[PROBE_KEY]}, embedding)
    valid = batch["mask"] & (batch["label"] >= 0)
    correct = (jnp.argmax(logits, -1) == batch["label"]) & valid
    return parallel.sum_over_devices({"correct": jnp.sum(correct), "count": jnp.sum(valid)})


class ProbeEvaluator:
    """Top-1 of the online probe on a streamed split.

    ``variables`` of ``run``: the encoder's ``{"params", "batch_stats"}`` plus the probe head's
    params under ``"probe"``.
    """

    def __init__(
        self,
        batches: Callable[[], Iterable[dict[str, Any]]],
        *,
        num_classes: int,
        view: features.View,
    ):
        self._batches, self.view = batches, view
        self._head = nn.Dense(max(num_classes, 1))
        self._compiled: tuple[nn.Module, Callable] | None = None  # (encoder, mapped count fn)

    @classmethod
    def from_options(cls, data: EvalData, *, split: str = "") -> ProbeEvaluator:
        name = split or data.test_split
        return cls(
            functools.partial(data.stream_split, name), num_classes=data.num_classes, view=data.view
        )

    def run(
        self, encoder: nn.Module, variables: Mapping[str, Any], *, replicated: bool = False
    ) -> dict[str, float]:
        if not replicated:
            variables = parallel.replicate(dict(variables))
        if self._compiled is None or self._compiled[0] is not encoder:
            fn = functools.partial(_probe_counts, encoder=encoder, head=self._head, view=self.view)
            self._compiled = (encoder, parallel.map_function(fn))
        count_fn = self._compiled[1]
        correct = count = 0
        for batch in self._batches():
            counts = parallel.fetch(count_fn(variables, parallel.shard_batch(batch)))
            correct += int(counts["correct"])
            count += int(counts["count"])
        return {"accuracy": correct / max(count, 1), "examples": float(count)}

    def describe(self, metrics: Mapping[str, float]) -> str:
        return (
            f"online probe: top-1 {100 * metrics['accuracy']:.2f}% on "
            f"{int(metrics['examples'])} test images"
        )
