"""Evaluators built by name from plain option dicts (big_vision style).

A config entry ``config.evals.<name> = dict(type=..., every_steps=..., at_end=..., **options)``
becomes a ``Scheduled`` evaluator: ``type`` picks the class, ``every_steps`` (> 0) runs it
periodically during pretraining (and at the last step), ``at_end`` after pretraining, and the
remaining keys are the class's own options (its ``from_options`` keywords). Nothing here reads
a config: the caller passes ``entry.to_dict()``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

from byol_jax.evaluators.base import EvalData, Evaluator, EvaluatorError
from byol_jax.evaluators.baselines import BaselinesEvaluator
from byol_jax.evaluators.fine_tune import FineTuneEvaluator
from byol_jax.evaluators.knn import KnnEvaluator
from byol_jax.evaluators.linear import LinearEvaluator
from byol_jax.evaluators.probe import ProbeEvaluator

TYPES: dict[str, type] = {
    "probe": ProbeEvaluator,
    "knn": KnnEvaluator,
    "linear": LinearEvaluator,
    "fine_tune": FineTuneEvaluator,
    "baselines": BaselinesEvaluator,
}
SCHEDULE_KEYS = ("type", "every_steps", "at_end")


@dataclasses.dataclass(frozen=True)
class Scheduled:
    """An evaluator with its name (the metrics' prefix) and when the training loop runs it."""

    name: str
    kind: str
    evaluator: Evaluator
    every_steps: int = 0
    at_end: bool = False

    def due(self, step: int, last_step: int) -> bool:
        """Periodic: every ``every_steps`` and at the last step."""
        return self.every_steps > 0 and (step % self.every_steps == 0 or step == last_step)

    def run(self, encoder: Any, variables: Mapping[str, Any], **kwargs: Any) -> dict[str, float]:
        """Metrics named ``<name>_<metric>`` (e.g. ``knn_accuracy``)."""
        metrics = self.evaluator.run(encoder, variables, **kwargs)
        return {f"{self.name}_{k}": v for k, v in metrics.items()}

    def describe(self, named_metrics: Mapping[str, float]) -> str:
        prefix = f"{self.name}_"
        own = {k[len(prefix) :]: v for k, v in named_metrics.items() if k.startswith(prefix)}
        return self.evaluator.describe(own)


def _options_of(cls: type) -> list[str]:
    """An entry's allowed options: the class's own list, or its constructor's keywords."""
    if hasattr(cls, "option_names"):
        return sorted(cls.option_names())
    params = inspect.signature(cls.from_options).parameters
    named = [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY]
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        named += [
            n
            for n, p in inspect.signature(cls.__init__).parameters.items()
            if p.kind == p.KEYWORD_ONLY and n not in ("num_classes", "view", "seed")
        ]
    return sorted(set(named))


def build(name: str, entry: Mapping[str, Any], data: EvalData) -> Scheduled:
    """The evaluator of one ``config.evals`` entry; bad entries raise ``EvaluatorError``."""
    check_entry(name, entry)
    entry = dict(entry)
    options = {k: v for k, v in entry.items() if k not in SCHEDULE_KEYS}
    try:
        evaluator = TYPES[entry["type"]].from_options(data, **options)
    except (TypeError, ValueError) as error:
        raise EvaluatorError(f"config.evals.{name}: {error}") from error
    every_steps, at_end = entry.get("every_steps", 0), entry.get("at_end", False)
    return Scheduled(name, entry["type"], evaluator, int(every_steps), bool(at_end))


def check_entry(name: str, entry: Mapping[str, Any]) -> None:
    """``build``'s checks that need no data (type, schedule, option names): for validation."""
    entry = dict(entry)
    kind = entry.get("type")
    if kind not in TYPES:
        raise EvaluatorError(
            f"config.evals.{name}.type={kind!r} is not an evaluator; known: {sorted(TYPES)}"
        )
    every_steps = entry.get("every_steps", 0)
    if not isinstance(every_steps, int) or isinstance(every_steps, bool) or every_steps < 0:
        raise EvaluatorError(
            f"config.evals.{name}.every_steps={every_steps!r}: want an integer >= 0 (0: off)"
        )
    unknown = sorted(set(entry) - set(SCHEDULE_KEYS) - set(_options_of(TYPES[kind])))
    if unknown:
        raise EvaluatorError(
            f"config.evals.{name}: unknown option(s) {unknown} for type {kind!r}; allowed: "
            f"{_options_of(TYPES[kind])}"
        )
