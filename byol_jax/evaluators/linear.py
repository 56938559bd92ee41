"""Linear evaluation and fine-tuning of a pretrained encoder (BYOL paper, appendix C.1/C.2).

Protocol (the defaults of ``linear_evaluation``):

* the encoder is frozen and runs in inference mode (BatchNorm moving averages); a linear layer
  (zero-initialized, as in the released code) is trained on its pooled features;
* SGD with Nesterov momentum 0.9, no weight decay, peak LR ``base_lr * batch_size / 256``
  (``base_lr`` 0.2) decayed to 0 with a cosine over all steps;
* training images get a random resized crop + horizontal flip (``augment.random_crop_flip``),
  test images the deterministic centre crop (``augment.center_crop_resize``);
* optionally the paper's LR sweep: every ``base_lr`` of ``lr_sweep`` is trained on the train split
  minus a held-out part and scored on that part; the best one is retrained on the full train split
  and only that run touches the test split.

``fine_tune=True`` takes the same code path with the encoder parameters added to the trained
variables and BatchNorm in training mode with statistics over all devices (the semi-supervised
setting; ``label_fraction`` keeps a class-balanced subset of the labels, e.g. 0.01 or 0.1).

Two ways to feed the classifier:

* default (``augment=True``): every step draws new crops, so the frozen encoder runs forward on
  every step (the paper's protocol; costs one encoder forward per image per epoch);
* fast path (``augment=False`` and frozen): training images then get the test-time centre crop,
  so the features do not change between epochs and are computed once (``encode_images``); all
  epochs then train the linear layer on the stored features. The result is exactly what the slow
  path would compute for unaugmented inputs, at a fraction of the cost on CPU.

The classifier and its compiled steps live in ``classifier.py`` (many steps scanned inside one
call, so tiny linear steps on precomputed features do not pay a Python dispatch each); the
per-process shards that feed it, label subsets and held-out parts in ``shard_feed.py``. This
module is the protocol: the LR sweep on held-out train examples, the final fit, test accuracy.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from byol_jax import features, parallel
from byol_jax.evaluators import classifier, shard_feed
from byol_jax.evaluators.base import EvalData
from byol_jax.features import LabeledImages

PAPER_LR_SWEEP: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1, 0.05)


def encode_images(
    encoder: nn.Module,
    variables: Mapping[str, Any],
    images: np.ndarray,
    *,
    image_size: int,
    crop_fraction: float,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
) -> np.ndarray:
    """``features.embed_images`` with the view given by its parts (all devices, processes)."""
    view = features.View(int(image_size), float(crop_fraction), tuple(mean), tuple(std))
    return features.embed_images(encoder, variables, images, view, batch_size=batch_size)


def feature_dim(encoder: nn.Module, variables: Mapping[str, Any], image_size: int) -> int:
    """Width of the encoder's output for ``image_size`` RGB inputs (no computation)."""
    return features.feature_dim(encoder, variables, features.View(image_size, 1.0, (), ()))


# in host memory, and the in-memory path gives the same order.


def _fit(
    spec: classifier.Spec,
    encoder_variables: Mapping[str, Any],
    sources: list[shard_feed.Source],
    keeps: list[np.ndarray],
    dim: int,
    plan: shard_feed.Plan,
    *,
    peak_lr: float,
    epochs: int,
    steps_per_call: int,
) -> Any:
    """Train from scratch; returns the replicated final state."""
    total = epochs * plan.steps_per_epoch
    state = parallel.replicate(
        classifier.init_state(spec, encoder_variables, dim, peak_lr=peak_lr, total_steps=total)
    )
    train_fn, _ = classifier.mapped_fns(spec)
    # Calls of near-equal length that tile an epoch (few masked padding steps at its end). With
    # images as inputs (the encoder runs every step) one call's batches stay within CHUNK_BYTES:
    # the dispatch saved by longer scans is small next to an encoder forward.
    step_bytes = plan.example_bytes * plan.batch // jax.process_count()
    steps_per_call = max(1, min(steps_per_call, CHUNK_BYTES // max(step_bytes, 1)))
    calls_per_epoch = -(-plan.steps_per_epoch // steps_per_call)
    chunk_steps = -(-plan.steps_per_epoch // calls_per_epoch)
    done, start, last_log = 0, time.time(), time.time()
    for epoch in range(epochs):
        batches = shard_feed.local_batches(
            sources, keeps, plan.piece, plan.steps_per_epoch, spec.seed, epoch, plan.window
        )
        block: list[tuple[np.ndarray, np.ndarray]] = []
        for i, local in enumerate(batches):
            block.append(local)
            if len(block) < chunk_steps and i + 1 < plan.steps_per_epoch:
                continue
            state, losses = train_fn(state, shard_feed.chunk_to_devices(block, chunk_steps))
            done += len(block)
            if time.time() - last_log > 30 or done == total:
                loss = float(parallel.fetch(losses)[len(block) - 1])
                elapsed = time.time() - start
                logging.info("linear eval step %d/%d loss %.4f (%.0fs)", done, total, loss, elapsed)
                last_log = time.time()
            block = []
    return state


def _accuracy(
    spec: classifier.Spec,
    state: Any,
    sources: list[shard_feed.Source],
    keeps: list[np.ndarray | None],
    example: tuple[tuple[int, ...], Any],
    batch_size: int,
) -> dict[str, float]:
    """Top-1/top-5 over the kept examples of every process's shards (counts over all devices)."""
    _, count_fn = classifier.mapped_fns(spec)
    local = sum(
        int(np.sum(k)) if k is not None else len(src.labels())
        for src, k in zip(sources, keeps, strict=True)
    )
    calls = max(1, parallel.max_over_processes(-(-local // batch_size)))
    shape, dtype = example

    def batches() -> Iterator[dict[str, np.ndarray]]:
        x = np.zeros((batch_size, *shape), dtype)
        y = np.zeros(batch_size, np.int32)
        fill = 0
        for src, keep in zip(sources, keeps, strict=True):
            for inputs, labels in shard_feed.selected(src, keep):
                while len(labels):
                    take = min(batch_size - fill, len(labels))
                    x[fill : fill + take], y[fill : fill + take] = inputs[:take], labels[:take]
                    inputs, labels, fill = inputs[take:], labels[take:], fill + take
                    if fill == batch_size:
                        yield {"inputs": x.copy(), "label": y.copy(), "mask": np.ones(fill, bool)}
                        fill = 0
        while True:  # the rest, then fully masked batches so every process makes `calls` calls
            yield {"inputs": x.copy(), "label": y.copy(), "mask": np.arange(batch_size) < fill}
            fill = 0

    totals = {"top1": 0, "top5": 0, "count": 0}
    stream = batches()
    for _ in range(calls):
        counts = parallel.fetch(count_fn(state, parallel.shard_batch(next(stream))))
        for name in totals:
            totals[name] += int(counts[name])
    count = max(totals["count"], 1)
    return {"top1": totals["top1"] / count, "top5": totals["top5"] / count}


def _evaluate(
    spec: classifier.Spec,
    encoder_variables: Mapping[str, Any],
    train_sources: list[shard_feed.Source],
    test_sources: list[shard_feed.Source],
    example: tuple[tuple[int, ...], Any],
    dim: int,
    *,
    epochs: int,
    batch_size: int,
    shards: int,
    shuffle_window: int,
    base_lr: float,
    lr_sweep: Sequence[float] | None,
    holdout_fraction: float,
    label_fraction: float,
    eval_batch_size: int,
    steps_per_call: int,
    settings: dict[str, Any],
    return_variables: bool = False,
) -> dict[str, Any]:
    """Shared driver of ``linear_evaluation`` and ``linear_evaluation_on_features``."""
    selection = shard_feed.Selection(train_sources)
    keeps = selection.local(shard_feed.labelled(selection.labels, label_fraction, spec.seed))
    sizes = dict(
        batch_size=batch_size, shards=shards, window=shuffle_window,
        example_bytes=int(np.prod(example[0])) * np.dtype(example[1]).itemsize,
    )  # fmt: skip
    plan = shard_feed.plan(keeps, **sizes)
    eval_batch = features.device_multiple(eval_batch_size)
    fit = functools.partial(
        _fit, spec, encoder_variables, dim=dim, epochs=epochs, steps_per_call=steps_per_call
    )
    sweep: dict[str, float] = {}
    if lr_sweep:
        # Held-out part of train (never the test split) selects the base LR: a permutation of the
        # selected examples of the whole split (shards in order are the split in order).
        chosen = np.flatnonzero(shard_feed.labelled(selection.labels, label_fraction, spec.seed))
        order = np.random.default_rng(spec.seed + 1).permutation(len(chosen))
        held = np.zeros(len(selection.labels), bool)
        held[chosen[order[: max(1, int(round(holdout_fraction * len(chosen))))]]] = True
        held_keeps = selection.local(held)
        fit_keeps = [k & ~h for k, h in zip(keeps, held_keeps, strict=True)]
        fit_plan = shard_feed.plan(fit_keeps, **sizes)
        for lr in lr_sweep:
            state = fit(train_sources, fit_keeps, plan=fit_plan, peak_lr=lr * fit_plan.batch / 256)
            result = _accuracy(spec, state, train_sources, held_keeps, example, eval_batch)
            sweep[str(lr)] = result["top1"]
            logging.info("linear eval sweep: base_lr %g → held-out top-1 %.4f", lr, result["top1"])
        # max keeps the first of equal scores: ties go to the earlier (listed first) LR.
        base_lr = float(max(lr_sweep, key=lambda lr: sweep[str(lr)]))

    state = fit(train_sources, keeps, plan=plan, peak_lr=base_lr * plan.batch / 256)
    result = _accuracy(spec, state, test_sources, [None] * len(test_sources), example, eval_batch)
    num_train = int(parallel.sum_over_processes(np.int64(sum(int(k.sum()) for k in keeps))))
    out: dict[str, Any] = {
        "top1": result["top1"],
        "top5": result["top5"],
        "num_train_examples": num_train,
        "num_test_examples": int(
            parallel.sum_over_processes(
                np.int64(sum(int(np.sum(src.labels() >= 0)) for src in test_sources))
            )
        ),
        "settings": {
            **settings,
            "epochs": epochs,
            "batch_size": plan.batch,
            "steps_per_epoch": plan.steps_per_epoch,
            "shards": shards,
            "shuffle_window": shuffle_window,
            "base_lr": base_lr,
            "learning_rate": base_lr * plan.batch / 256,
            "lr_schedule": "cosine",
            "optimizer": f"sgd_nesterov_momentum_{classifier.MOMENTUM}",
            "weight_decay": spec.weight_decay,
            "top_k": spec.top_k,
            "label_fraction": label_fraction,
            "lr_sweep": list(lr_sweep) if lr_sweep else None,
            "holdout_fraction": holdout_fraction if lr_sweep else None,
            "seed": spec.seed,
        },
    }
    if sweep:
        out["sweep_holdout_top1"] = sweep
    if return_variables:
        # Host copies of the trained head (and the fine-tuned encoder), for reuse.
        out["head_params"] = parallel.fetch(state.head_params)
        out["encoder_variables"] = {
            "params": parallel.fetch(state.encoder_params),
            "batch_stats": parallel.fetch(state.batch_stats),
        }
    return out


def _check_common(epochs: int, num_classes: int) -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if num_classes < 2:
        raise ValueError(f"linear evaluation needs >= 2 classes, got {num_classes}")


CHUNK_BYTES = 1 << 28  # host inputs of one training call (steps_per_call capped to fit)


def linear_evaluation(
    encoder: nn.Module,
    encoder_variables: Mapping[str, Any],
    train: features.SplitShards | LabeledImages,
    test: features.SplitShards | LabeledImages,
    *,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float = 1.0,
    epochs: int = 80,
    batch_size: int = 1024,
    base_lr: float = 0.2,
    lr_sweep: Sequence[float] | None = None,
    holdout_fraction: float = 0.1,
    augment: bool = True,
    fine_tune: bool = False,
    label_fraction: float = 1.0,
    weight_decay: float = 0.0,
    eval_batch_size: int = 512,
    steps_per_call: int = 50,
    shards: int = shard_feed.DEFAULT_SHARDS,
    shuffle_window: int = shard_feed.DEFAULT_SHUFFLE_WINDOW,
    seed: int = 0,
    return_variables: bool = False,
) -> dict[str, Any]:
    """Train a linear classifier on ``encoder`` features of ``train``; top-1/top-5 on ``test``.

    ``train``/``test``: this process's shards of each split (``features.SplitShards`` with
    ``shards`` shards), or host arrays read as such shards. ``encoder_variables``: ``{"params":
    ..., "batch_stats": ...}`` of the encoder alone. The encoder module must be built with
    ``axis_name=parallel.AXIS_NAME`` for ``fine_tune``. ``batch_size`` is global (rounded down
    to a multiple of the shard and device counts, see ``shard_feed.plan``); the peak LR is
    ``base_lr * batch_size / 256``. ``lr_sweep`` (e.g. ``PAPER_LR_SWEEP``) selects ``base_lr`` on
    a ``holdout_fraction`` of every train shard. ``augment=False`` (frozen only) precomputes
    the features once per process (see the module docstring). ``label_fraction`` keeps a
    class-balanced subset of every shard.

    Returns ``{"top1", "top5", "num_train_examples", "num_test_examples", "settings", ...}``
    with ``sweep_holdout_top1`` when sweeping. ``return_variables=True`` adds the trained
    ``head_params`` and ``encoder_variables`` (the fine-tuned encoder when ``fine_tune``; empty
    on the precomputed-features path) as NumPy trees, which are not JSON-serializable.
    """
    _check_common(epochs, num_classes)
    shard_feed.check_shards(shards)
    if shuffle_window < 1:
        raise ValueError(f"shuffle_window must be >= 1, got {shuffle_window}")
    train, test = shard_feed.as_shards(train, shards), shard_feed.as_shards(test, shards)
    variables = dict(encoder_variables)
    precompute = not augment and not fine_tune
    spec = classifier.Spec(
        head=nn.Dense(num_classes, kernel_init=nn.initializers.zeros, name="head"),
        encoder=None if precompute else encoder,
        image_size=int(image_size),
        crop_fraction=float(crop_fraction),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        augment=bool(augment),
        fine_tune=bool(fine_tune),
        weight_decay=float(weight_decay),
        seed=int(seed),
        top_k=min(5, num_classes),
    )
    if precompute:
        view = features.View(int(image_size), float(crop_fraction), spec.mean, spec.std)
        start = time.time()
        train_x = features.embed_split(encoder, variables, train, view)
        test_x = features.embed_split(encoder, variables, test, view)
        logging.info("linear eval: features of this process's shards in %.0fs", time.time() - start)
        train_sources = shard_feed.feature_sources(train_x, train.owned.start)
        test_sources = shard_feed.feature_sources(test_x, test.owned.start)
        dim, variables = train_x.features.shape[1], {}
        example: tuple[tuple[int, ...], Any] = ((dim,), np.float32)
    else:
        train_sources, test_sources = (
            shard_feed.image_sources(train),
            shard_feed.image_sources(test),
        )
        dim = feature_dim(encoder, variables, image_size)
        first = next(iter(train.batches(train.owned.start)))["image"]
        example = (tuple(first.shape[1:]), first.dtype)
    return _evaluate(
        spec,
        variables,
        train_sources,
        test_sources,
        example,
        dim,
        epochs=epochs,
        batch_size=batch_size,
        shards=shards,
        shuffle_window=shuffle_window,
        base_lr=base_lr,
        lr_sweep=lr_sweep,
        holdout_fraction=holdout_fraction,
        label_fraction=label_fraction,
        eval_batch_size=eval_batch_size,
        steps_per_call=steps_per_call,
        settings={
            "mode": "fine_tune" if fine_tune else "linear",
            "augment": bool(augment),
            "precomputed_features": precompute,
            "image_size": int(image_size),
            "crop_fraction": float(crop_fraction),
        },
        return_variables=return_variables,
    )


def linear_evaluation_on_features(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    epochs: int = 80,
    batch_size: int = 1024,
    base_lr: float = 0.2,
    lr_sweep: Sequence[float] | None = None,
    holdout_fraction: float = 0.1,
    label_fraction: float = 1.0,
    weight_decay: float = 0.0,
    eval_batch_size: int = 4096,
    steps_per_call: int = 200,
    shards: int = shard_feed.DEFAULT_SHARDS,
    shuffle_window: int = shard_feed.DEFAULT_SHUFFLE_WINDOW,
    seed: int = 0,
) -> dict[str, Any]:
    """The same linear classifier and protocol on fixed feature vectors [N, D].

    What ``linear_evaluation(augment=False)`` runs after encoding; also the entry point for
    features computed elsewhere (e.g. by ``export.embed_split``). The arrays are the whole
    splits (the same on every process); each process trains on its own shards of them.
    """
    _check_common(epochs, num_classes)
    shard_feed.check_shards(shards)
    spec = classifier.Spec(
        head=nn.Dense(num_classes, kernel_init=nn.initializers.zeros, name="head"),
        encoder=None,
        image_size=0,
        crop_fraction=1.0,
        mean=(),
        std=(),
        augment=False,
        fine_tune=False,
        weight_decay=float(weight_decay),
        seed=int(seed),
        top_k=min(5, num_classes),
    )
    train = shard_feed.local_arrays(train_features, train_labels, shards)
    test = shard_feed.local_arrays(test_features, test_labels, shards)
    first = jax.process_index() * (shards // jax.process_count())
    dim = train.features.shape[1]
    return _evaluate(
        spec,
        {},
        shard_feed.feature_sources(train, first),
        shard_feed.feature_sources(test, first),
        ((dim,), np.float32),
        dim,
        epochs=epochs,
        batch_size=batch_size,
        shards=shards,
        shuffle_window=shuffle_window,
        base_lr=base_lr,
        lr_sweep=lr_sweep,
        holdout_fraction=holdout_fraction,
        label_fraction=label_fraction,
        eval_batch_size=eval_batch_size,
        steps_per_call=steps_per_call,
        settings={"mode": "linear", "augment": False, "precomputed_features": True},
    )


class LinearEvaluator:
    """``linear_evaluation`` as an evaluator: the paper's protocol on a frozen encoder, or with
    ``augment=False`` the features-once variant (same classifier and schedule).

    Each process reads only its ``shards`` of both splits, streamed every epoch (or replayed
    from memory when its share is small, ``features.IN_MEMORY_BYTES``); every process gets the
    same numbers, whatever the process count. ``fine_tune`` and ``label_fraction`` are the
    semi-supervised settings (see ``fine_tune``).
    """

    def __init__(
        self,
        train: features.SplitShards,
        test: features.SplitShards,
        *,
        num_classes: int,
        view: features.View,
        seed: int = 0,
        **options: Any,
    ):
        self.train, self.test, self.view = train, test, view
        self.num_classes, self.seed = num_classes, seed
        if options.get("lr_sweep") is not None:
            options["lr_sweep"] = tuple(options["lr_sweep"]) or None
        self.options = options
        self.last_result: dict[str, Any] = {}  # the full result of the latest run (settings...)

    @classmethod
    def option_names(cls) -> set[str]:
        """A config entry's options: the splits and ``linear_evaluation``'s settings."""
        given = {"num_classes", "image_size", "mean", "std", "crop_fraction", "seed"}
        params = inspect.signature(linear_evaluation).parameters.items()
        settings = {n for n, p in params if p.kind == p.KEYWORD_ONLY and n not in given}
        return {"train_split", "test_split"} | settings - {"return_variables"}

    @classmethod
    def from_options(
        cls, data: EvalData, *, train_split: str = "", test_split: str = "", **options: Any
    ) -> LinearEvaluator:
        shards = int(options.get("shards", shard_feed.DEFAULT_SHARDS))
        shard_feed.check_shards(shards)
        splits = data.splits(train_split, test_split, num_shards=shards)
        return cls(*splits, **data.common, seed=data.seed, **options)

    def run(
        self, encoder: nn.Module, variables: Mapping[str, Any], *, replicated: bool = False
    ) -> dict[str, float]:
        if replicated:  # the classifier code replicates host variables itself
            variables = parallel.fetch(dict(variables))
        result = linear_evaluation(
            encoder,
            variables,
            self.train,
            self.test,
            num_classes=self.num_classes,
            image_size=self.view.image_size,
            crop_fraction=self.view.crop_fraction,
            mean=self.view.mean,
            std=self.view.std,
            seed=self.seed,
            **self.options,
        )
        self.last_result = {
            k: v for k, v in result.items() if k not in ("head_params", "encoder_variables")
        }
        metrics = {"top1": float(result["top1"]), "top5": float(result["top5"])}
        if "sweep_holdout_top1" in result:
            metrics["base_lr"] = float(result["settings"]["base_lr"])
        return metrics

    def describe(self, metrics: Mapping[str, float]) -> str:
        mode = "fine-tuned" if self.options.get("fine_tune") else "linear"
        return (
            f"{mode} evaluation ({self.train.num_examples} train / {self.test.num_examples} test "
            f"images): top-1 {100 * metrics['top1']:.2f}%, top-5 {100 * metrics['top5']:.2f}%"
        )
