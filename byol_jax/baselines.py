"""The gain from BYOL made visible: the same linear and kNN evaluation on baselines.

Rows of ``baseline_table``:

* ``byol``: the pretrained encoder (when its variables are given);
* ``random_init``: the same architecture with random weights. Its BatchNorm statistics are
  re-estimated on training images (the population mean/variance of every BN input, averaged over
  ``calibration_batches`` batches): with the initial statistics (mean 0, variance 1) activations
  drift in scale through the network and the baseline would look worse than random features
  are;
* ``raw_pixels``: the normalized eval view flattened (``linear_eval.PixelEncoder``).

Every row goes through exactly the same code as the BYOL row (``evaluate_representation``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import evaluate, export, input_pipeline, knn, linear_eval, parallel

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
    ``calibration_images`` (eval transform) when given."""
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = jax.device_get(
        jax.jit(lambda key: encoder.init(key, dummy, train=False))(jax.random.key(seed))
    )
    variables = dict(variables)
    if calibration_images is None or "batch_stats" not in variables:
        return variables
    variables["batch_stats"] = _population_batch_stats(
        encoder,
        variables,
        np.asarray(calibration_images),
        batches=calibration_batches,
        batch_size=linear_eval.device_multiple(batch_size),
        seed=seed,
        image_size=image_size,
        crop_fraction=crop_fraction,
        mean=tuple(mean),
        std=tuple(std),
    )
    return variables


def _population_batch_stats(
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
    def batch_moments(params, zero_stats, images):
        views = evaluate.eval_views(
            images, image_size=image_size, crop_fraction=crop_fraction, mean=mean, std=std
        )
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
    batch_size = min(batch_size, len(images) // devices * devices)
    if batch_size < devices:
        raise ValueError(f"{len(images)} calibration images cannot fill {devices} devices")
    count = max(1, min(batches, len(images) // batch_size))
    total = None
    for i in range(count):
        chunk = images[order[i * batch_size : (i + 1) * batch_size]]
        moments = parallel.fetch(fn(*replicated, parallel.shard_batch(chunk)))
        total = moments if total is None else jax.tree.map(np.add, total, moments)
    return jax.tree.map(lambda s: (s / count).astype(np.float32), total)


def evaluate_representation(
    encoder: nn.Module,
    encoder_variables: Mapping[str, Any],
    train: linear_eval.LabeledImages,
    test: linear_eval.LabeledImages,
    *,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float = 1.0,
    linear: Mapping[str, Any] | None = None,
    knn_k: int = knn.DEFAULT_K,
    knn_temperature: float = knn.DEFAULT_TEMPERATURE,
    run_linear: bool = True,
    run_knn: bool = True,
    feature_batch_size: int = 512,
) -> dict[str, float]:
    """``linear_top1/top5`` and ``knn_top1/top5`` of one encoder.

    ``linear``: keyword arguments of ``linear_eval.linear_evaluation`` (epochs, batch_size,
    base_lr, augment, ...). With ``augment=False`` the features are computed once and shared by
    the linear classifier and kNN.
    """
    linear = dict(linear or {})
    common = dict(image_size=image_size, crop_fraction=crop_fraction, mean=mean, std=std)
    row: dict[str, float] = {}
    shared = run_linear and linear.get("augment", True) is False and not linear.get("fine_tune")
    features = None
    if shared or run_knn:
        encode = functools.partial(
            linear_eval.encode_images,
            encoder,
            encoder_variables,
            batch_size=feature_batch_size,
            **common,
        )
        features = (encode(train.images), encode(test.images))
    if run_linear:
        if shared:
            # Options that only concern images do not apply to stored features.
            for name in ("augment", "fine_tune", "feature_batch_size"):
                linear.pop(name, None)
            result = linear_eval.linear_evaluation_on_features(
                features[0],
                train.labels,
                features[1],
                test.labels,
                num_classes=num_classes,
                **linear,
            )
        else:
            result = linear_eval.linear_evaluation(
                encoder,
                encoder_variables,
                train,
                test,
                num_classes=num_classes,
                **common,
                **linear,
            )
        row["linear_top1"], row["linear_top5"] = result["top1"], result["top5"]
    if run_knn:
        result = knn.knn_accuracy(
            features[0],
            train.labels,
            features[1],
            test.labels,
            num_classes=num_classes,
            k=knn_k,
            temperature=knn_temperature,
        )
        row["knn_top1"], row["knn_top5"] = result["top1"], result["top5"]
    return row


def baseline_table(
    encoder: nn.Module,
    train: linear_eval.LabeledImages,
    test: linear_eval.LabeledImages,
    *,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float = 1.0,
    pretrained_variables: Mapping[str, Any] | None = None,
    linear: Mapping[str, Any] | None = None,
    knn_k: int = knn.DEFAULT_K,
    knn_temperature: float = knn.DEFAULT_TEMPERATURE,
    run_linear: bool = True,
    run_knn: bool = True,
    calibrate_bn: bool = True,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``{"byol"?, "random_init", "raw_pixels"}`` → ``{"linear_top1", ..., "knn_top5"}``.

    ``encoder`` is the pretrained architecture (module); the ``byol`` row needs
    ``pretrained_variables``.
    """
    common = dict(
        num_classes=num_classes,
        image_size=image_size,
        mean=mean,
        std=std,
        crop_fraction=crop_fraction,
        linear=linear,
        knn_k=knn_k,
        knn_temperature=knn_temperature,
        run_linear=run_linear,
        run_knn=run_knn,
    )
    table: dict[str, dict[str, float]] = {}
    if pretrained_variables is not None:
        table["byol"] = evaluate_representation(
            encoder, pretrained_variables, train, test, **common
        )
    random_variables = random_encoder_variables(
        encoder,
        image_size=image_size,
        seed=seed,
        calibration_images=train.images if calibrate_bn else None,
        crop_fraction=crop_fraction,
        mean=mean,
        std=std,
    )
    table["random_init"] = evaluate_representation(encoder, random_variables, train, test, **common)
    table["raw_pixels"] = evaluate_representation(
        linear_eval.PixelEncoder(), {}, train, test, **common
    )
    return table


def format_table(table: Mapping[str, Mapping[str, float]]) -> str:
    """A small fixed-width text table (percentages) for the console and the README."""
    columns = sorted({c for row in table.values() for c in row})
    lines = [f"{'representation':<16}" + "".join(f"{c:>13}" for c in columns)]
    for name, row in table.items():
        cells = "".join(f"{100 * row[c]:>12.2f}%" if c in row else f"{'-':>13}" for c in columns)
        lines.append(f"{name:<16}{cells}")
    return "\n".join(lines)


def evaluate_pretrained(
    path: str,
    *,
    dataset: str,
    train_split: str = "train",
    test_split: str = "test",
    data_dir: str | None = None,
    idx_dir: str = input_pipeline.DEFAULT_IDX_DIR,
    out_file: str | None = None,
    step: int | None = None,
    **options: Any,
) -> dict[str, dict[str, float]]:
    """``baseline_table`` with the ``byol`` row from a pretraining workdir or export directory.

    ``options``: keywords of ``baseline_table`` (``linear``, ``knn_k``, ``run_knn``, ...).
    Writes the table as JSON to ``out_file`` when given.
    """
    inputs = export.read_for_evaluation(
        path, dataset=dataset, train_split=train_split, test_split=test_split,
        data_dir=data_dir, idx_dir=idx_dir, step=step,
    )  # fmt: skip
    spec = inputs.spec
    table = baseline_table(
        inputs.encoder,
        inputs.train,
        inputs.test,
        num_classes=inputs.num_classes,
        image_size=spec.image_size,
        mean=spec.mean,
        std=spec.std,
        crop_fraction=spec.crop_fraction,
        pretrained_variables=inputs.variables,
        **options,
    )
    if out_file:
        with open(out_file, "w") as f:
            json.dump(table, f, indent=2)
    return table
