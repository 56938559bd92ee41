"""The gain from BYOL made visible: the same linear and kNN evaluation on baselines.

Rows of ``baseline_table``:

* ``byol``: the pretrained encoder (when its variables are given);
* ``random_init``: the same architecture with random weights. Its BatchNorm statistics are
  re-estimated on training images (the population mean/variance of every BN input, averaged over
  ``calibration_batches`` batches): with the initial statistics (mean 0, variance 1) activations
  drift in scale through the network and the baseline would look worse than random features
  are. Every BN scale starts at 1 even when training zero-initializes the residual branches
  (``model.zero_init_last_bn``): such a network at init is its shortcuts alone, a weaker
  baseline than the architecture deserves;
* ``raw_pixels``: the normalized eval view flattened (``features.PixelEncoder``).

Every row goes through exactly the same code as the BYOL row (``evaluate_representation``):
features computed once per process on its own shards of each split (``features.embed_split``,
never gathered), a multinomial logistic regression on standardized features trained to
convergence with its L2 strength chosen per row on a held-out 10% of train
(``evaluators.logistic.select_and_fit_sharded``), and weighted kNN at k=20 and k=200
(``knn.sharded_knn``). A fixed-epoch SGD protocol
under-fits high-dimensional inputs (784 raw pixels) more than 256-d features and so overstates an
encoder's gain; the paper's SGD protocol stays available as the ``linear`` evaluator.

``BaselinesEvaluator`` runs the table as an evaluator; its metrics are the table's cells,
flattened to ``"<row>/<column>"``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from byol_jax import features, parallel
from byol_jax.evaluators import knn, logistic
from byol_jax.evaluators.base import EvalData

ROWS: tuple[str, ...] = ("byol", "random_init", "raw_pixels")  # = validation.TABLE_ROWS
BN_MOMENTUM = 0.9  # models.batch_norm: running = momentum * running + (1 - momentum) * batch


def random_encoder_variables(
    encoder: nn.Module,
    *,
    image_size: int,
    seed: int = 0,
    calibration_images: np.ndarray | None = None,
    calibration_batches: int = 8,
    batch_size: int = 256,
    crop_fraction: float = 1.0,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> dict[str, Any]:
    """Freshly initialized ``{"params", "batch_stats"}``; BN statistics re-estimated on
    ``calibration_images`` (eval transform) when given. Every BN scale starts at 1, also for an
    encoder built with ``zero_init_last_bn`` (same parameters, only their initial values)."""
    if getattr(encoder, "zero_init_last_bn", False):
        encoder = encoder.clone(zero_init_last_bn=False)
    variables = features.random_variables(encoder, image_size, seed)
    if calibration_images is None or "batch_stats" not in variables:
        return variables
    variables["batch_stats"] = population_batch_stats(
        encoder,
        variables,
        np.asarray(calibration_images),
        batches=calibration_batches,
        batch_size=features.device_multiple(batch_size),
        seed=seed,
        image_size=image_size,
        crop_fraction=crop_fraction,
        mean=tuple(mean),
        std=tuple(std),
    )
    return variables


def population_batch_stats(
    encoder: nn.Module,
    variables: Mapping[str, Any],
    images: np.ndarray,
    *,
    batches: int,
    batch_size: int,
    seed: int,
    image_size: int,
    crop_fraction: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Any:
    """BN running statistics replaced by population moments of the eval view of ``images``:
    every BN input's mean and variance, averaged over ``batches`` batches of ``batch_size``."""

    def batch_moments(params, zero_stats, images):
        views = features.eval_views(images, features.View(image_size, crop_fraction, mean, std))
        # Training-mode BN normalizes with the batch's own moments, so running statistics never
        # feed back into the forward pass; starting them at zero, one update leaves exactly
        # (1 - momentum) * batch moments.
        _, updates = encoder.apply(
            {"params": params, "batch_stats": zero_stats},
            views,
            train=True,
            mutable=["batch_stats"],
        )
        return jax.tree.map(lambda s: s / (1.0 - BN_MOMENTUM), updates["batch_stats"])

    fn = parallel.map_function(batch_moments)
    zero_stats = jax.tree.map(np.zeros_like, variables["batch_stats"])
    replicated = parallel.replicate((variables["params"], zero_stats))
    order = np.random.default_rng(seed).permutation(len(images))
    devices = parallel.local_device_count()
    # Every process makes the same calls on equal batches (BN moments span all devices).
    fewest = -parallel.max_over_processes(-len(images))
    batch_size = min(batch_size, fewest // devices * devices)
    if batch_size < devices:
        raise ValueError(f"{fewest} calibration images cannot fill {devices} devices")
    count = max(1, min(batches, fewest // batch_size))
    total = None
    for i in range(count):
        chunk = images[order[i * batch_size : (i + 1) * batch_size]]
        moments = parallel.fetch(fn(*replicated, parallel.shard_batch(chunk)))
        total = moments if total is None else jax.tree.map(np.add, total, moments)
    return jax.tree.map(lambda s: (s / count).astype(np.float32), total)


def checked_rows(rows: str | Sequence[str]) -> tuple[str, ...]:
    """``rows`` as a tuple (one name may be given bare); a non-empty subset of ``ROWS``."""
    rows = (rows,) if isinstance(rows, str) else tuple(str(r) for r in rows)
    if not rows or set(rows) - set(ROWS):
        raise ValueError(f"rows must be a non-empty subset of {ROWS}, got {rows}")
    return rows


def _pixel_encoder(sample: np.ndarray) -> features.PixelEncoder:
    """Raw pixels; grayscale images stored as 3 equal channels keep one (a third of the cost)."""
    sample = np.asarray(sample[:256])
    gray = sample.ndim == 4 and sample.shape[-1] == 3
    gray = gray and bool(np.all(sample[..., :1] == sample[..., 1:]))
    # One answer for all processes (each looked at its own images).
    return features.PixelEncoder(first_channel_only=not parallel.max_over_processes(not gray))


def _as_shards(split: features.SplitShards | features.LabeledImages) -> features.SplitShards:
    if isinstance(split, features.SplitShards):
        return split
    return features.SplitShards.from_arrays(split.images, split.labels)


def _first_images(split: features.SplitShards, count: int) -> np.ndarray:
    """Up to ``count`` of this process's first real images (its share of a calibration set)."""
    images, held = [], 0
    for shard in split.owned:
        for batch in split.batches(shard):
            keep = np.asarray(batch["image"])[np.asarray(batch["mask"], bool)]
            images.append(keep[: count - held])
            held += len(images[-1])
            if held >= count:
                return np.concatenate(images)
    return np.concatenate(images)


def evaluate_representation(
    encoder: nn.Module,
    encoder_variables: Mapping[str, Any],
    train: features.SplitShards | features.LabeledImages,
    test: features.SplitShards | features.LabeledImages,
    *,
    num_classes: int,
    view: features.View,
    l2_grid: Sequence[float] = logistic.DEFAULT_L2_GRID,
    extend_l2_grid: bool = True,
    max_iter: int = 500,
    holdout_fraction: float = 0.1,
    knn_ks: Sequence[int] = (20, 200),
    knn_temperature: float = knn.DEFAULT_TEMPERATURE,
    replicated: bool = False,
    seed: int = 0,
    details: dict[str, Any] | None = None,
) -> dict[str, float]:
    """One row: converged logistic regression (L2 chosen on held-out train) and kNN accuracies.

    The features are computed once per process on its own shards and shared by both.
    ``details``, when given, receives how the L2 was chosen: the held-out accuracy of every L2
    searched, and the final solve's iterations and gradient max-norm.
    """
    embed = functools.partial(
        features.embed_split, encoder, encoder_variables, view=view, replicated=replicated
    )
    train_x, test_x = embed(_as_shards(train)), embed(_as_shards(test))
    linear = logistic.select_and_fit_sharded(
        train_x, test_x, num_classes=num_classes, l2_grid=l2_grid,
        extend_grid=extend_l2_grid, holdout_fraction=holdout_fraction, seed=seed,
        max_iter=max_iter,
    )  # fmt: skip
    if details is not None:
        details.update(
            holdout_top1=linear["holdout_top1"],
            iterations=int(linear["iterations"]),
            grad_norm=float(linear["grad_norm"]),
        )
    row = {
        "linear_top1": linear["top1"],
        "l2": linear["l2"],
        "converged": float(linear["converged"]),
        "dim": float(train_x.features.shape[1]),
    }
    nearest = knn.sharded_knn_ks(
        train_x, test_x, num_classes=num_classes, ks=knn_ks, temperature=knn_temperature
    )
    for k in knn_ks:
        row[f"knn{k}_top1"] = nearest[k]["top1"]
    return row


def baseline_table(
    encoder: nn.Module,
    train: features.SplitShards | features.LabeledImages,
    test: features.SplitShards | features.LabeledImages,
    *,
    num_classes: int,
    view: features.View,
    pretrained_variables: Mapping[str, Any] | None = None,
    pretrained_replicated: bool = False,
    calibrate_bn: bool = True,
    calibration_images: int = 8 * 256,
    seed: int = 0,
    rows: Sequence[str] = ROWS,
    details: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, dict[str, float]]:
    """``{"byol"?, "random_init", "raw_pixels"}`` → one ``evaluate_representation`` row each.

    ``encoder`` is the pretrained architecture (module); the ``byol`` row needs
    ``pretrained_variables`` (host arrays, or replicated over local devices with
    ``pretrained_replicated``). ``train``/``test``: this process's shards (host arrays are read
    as shards). The random encoder's BN statistics come from ``calibration_images`` training
    images, each process contributing the first of its own share. ``rows``: which of the three
    to compute (comparing runs needs only ``("byol",)``; the other two do not depend on the
    run). ``details``, when given, receives each row's ``evaluate_representation`` details
    under its name. ``options``: keywords of ``evaluate_representation``.
    """
    rows = checked_rows(rows)
    train, test = _as_shards(train), _as_shards(test)

    def row(name: str, encoder_: nn.Module, variables: Mapping[str, Any], **kwargs: Any):
        into = None if details is None else details.setdefault(name, {})
        table[name] = evaluate_representation(
            encoder_, variables, train, test, num_classes=num_classes, view=view, seed=seed,
            details=into, **options, **kwargs,
        )  # fmt: skip

    table: dict[str, dict[str, float]] = {}
    if pretrained_variables is not None and "byol" in rows:
        row("byol", encoder, pretrained_variables, replicated=pretrained_replicated)
    if "random_init" not in rows and "raw_pixels" not in rows:
        return table
    share = _first_images(train, -(-calibration_images // jax.process_count()))
    if "random_init" in rows:
        random_variables = random_encoder_variables(
            encoder,
            image_size=view.image_size,
            seed=seed,
            calibration_images=share if calibrate_bn else None,
            crop_fraction=view.crop_fraction,
            mean=view.mean,
            std=view.std,
        )
        row("random_init", encoder, random_variables)
    if "raw_pixels" in rows:
        row("raw_pixels", _pixel_encoder(share), {})
    return table


def format_table(table: Mapping[str, Mapping[str, float]]) -> str:
    """A small fixed-width text table for the console and the README (accuracies in %)."""
    first = next(iter(table.values()), {})
    accuracy = [c for c in first if c.endswith("top1")]
    lines = [f"{'representation':<16}" + "".join(f"{c:>13}" for c in accuracy) + f"{'L2':>9}"]
    stopped = []
    for name, row in table.items():
        cells = "".join(f"{100 * row[c]:>12.2f}%" if c in row else f"{'-':>13}" for c in accuracy)
        mark = "*" if row.get("converged", 1.0) == 0.0 else ""
        stopped += [name] if mark else []
        lines.append(f"{name:<16}{cells}{row.get('l2', float('nan')):>9.0e}{mark}")
    if stopped:
        lines.append("* the solver stopped at its iteration cap before the gradient tolerance")
    return "\n".join(lines)


def flatten(table: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"byol": {"linear_top1": x}}`` -> ``{"byol/linear_top1": x}`` (metric names)."""
    return {f"{row}/{col}": float(v) for row, cells in table.items() for col, v in cells.items()}


def unflatten(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """The inverse of ``flatten``."""
    table: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        row, column = name.split("/", 1)
        table.setdefault(row, {})[column] = value
    return table


class BaselinesEvaluator:
    """The table: the evaluated encoder, the same architecture at random init, and raw pixels."""

    def __init__(
        self,
        train: features.SplitShards,
        test: features.SplitShards,
        *,
        num_classes: int,
        view: features.View,
        l2_grid: Sequence[float] = logistic.DEFAULT_L2_GRID,
        extend_l2_grid: bool = True,
        max_iter: int = 500,
        holdout_fraction: float = 0.1,
        knn_ks: Sequence[int] = (20, 200),
        knn_temperature: float = knn.DEFAULT_TEMPERATURE,
        calibrate_bn: bool = True,
        rows: Sequence[str] = ROWS,
        seed: int = 0,
    ):
        rows = checked_rows(rows)
        if not l2_grid or min(l2_grid) <= 0:
            raise ValueError(f"l2_grid must hold positive L2 strengths, got {tuple(l2_grid)}")
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
        if not knn_ks or min(knn_ks) < 1:
            raise ValueError(f"knn_ks must hold positive integers, got {tuple(knn_ks)}")
        self.train, self.test, self.view = train, test, view
        self.num_classes, self.calibrate_bn, self.seed = num_classes, calibrate_bn, seed
        self.rows = rows
        # Per row of the latest run: the held-out accuracy of every L2 searched, the final
        # solve's iterations and gradient norm (written to eval_<name>.json as "details").
        self.last_result: dict[str, Any] = {}
        self.options = dict(
            l2_grid=tuple(float(v) for v in l2_grid),
            extend_l2_grid=bool(extend_l2_grid),
            max_iter=int(max_iter),
            holdout_fraction=float(holdout_fraction),
            knn_ks=tuple(int(k) for k in knn_ks),
            knn_temperature=float(knn_temperature),
        )

    @classmethod
    def from_options(
        cls, data: EvalData, *, train_split: str = "", test_split: str = "", **options: Any
    ) -> BaselinesEvaluator:
        return cls(*data.splits(train_split, test_split), **data.common, seed=data.seed, **options)

    def run(
        self, encoder: nn.Module, variables: Mapping[str, Any], *, replicated: bool = False
    ) -> dict[str, float]:
        details: dict[str, Any] = {}
        table = baseline_table(
            encoder,
            self.train,
            self.test,
            num_classes=self.num_classes,
            view=self.view,
            pretrained_variables=variables,
            pretrained_replicated=replicated,
            calibrate_bn=self.calibrate_bn,
            seed=self.seed,
            rows=self.rows,
            details=details,
            **self.options,
        )
        self.last_result = details
        return flatten(table)

    def describe(self, metrics: Mapping[str, float]) -> str:
        return (
            f"{format_table(unflatten(metrics))}\n(table: {self.train.num_examples} train / "
            f"{self.test.num_examples} test images)"
        )
