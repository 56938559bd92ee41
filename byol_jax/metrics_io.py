"""Metric outputs of a run: ``metrics.jsonl`` (one object per logged step) and TensorBoard."""

from __future__ import annotations

import json
import os
from typing import Any

from clu import metric_writers


class MetricsWriter:
    """Appends JSON lines and TensorBoard scalars; a no-op on non-chief processes.

    ``resume_step``: the step a resumed run restarts from. Records of later steps were written
    after that checkpoint by a run that then died; they are dropped, since the resumed run logs
    those steps again, so ``metrics.jsonl`` keeps one record per logged step.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None):
        self._enabled = enabled
        path = os.path.join(workdir, "metrics.jsonl")
        if enabled and resume_step is not None and os.path.exists(path):
            _drop_records_after(path, resume_step)
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


def _drop_records_after(path: str, step: int) -> None:
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) < len(lines):
        # Written aside and renamed, so a crash here leaves the old file or the new one whole.
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """All records of ``workdir/metrics.jsonl`` in file order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
