"""A one-page picture of a pretraining run: ``workdir/report.png`` from ``metrics.jsonl``.

Panels (those whose metric the run never logged are left out): BYOL loss, learning rate, EMA τ,
online-probe accuracy (train batches; the final eval accuracy as a marker), kNN accuracy, and the
collapse signal ``projection_std`` (per-dimension std of the normalized projections; a collapsed
representation drives it to 0, a healthy one stays near 1/sqrt(dim)).
"""

from __future__ import annotations

import io
import math
from typing import Any

from byol_jax import metrics_io, storage

# (metric, panel title, final-eval metric drawn as a marker on the same panel)
PANELS: tuple[tuple[str, str, str | None], ...] = (
    ("loss", "BYOL loss", None),
    ("learning_rate", "learning rate", None),
    ("tau", "EMA τ", None),
    ("probe_accuracy", "online probe accuracy", "eval_probe_accuracy"),
    ("knn_accuracy", "kNN accuracy", "eval_knn_accuracy"),
    ("projection_std", "projection std (collapse signal)", None),
)


def _series(records: list[dict[str, Any]], name: str) -> tuple[list[int], list[float]]:
    # A resumed run re-logs steps after its last checkpoint: the later record of a step wins.
    by_step = {int(r["step"]): float(r[name]) for r in records if name in r}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def write_report(
    workdir: storage.PathLike,
    *,
    filename: str = "report.png",
    title: str | None = None,
) -> str:
    """Plot the run's metrics against step into ``workdir/filename``; returns the path."""
    import matplotlib

    # Headless backend, chosen here rather than at import so importing never touches pyplot.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = metrics_io.read_metrics(workdir)
    panels = [p for p in PANELS if any(p[0] in r or (p[2] and p[2] in r) for r in records)]
    if not panels:
        raise ValueError(f"{workdir}/metrics.jsonl has none of {[p[0] for p in PANELS]}")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, label, final_name) in zip(axes.flat, panels, strict=False):
        steps, values = _series(records, name)
        if steps:
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, lw=1.2)
        if final_name:
            final_steps, final_values = _series(records, final_name)
            if final_steps:
                ax.plot(final_steps, final_values, "r*", ms=10, label="eval")
                ax.legend(loc="best", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    folder = storage.path(workdir)
    fig.suptitle(title or folder.name, fontsize=11)
    fig.tight_layout()
    png = io.BytesIO()  # rendered in memory: the workdir may be a bucket
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    path = folder / filename
    storage.write_bytes(path, png.getvalue())
    return str(path)
