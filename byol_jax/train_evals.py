"""The training loop's evaluators: ``config.evals`` built into evaluators, their result files,
and ``--mode=knn/linear_eval/fine_tune/baselines`` runs on a workdir's newest encoder.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import ml_collections

from byol_jax import export, storage, train_data, workdir_config
from byol_jax.evaluators import registry
from byol_jax.evaluators.base import EvalData, EvaluatorError


def entries(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
    """``config.evals`` as plain dicts, by entry name."""
    return {name: dict(entry.to_dict()) for name, entry in config.evals.items()}


def scheduled_entries(config: ml_collections.ConfigDict) -> list[str]:
    """Names of the entries that run during or after training (``every_steps`` or ``at_end``)."""
    return [n for n, e in entries(config).items() if e.get("every_steps") or e.get("at_end")]


def no_labels_message(config: ml_collections.ConfigDict, names: list[str]) -> str:
    """The one line that says why the label-based evaluators do not run, and how to run them."""
    return (
        f"evaluators skipped ({', '.join(names)}): {config.data.dataset} "
        f"{config.data.train_split} has no labels. Point them at labelled data: "
        "--config.data.folder_labels=True (subfolders as classes), a split/label/ folder, or "
        "after training --mode=knn/linear_eval/baselines with --config.data.dataset=<tfds name "
        "or folder>."
    )


def build_evaluators(
    config: ml_collections.ConfigDict, data: EvalData, *, kind: str | None = None
) -> list[registry.Scheduled]:
    """The evaluators of ``config.evals``: the scheduled ones (``every_steps`` or ``at_end``), or
    with ``kind`` every entry of that type (for ``--mode``). None without labels."""
    if not data.num_classes:
        return []
    built = []
    for name, entry in entries(config).items():
        scheduled = entry.get("every_steps") or entry.get("at_end")
        if (entry.get("type") == kind) if kind else scheduled:
            built.append(registry.build(name, entry, data))
    return built


def write_eval_file(
    workdir: storage.PathLike,
    scheduled: registry.Scheduled,
    metrics: dict[str, float],
    **info: Any,
) -> str:
    """``workdir/eval_<name>.json``: the metrics (and the linear evaluators' settings)."""
    content: dict[str, Any] = {"evaluator": scheduled.name, "type": scheduled.kind, **info}
    content["metrics"] = metrics
    details = getattr(scheduled.evaluator, "last_result", None)
    if details:
        content["details"] = details
    path = storage.path(workdir) / f"eval_{scheduled.name}.json"
    storage.write_text(path, json.dumps(content, indent=2))
    return str(path)


def evaluate_workdir(
    config: ml_collections.ConfigDict, workdir: storage.PathLike, kind: str
) -> dict[str, Any]:
    """``--mode=knn/linear_eval/fine_tune/baselines``: the ``config.evals`` entries of type
    ``kind``, run on the newest checkpoint's encoder in ``workdir`` (restored alone, not the
    whole TrainState). Writes ``workdir/eval_<name>.json`` per entry."""
    workdir_config.ensure_encoder_spec(config, workdir)
    encoder, variables, spec = export.read_encoder(workdir)
    data = train_data.eval_data(
        config,
        num_classes=train_data.train_dataset_info(config, str(workdir)).num_classes,
        workdir=str(workdir),
        source_size=spec.source_size,
        view=spec.view,
    )
    evals = build_evaluators(config, data, kind=kind)
    if not evals:
        raise EvaluatorError(
            f"config.evals has no entry of type {kind!r} (or the dataset has no labels)"
        )
    results: dict[str, Any] = {"pretraining_step": spec.step}
    for scheduled in evals:
        start = time.time()
        metrics = scheduled.run(encoder, variables)
        if jax.process_index() == 0:
            print(f"{scheduled.describe(metrics)} [{time.time() - start:.0f}s]", flush=True)
            results[scheduled.name] = metrics
            results["written"] = write_eval_file(
                workdir, scheduled, metrics, pretraining_step=spec.step
            )
    return results
