"""Metric outputs of a run: ``metrics.jsonl`` (one object per logged step) and TensorBoard."""

from __future__ import annotations

import json
import os
from typing import Any

from clu import metric_writers


class MetricsWriter:
    """Appends JSON lines and TensorBoard scalars; a no-op on non-chief processes."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self._enabled = enabled
        path = os.path.join(workdir, "metrics.jsonl")
        # Kept open for the run; close() releases it.
        self._jsonl = open(path, "a") if enabled else None  # noqa: SIM115
        self._tensorboard = metric_writers.create_default_writer(
            os.path.join(workdir, "tensorboard"), just_logging=not enabled, asynchronous=False
        )

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        scalars = {k: float(v) for k, v in scalars.items()}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
            self._jsonl.flush()
        if self._enabled:
            self._tensorboard.write_scalars(int(step), scalars)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        self._tensorboard.flush()
        self._tensorboard.close()


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """All records of ``workdir/metrics.jsonl`` in file order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
