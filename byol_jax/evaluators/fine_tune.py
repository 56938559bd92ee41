"""Fine-tuning on a fraction of the labels (the paper's semi-supervised setting, appendix C.2).

The same classifier code as the ``linear`` evaluator with the encoder's parameters trained too
(BatchNorm in training mode, statistics over all devices) on a class-balanced subset of the
labelled training examples (``label_fraction``: 0.01 and 0.1 in the paper).
"""

from __future__ import annotations

from typing import Any

from byol_jax.evaluators.base import EvalData
from byol_jax.evaluators.linear import LinearEvaluator


class FineTuneEvaluator(LinearEvaluator):
    """``LinearEvaluator`` with ``fine_tune=True`` and a label fraction (default 10%)."""

    @classmethod
    def from_options(
        cls,
        data: EvalData,
        *,
        train_split: str = "",
        test_split: str = "",
        label_fraction: float = 0.1,
        **options: Any,
    ) -> FineTuneEvaluator:
        if not 0.0 < label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
        return super().from_options(
            data,
            train_split=train_split,
            test_split=test_split,
            fine_tune=True,
            label_fraction=label_fraction,
            **options,
        )
