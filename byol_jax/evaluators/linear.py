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

Everything is mapped over the local devices with ``parallel.map_function`` (one host; for
multi-host runs the caller must hand each process identical arrays). Many steps run inside one
compiled call (``lax.scan``), so tiny linear steps on precomputed features do not pay a Python
dispatch each.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from byol_jax import augment, features, parallel
from byol_jax.evaluators.base import EvalData
from byol_jax.features import LabeledImages

PAPER_LR_SWEEP: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1, 0.05)
MOMENTUM = 0.9


# ---- data --------------------------------------------------------------------------------------


def label_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced ``fraction`` of the labelled examples (>= 1 per class).

    Unlabelled examples (label < 0) are never selected.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == cls)
        count = max(1, int(round(fraction * len(members))))
        chosen.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _padded_batches(
    arrays: Mapping[str, np.ndarray], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of exactly ``batch_size`` with a ``mask``; the last one padded with zeros."""
    count = len(next(iter(arrays.values())))
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        pad = batch_size - (stop - start)
        batch = {
            name: np.concatenate([a[start:stop], np.zeros((pad, *a.shape[1:]), a.dtype)])
            for name, a in arrays.items()
        }
        batch["mask"] = np.arange(batch_size) < stop - start
        yield batch


def _unshard(x: jax.Array) -> np.ndarray:
    """[devices, per-device, ...] output of a mapped function → host [devices * per-device, ...]."""
    x = np.asarray(x)
    return x.reshape(-1, *x.shape[2:])


# ---- feature extraction --------------------------------------------------------------------


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


# ---- the classifier ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Static (hashable) description of one evaluator; keys the compilation cache."""

    head: nn.Module
    encoder: nn.Module | None  # None: the inputs are precomputed features
    image_size: int
    crop_fraction: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    fine_tune: bool
    weight_decay: float
    seed: int
    top_k: int


@flax.struct.dataclass
class ClassifierState:
    """Linear head (and, when fine-tuning, encoder) being trained, with its optimizer state."""

    step: jax.Array
    total_steps: jax.Array  # traced, so runs of different lengths share one compilation
    peak_lr: jax.Array  # traced, so an LR sweep compiles once
    head_params: Any
    encoder_params: Any
    batch_stats: Any
    opt_state: Any


def _optimizer(weight_decay: float) -> optax.GradientTransformation:
    # SGD + Nesterov momentum without the LR: the cosine LR is applied in the step, after the
    # momentum trace (as optax.sgd and PyTorch do), from the traced peak LR.
    parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    return optax.chain(*parts, optax.trace(decay=MOMENTUM, nesterov=True))


def _trainable(state: ClassifierState, fine_tune: bool) -> dict[str, Any]:
    trainable = {"head": state.head_params}
    if fine_tune:
        trainable["encoder"] = state.encoder_params
    return trainable


def _represent(
    spec: _Spec,
    encoder_params: Any,
    batch_stats: Any,
    inputs: jax.Array,
    *,
    train: bool,
    step: jax.Array,
) -> tuple[jax.Array, Any]:
    """Features of a local batch (and the new BN statistics when fine-tuning)."""
    if spec.encoder is None:
        return inputs.astype(jnp.float32), batch_stats
    if train and spec.augment:
        # Per-example keys from (seed, step, global example index): independent of the layout.
        key = jax.random.fold_in(jax.random.key(spec.seed), step)
        index = parallel.global_example_index(inputs.shape[0])
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
        crop = functools.partial(augment.random_crop_flip, out_size=spec.image_size)
        views = augment.normalize(jax.vmap(crop)(keys, inputs), spec.mean, spec.std)
    else:
        view = features.View(spec.image_size, spec.crop_fraction, spec.mean, spec.std)
        views = features.eval_views(inputs, view)
    variables = {"params": encoder_params, "batch_stats": batch_stats}
    if train and spec.fine_tune:
        feats, updates = spec.encoder.apply(variables, views, train=True, mutable=["batch_stats"])
        return feats.astype(jnp.float32), updates.get("batch_stats", batch_stats)
    return spec.encoder.apply(variables, views, train=False).astype(jnp.float32), batch_stats


def _cosine_lr(state: ClassifierState) -> jax.Array:
    progress = jnp.minimum(state.step, state.total_steps) / jnp.maximum(state.total_steps, 1)
    return state.peak_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


def _train_step(
    state: ClassifierState, batch: dict[str, jax.Array], *, spec: _Spec
) -> tuple[ClassifierState, jax.Array]:
    def loss_fn(trainable):
        encoder_params = trainable.get("encoder", state.encoder_params)
        feats, new_stats = _represent(
            spec, encoder_params, state.batch_stats, batch["inputs"], train=True, step=state.step
        )
        if not spec.fine_tune:
            feats = jax.lax.stop_gradient(feats)  # frozen: no backward pass into it
        logits = spec.head.apply({"params": trainable["head"]}, feats)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, new_stats

    trainable = _trainable(state, spec.fine_tune)
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    # Equal local batches: the mean of local means is the global-batch gradient.
    grads = parallel.mean_over_devices(grads)
    updates, opt_state = _optimizer(spec.weight_decay).update(grads, state.opt_state, trainable)
    lr = _cosine_lr(state)
    trainable = jax.tree.map(lambda p, u: p - lr * u, trainable, updates)
    new_state = state.replace(
        step=state.step + 1,
        head_params=trainable["head"],
        encoder_params=trainable.get("encoder", state.encoder_params),
        batch_stats=new_stats,
        opt_state=opt_state,
    )
    # Padding steps at the end of the last chunk leave the state untouched.
    new_state = jax.tree.map(lambda n, o: jnp.where(batch["valid"], n, o), new_state, state)
    return new_state, parallel.mean_over_devices(loss)


def _train_chunk(
    state: ClassifierState, chunk: dict[str, jax.Array], *, spec: _Spec
) -> tuple[ClassifierState, jax.Array]:
    return jax.lax.scan(functools.partial(_train_step, spec=spec), state, chunk)


def _eval_counts(
    state: ClassifierState, batch: dict[str, jax.Array], *, spec: _Spec
) -> dict[str, jax.Array]:
    feats, _ = _represent(
        spec, state.encoder_params, state.batch_stats, batch["inputs"], train=False, step=state.step
    )
    logits = spec.head.apply({"params": state.head_params}, feats)
    labels = batch["label"]
    valid = batch["mask"] & (labels >= 0)
    top = jax.lax.top_k(logits, spec.top_k)[1]
    top1 = (top[:, 0] == labels) & valid
    topk = jnp.any(top == labels[:, None], axis=-1) & valid
    return parallel.sum_over_devices(
        {"top1": jnp.sum(top1), "top5": jnp.sum(topk), "count": jnp.sum(valid)}
    )


@functools.lru_cache(maxsize=16)
def _mapped_fns(spec: _Spec) -> tuple[Callable, Callable]:
    train = parallel.map_function(functools.partial(_train_chunk, spec=spec), donate_argnums=(0,))
    count = parallel.map_function(functools.partial(_eval_counts, spec=spec))
    return train, count


def _init_state(
    spec: _Spec,
    encoder_variables: Mapping[str, Any],
    dim: int,
    *,
    peak_lr: float,
    total_steps: int,
) -> ClassifierState:
    head_params = spec.head.init(jax.random.key(spec.seed), jnp.zeros((1, dim), jnp.float32))
    state = ClassifierState(
        step=jnp.zeros((), jnp.int32),
        total_steps=jnp.asarray(total_steps, jnp.int32),
        peak_lr=jnp.asarray(peak_lr, jnp.float32),
        head_params=head_params["params"],
        encoder_params=encoder_variables.get("params", {}),
        batch_stats=encoder_variables.get("batch_stats", {}),
        opt_state=None,
    )
    return state.replace(
        opt_state=_optimizer(spec.weight_decay).init(_trainable(state, spec.fine_tune))
    )


# ---- the training set as per-process shards ----------------------------------------------------
#
# A split is cut into ``shards`` virtual shards (``features.SplitShards``); process p of P owns
# S/P of them. Global batch t takes B/S examples from every shard, in shard order, so it holds
# the same examples in the same positions whatever P is: with the per-example augmentation keys
# of ``_represent`` (seed, step, global position) the result does not depend on the process
# count. Each epoch, every shard's selected examples are cut into windows of ``shuffle_window``
# that are permuted by (seed, epoch, shard, window): a streamed shard then needs only one window
# in host memory, and the in-memory path gives the same order.


@dataclasses.dataclass
class _Source:
    """One owned shard of a training or test set: its real examples in order, in chunks."""

    chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # (inputs, labels)
    labels: Callable[[], np.ndarray]  # all labels of the shard, in order
    shard: int  # global shard index


def _image_sources(split: features.SplitShards) -> list[_Source]:
    def chunks(shard: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in split.batches(shard):
            keep = np.asarray(batch["mask"], bool)
            yield np.asarray(batch["image"])[keep], np.asarray(batch["label"])[keep]

    return [
        _Source(functools.partial(chunks, v), functools.partial(split.labels, v), v)
        for v in split.owned
    ]


def _feature_sources(local: features.LocalFeatures, first_shard: int) -> list[_Source]:
    sources = []
    for i in range(len(local.labels) // local.shard_rows):
        x, y = local.shard(i)
        sources.append(_Source(lambda x=x, y=y: iter([(x, y)]), lambda y=y: y, first_shard + i))
    return sources


def _selected(source: _Source, keep: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The shard's examples whose position is kept (``keep``: bool per example; None: all)."""
    position = 0
    for inputs, labels in source.chunks():
        if keep is None:
            yield inputs, labels
        else:
            mask = keep[position : position + len(labels)]
            yield inputs[mask], labels[mask]
        position += len(labels)


def _pieces(
    source: _Source, keep: np.ndarray, piece: int, seed: int, epoch: int, window: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``piece``-sized parts of one epoch of a shard: windows of its kept examples, permuted."""
    held_x: list[np.ndarray] = []
    held_y: list[np.ndarray] = []
    count, index = 0, 0
    left_x = left_y = None

    def flush(x, y, index):
        order = np.random.default_rng([seed, epoch, source.shard, index]).permutation(len(y))
        return x[order], y[order]

    def emit(x, y):
        nonlocal left_x, left_y
        if left_x is not None:
            x, y = np.concatenate([left_x, x]), np.concatenate([left_y, y])
        whole = len(y) // piece * piece
        for start in range(0, whole, piece):
            yield x[start : start + piece], y[start : start + piece]
        left_x, left_y = x[whole:], y[whole:]

    for inputs, labels in _selected(source, keep):
        while len(labels):
            take = min(window - count, len(labels))
            held_x.append(inputs[:take])
            held_y.append(labels[:take])
            inputs, labels, count = inputs[take:], labels[take:], count + take
            if count == window:
                yield from emit(*flush(np.concatenate(held_x), np.concatenate(held_y), index))
                held_x, held_y, count, index = [], [], 0, index + 1
    if count:
        yield from emit(*flush(np.concatenate(held_x), np.concatenate(held_y), index))


def _local_batches(
    sources: list[_Source],
    keeps: list[np.ndarray],
    piece: int,
    steps: int,
    seed: int,
    epoch: int,
    window: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This process's part of each of an epoch's ``steps`` global batches."""
    streams = [
        _pieces(src, keep, piece, seed, epoch, window)
        for src, keep in zip(sources, keeps, strict=True)
    ]
    for _ in range(steps):
        parts = [next(stream) for stream in streams]
        yield np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _chunk_to_devices(
    local: list[tuple[np.ndarray, np.ndarray]], chunk_steps: int
) -> dict[str, jax.Array]:
    """Local batches of ``chunk_steps`` steps → per-device [chunk, local batch, ...] arrays."""
    devices = parallel.local_device_count()
    valid = np.arange(chunk_steps) < len(local)
    local = local + [local[0]] * (chunk_steps - len(local))  # padding steps, masked by valid
    inputs, labels = np.stack([x for x, _ in local]), np.stack([y for _, y in local])
    k, b = labels.shape

    def layout(x: np.ndarray) -> np.ndarray:
        # [K, B, ...] → [D*K, B/D, ...] so that shard_batch hands device d its [K, B/D] slice
        # of every step (positions d*B/D ... (d+1)*B/D - 1, as global_example_index assumes).
        x = x.reshape(k, devices, b // devices, *x.shape[2:]).swapaxes(0, 1)
        return x.reshape(devices * k, b // devices, *x.shape[3:])

    chunk = {"inputs": layout(inputs), "label": layout(labels.astype(np.int32))}
    sharded = parallel.shard_batch(chunk)
    sharded["valid"] = parallel.shard_batch(np.tile(valid, devices))
    return sharded


@dataclasses.dataclass
class _Plan:
    """Global batch, steps per epoch and per-step share of every shard (same on all processes)."""

    batch: int
    piece: int
    steps_per_epoch: int
    shards: int
    window: int
    example_bytes: int = 0  # host bytes of one input (image or feature vector)


def _plan(
    keeps: list[np.ndarray], *, batch_size: int, shards: int, window: int, example_bytes: int
) -> _Plan:
    """The global batch: a multiple of the shard count and of all devices; no larger than the
    kept examples allow (every step takes batch/shards examples from every shard)."""
    unit = math.lcm(shards, parallel.global_device_count())
    fewest = -parallel.max_over_processes(-min(int(np.sum(k)) for k in keeps))
    batch = min(batch_size, fewest * shards) // unit * unit
    if batch < unit:
        raise ValueError(
            f"a global batch needs a multiple of {unit} examples (shards {shards}, "
            f"{parallel.global_device_count()} devices); the smallest shard has {fewest} "
            f"training examples, so {shards} shards allow at most {fewest * shards}"
        )
    piece = batch // shards
    return _Plan(batch, piece, fewest // piece, shards, window, example_bytes)


def _fit(
    spec: _Spec,
    encoder_variables: Mapping[str, Any],
    sources: list[_Source],
    keeps: list[np.ndarray],
    dim: int,
    plan: _Plan,
    *,
    peak_lr: float,
    epochs: int,
    steps_per_call: int,
) -> Any:
    """Train from scratch; returns the replicated final state."""
    total = epochs * plan.steps_per_epoch
    state = parallel.replicate(
        _init_state(spec, encoder_variables, dim, peak_lr=peak_lr, total_steps=total)
    )
    train_fn, _ = _mapped_fns(spec)
    # Calls of near-equal length that tile an epoch (few masked padding steps at its end). With
    # images as inputs (the encoder runs every step) one call's batches stay within CHUNK_BYTES:
    # the dispatch saved by longer scans is small next to an encoder forward.
    step_bytes = plan.example_bytes * plan.batch // jax.process_count()
    steps_per_call = max(1, min(steps_per_call, CHUNK_BYTES // max(step_bytes, 1)))
    calls_per_epoch = -(-plan.steps_per_epoch // steps_per_call)
    chunk_steps = -(-plan.steps_per_epoch // calls_per_epoch)
    done, start, last_log = 0, time.time(), time.time()
    for epoch in range(epochs):
        batches = _local_batches(
            sources, keeps, plan.piece, plan.steps_per_epoch, spec.seed, epoch, plan.window
        )
        block: list[tuple[np.ndarray, np.ndarray]] = []
        for i, local in enumerate(batches):
            block.append(local)
            if len(block) < chunk_steps and i + 1 < plan.steps_per_epoch:
                continue
            state, losses = train_fn(state, _chunk_to_devices(block, chunk_steps))
            done += len(block)
            if time.time() - last_log > 30 or done == total:
                loss = float(parallel.fetch(losses)[len(block) - 1])
                elapsed = time.time() - start
                logging.info("linear eval step %d/%d loss %.4f (%.0fs)", done, total, loss, elapsed)
                last_log = time.time()
            block = []
    return state


def _accuracy(
    spec: _Spec,
    state: Any,
    sources: list[_Source],
    keeps: list[np.ndarray | None],
    example: tuple[tuple[int, ...], Any],
    batch_size: int,
) -> dict[str, float]:
    """Top-1/top-5 over the kept examples of every process's shards (counts over all devices)."""
    _, count_fn = _mapped_fns(spec)
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
            for inputs, labels in _selected(src, keep):
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
    spec: _Spec,
    encoder_variables: Mapping[str, Any],
    train_sources: list[_Source],
    test_sources: list[_Source],
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
    selection = _Selection(train_sources)
    keeps = selection.local(_labelled(selection.labels, label_fraction, spec.seed))
    sizes = dict(
        batch_size=batch_size, shards=shards, window=shuffle_window,
        example_bytes=int(np.prod(example[0])) * np.dtype(example[1]).itemsize,
    )  # fmt: skip
    plan = _plan(keeps, **sizes)
    eval_batch = features.device_multiple(eval_batch_size)
    fit = functools.partial(
        _fit, spec, encoder_variables, dim=dim, epochs=epochs, steps_per_call=steps_per_call
    )
    sweep: dict[str, float] = {}
    if lr_sweep:
        # Held-out part of train (never the test split) selects the base LR: a permutation of the
        # selected examples of the whole split (shards in order are the split in order).
        chosen = np.flatnonzero(_labelled(selection.labels, label_fraction, spec.seed))
        order = np.random.default_rng(spec.seed + 1).permutation(len(chosen))
        held = np.zeros(len(selection.labels), bool)
        held[chosen[order[: max(1, int(round(holdout_fraction * len(chosen))))]]] = True
        held_keeps = selection.local(held)
        fit_keeps = [k & ~h for k, h in zip(keeps, held_keeps, strict=True)]
        fit_plan = _plan(fit_keeps, **sizes)
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
            "optimizer": f"sgd_nesterov_momentum_{MOMENTUM}",
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


class _Selection:
    """The labels of a whole training split in shard order (ints only: O(N), never images), so
    that label subsets and held-out parts are drawn as on one host, whatever the process count;
    ``local`` cuts a per-example mask of the whole split back to this process's shards."""

    def __init__(self, sources: list[_Source]):
        local = [src.labels() for src in sources]
        rows = parallel.max_over_processes(max(len(labels) for labels in local))
        padded = np.full((len(local), rows), -2, np.int32)  # -2: no example (-1: unlabelled)
        for i, labels in enumerate(local):
            padded[i, : len(labels)] = labels
        every = parallel.gather_from_processes(padded).reshape(-1, rows)  # [shards, rows]
        lengths = np.sum(every != -2, axis=1)
        self.labels = every[every != -2]
        starts = np.concatenate([[0], np.cumsum(lengths)])
        self._bounds = [(starts[s.shard], starts[s.shard + 1]) for s in sources]

    def local(self, mask: np.ndarray) -> list[np.ndarray]:
        return [mask[lo:hi] for lo, hi in self._bounds]


def _labelled(labels: np.ndarray, label_fraction: float, seed: int) -> np.ndarray:
    """Bool per example: labelled, and in the class-balanced ``label_fraction`` subset."""
    labels = np.asarray(labels)
    keep = np.zeros(len(labels), bool)
    if label_fraction < 1.0:
        keep[label_subset(labels, label_fraction, seed)] = True
    else:
        keep[labels >= 0] = True
    return keep


def _check_common(epochs: int, num_classes: int) -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if num_classes < 2:
        raise ValueError(f"linear evaluation needs >= 2 classes, got {num_classes}")


DEFAULT_SHARDS = 16  # shards of the linear protocol's splits (a multiple of the process count)
DEFAULT_SHUFFLE_WINDOW = 1024  # examples per shard permuted together each epoch
CHUNK_BYTES = 1 << 28  # host inputs of one training call (steps_per_call capped to fit)


def _as_shards(split: features.SplitShards | LabeledImages, shards: int) -> features.SplitShards:
    if isinstance(split, features.SplitShards):
        if split.num_shards != shards:
            raise ValueError(
                f"split {split.name!r} is read as {split.num_shards} shards; the linear "
                f"evaluation was configured with shards={shards}"
            )
        return split
    return features.SplitShards.from_arrays(split.images, split.labels, num_shards=shards)


def _local_arrays(x: np.ndarray, y: np.ndarray, shards: int) -> features.LocalFeatures:
    """Host arrays (the same on every process) → this process's rows of ``shards`` shards."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    total, rows = len(y), -(-len(y) // shards)
    per_process = shards // jax.process_count()
    first = jax.process_index() * per_process
    feats = np.zeros((per_process * rows, x.shape[1]), np.float32)
    labels = np.full(per_process * rows, -1, np.int32)
    mask = np.zeros(per_process * rows, bool)
    for i in range(per_process):
        lo, hi = (first + i) * total // shards, (first + i + 1) * total // shards
        feats[i * rows : i * rows + hi - lo] = x[lo:hi]
        labels[i * rows : i * rows + hi - lo] = y[lo:hi]
        mask[i * rows : i * rows + hi - lo] = True
    return features.LocalFeatures(feats, labels, mask, rows, total)


def _check_shards(shards: int) -> None:
    if shards < 1 or shards % jax.process_count():
        raise ValueError(
            f"shards={shards} must be a positive multiple of the process count "
            f"({jax.process_count()}); the same value on any process count gives the same result"
        )


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
    shards: int = DEFAULT_SHARDS,
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW,
    seed: int = 0,
    return_variables: bool = False,
) -> dict[str, Any]:
    """Train a linear classifier on ``encoder`` features of ``train``; top-1/top-5 on ``test``.

    ``train``/``test``: this process's shards of each split (``features.SplitShards`` with
    ``shards`` shards), or host arrays read as such shards. ``encoder_variables``: ``{"params":
    ..., "batch_stats": ...}`` of the encoder alone. The encoder module must be built with
    ``axis_name=parallel.AXIS_NAME`` for ``fine_tune``. ``batch_size`` is global (rounded down
    to a multiple of the shard and device counts, see ``_plan``); the peak LR is
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
    _check_shards(shards)
    if shuffle_window < 1:
        raise ValueError(f"shuffle_window must be >= 1, got {shuffle_window}")
    train, test = _as_shards(train, shards), _as_shards(test, shards)
    variables = dict(encoder_variables)
    precompute = not augment and not fine_tune
    spec = _Spec(
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
        train_sources = _feature_sources(train_x, train.owned.start)
        test_sources = _feature_sources(test_x, test.owned.start)
        dim, variables = train_x.features.shape[1], {}
        example: tuple[tuple[int, ...], Any] = ((dim,), np.float32)
    else:
        train_sources, test_sources = _image_sources(train), _image_sources(test)
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
    shards: int = DEFAULT_SHARDS,
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW,
    seed: int = 0,
) -> dict[str, Any]:
    """The same linear classifier and protocol on fixed feature vectors [N, D].

    What ``linear_evaluation(augment=False)`` runs after encoding; also the entry point for
    features computed elsewhere (e.g. by ``export.embed_split``). The arrays are the whole
    splits (the same on every process); each process trains on its own shards of them.
    """
    _check_common(epochs, num_classes)
    _check_shards(shards)
    spec = _Spec(
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
    train = _local_arrays(train_features, train_labels, shards)
    test = _local_arrays(test_features, test_labels, shards)
    first = jax.process_index() * (shards // jax.process_count())
    dim = train.features.shape[1]
    return _evaluate(
        spec,
        {},
        _feature_sources(train, first),
        _feature_sources(test, first),
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
        shards = int(options.get("shards", DEFAULT_SHARDS))
        _check_shards(shards)
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
