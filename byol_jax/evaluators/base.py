"""What every evaluator shares: the ``Evaluator`` protocol and the data it may draw on.

An evaluator is a small object built once from explicit options (``registry.build``) and run any
number of times: ``run(encoder, variables) -> {metric: float}``. ``variables`` are the encoder's
``{"params", "batch_stats"}``, on the host or already replicated over the local devices
(``replicated=True``, as the training state holds them, so they never leave the devices).

Every evaluator reads a split as ``features.SplitShards``: each process reads only its own
shards (``EvalData.shards``), and features stay on the process that computed them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax

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

    ``read_shard(split, index, count, batch_size)``: host batches (image/label/mask, padded and
    masked, the same number for every index) of shard ``index`` of ``count`` of a split
    (``input_pipeline.eval_batches`` with process index/count); ``num_examples(split)``: the
    split's size; ``example_bytes``: decoded bytes of one image (for the in-memory choice);
    ``batch_size``: the largest read batch; ``stream_split(split)``: this process's share as
    batches (the probe); ``view``: the deterministic evaluation transform.
    """

    read_shard: Callable[[str, int, int, int], Iterable[dict[str, Any]]]
    num_examples: Callable[[str], int]
    example_bytes: int
    stream_split: Callable[[str], Iterable[dict[str, Any]]]
    train_split: str
    test_split: str
    num_classes: int
    view: features.View
    seed: int = 0
    batch_size: int = 512
    in_memory_bytes: int = features.IN_MEMORY_BYTES
    _shards: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def shards(self, split: str = "", num_shards: int = 0) -> features.SplitShards:
        """A split ("" : the test split) as this process's shards; ``num_shards`` 0: one per
        process. One object per (split, count), so its in-memory copy is made once."""
        split = split or self.test_split
        key = (split, num_shards)
        if key not in self._shards:
            total = self.num_examples(split)
            count = num_shards or jax.process_count()
            # Reads no bigger than a shard (rounded to the devices): little padding per shard.
            batch = min(features.device_multiple(self.batch_size),
                        features.device_multiple(-(-total // count)))  # fmt: skip
            self._shards[key] = features.SplitShards(
                lambda index, count: self.read_shard(split, index, count, batch),
                num_examples=total,
                example_bytes=self.example_bytes,
                num_shards=count,
                in_memory_bytes=self.in_memory_bytes,
                name=split,
            )
        return self._shards[key]

    def splits(
        self, train_split: str = "", test_split: str = "", num_shards: int = 0
    ) -> tuple[features.SplitShards, features.SplitShards]:
        """An evaluator's (train, test) shards; "" means the data's default split."""
        return (
            self.shards(train_split or self.train_split, num_shards),
            self.shards(test_split or self.test_split, num_shards),
        )

    @property
    def common(self) -> dict[str, Any]:
        """What every evaluator's constructor takes besides its splits."""
        return {"num_classes": self.num_classes, "view": self.view}
