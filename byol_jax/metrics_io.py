"""Metric outputs of a run: ``metrics.jsonl`` (one object per logged step) and TensorBoard.

On local disk ``metrics.jsonl`` is appended line by line. Object storage (``gs://``) has no
append: there the file is rewritten whole, by a background thread, after each logged step, so
the training loop never waits on an upload (each upload is one object: readers see a whole
file). TensorBoard events go through clu's writer (``tf.io.gfile``, which speaks ``gs://``).
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from typing import Any

from clu import metric_writers

from byol_jax import storage

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Writes JSON lines and TensorBoard scalars; a no-op on non-chief processes.

    ``resume_step``: the step a resumed run restarts from. Records of later steps were written
    after that checkpoint by a run that then died; they are dropped, since the resumed run logs
    those steps again, so ``metrics.jsonl`` keeps one record per logged step.
    ``tensorboard``: also write TensorBoard event files (``workdir/tensorboard``).
    """

    def __init__(
        self,
        workdir: storage.PathLike,
        *,
        enabled: bool = True,
        resume_step: int | None = None,
        tensorboard: bool = True,
    ):
        self._enabled = enabled
        self._path = storage.path(workdir) / METRICS_FILE
        self._remote = storage.is_url(self._path)
        self._lines: list[str] = []
        self._jsonl = None
        self._uploads: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future | None = None
        if enabled:
            existing = _read_lines(self._path) if self._path.exists() else []
            kept = [
                x for x in existing if resume_step is None or json.loads(x)["step"] <= resume_step
            ]
            if self._remote:
                self._lines = kept
                self._uploads = concurrent.futures.ThreadPoolExecutor(1, "metrics-upload")
            else:
                if len(kept) < len(existing):
                    storage.write_text(self._path, "".join(line + "\n" for line in kept))
                self._jsonl = self._path.open("a")
        self._tensorboard = metric_writers.create_default_writer(
            str(storage.path(workdir) / "tensorboard"),
            just_logging=not (enabled and tensorboard),
            asynchronous=False,
        )

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        scalars = {k: float(v) for k, v in scalars.items()}
        if not self._enabled:
            return
        line = json.dumps({"step": int(step), **scalars})
        if self._jsonl is not None:
            self._jsonl.write(line + "\n")
            self._jsonl.flush()
        else:
            with self._lock:
                self._lines.append(line)
            # An upload that has not started yet will carry this line too.
            waiting = self._pending is not None and not (
                self._pending.running() or self._pending.done()
            )
            if not waiting:
                self._pending = self._uploads.submit(self._upload)
        self._tensorboard.write_scalars(int(step), scalars)

    def _upload(self) -> None:
        with self._lock:
            content = "".join(line + "\n" for line in self._lines)
        storage.write_text(self._path, content)

    def close(self) -> None:
        """Flush everything (waits for pending uploads)."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._uploads is not None:
            self._uploads.shutdown(wait=True)
            self._uploads = None
            if self._pending is not None:
                self._pending.result()  # an upload error surfaces here, not silently
        self._tensorboard.flush()
        self._tensorboard.close()


def _read_lines(path: Any) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def read_metrics(workdir: storage.PathLike) -> list[dict[str, float]]:
    """All records of ``workdir/metrics.jsonl`` in file order."""
    return [json.loads(line) for line in _read_lines(storage.path(workdir) / METRICS_FILE)]
