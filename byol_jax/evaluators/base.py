"""What every evaluator shares: the ``Evaluator`` protocol and the data it may draw on.

An evaluator is a small object built once from explicit options (``registry.build``) and run any
number of times: ``run(encoder, variables) -> {metric: float}``. ``variables`` are the encoder's
``{"params", "batch_stats"}``, on the host or already replicated over the local devices
(``replicated=True``, as the training state holds them, so they never leave the devices).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import flax.linen as nn

from byol_jax import features


class EvaluatorError(ValueError):
    """An evaluator entry that cannot be built (unknown type or option, bad value)."""


class Evaluator(Protocol):
    def run(
        self, encoder: nn.Module, variables: Mapping[str, Any], *, replicated: bool = False
    ) -> dict[str, float]: ...

    def describe(self, metrics: Mapping[str, float]) -> str:
        """The console text of ``metrics`` (one line, or a small table)."""
        ...


@dataclasses.dataclass(frozen=True)
class EvalData:
    """The data side of an evaluation, resolved by the caller (train loop or launch).

    ``load_split(name)``: a labelled split in host memory (every process holds all of it);
    ``stream_split(name)``: host batches (image/label/mask) of this process's share, for splits
    too large for memory; ``view``: the deterministic evaluation transform.
    """

    load_split: Callable[[str], features.LabeledImages]
    stream_split: Callable[[str], Iterable[dict[str, Any]]]
    train_split: str
    test_split: str
    num_classes: int
    view: features.View
    seed: int = 0

    def splits(
        self, train_split: str = "", test_split: str = ""
    ) -> tuple[features.LabeledImages, features.LabeledImages]:
        """An evaluator's (train, test) splits in memory; "" means the data's default split."""
        return (
            self.load_split(train_split or self.train_split),
            self.load_split(test_split or self.test_split),
        )

    @property
    def common(self) -> dict[str, Any]:
        """What every in-memory evaluator's constructor takes besides its splits."""
        return {"num_classes": self.num_classes, "view": self.view}
