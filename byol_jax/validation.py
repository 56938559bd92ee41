"""Checks a config before any work starts, with one clear message per problem.

Part of the launch layer: like ``launch.py`` and the training loop, it reads the config.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import ml_collections

from byol_jax import models

# evaluators.baselines.ROWS (not imported: that module pulls in the evaluators' dependencies).
TABLE_ROWS = ("byol", "random_init", "raw_pixels")

PATH_DATASETS = ("folder", "packed")  # data.dataset values that read data.folder

DTYPES = ("float32", "bfloat16")
CONV_IMPLS = ("auto", *models.CONV_IMPLS)
TRANSFER_GUARDS = ("allow", "log", "disallow", "log_explicit", "disallow_explicit")


class ConfigError(ValueError):
    """A config value is invalid: names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"config.{key}={value!r} is invalid: {allowed}")


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    node = config
    for part in key.split("."):
        if part not in node:
            raise ConfigError(key, None, "the key is missing from the config")
        node = node[part]
    return node


def _check(config, key: str, ok: Callable[[Any], bool], allowed: str) -> Any:
    value = _get(config, key)
    try:
        valid = bool(ok(value))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ConfigError(key, value, allowed)
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def validate_config(
    config: ml_collections.ConfigDict,
    *,
    device_count: int,
    process_count: int = 1,
    known_datasets: Callable[[str], bool] | None = None,
) -> None:
    """Raise ``ConfigError`` for the first invalid value; ``known_datasets(name)`` checks names."""
    batch = _check(config, "batch_size", lambda v: _is_int(v) and v > 0, "a positive integer")
    if batch % device_count:
        raise ConfigError(
            "batch_size", batch, f"must be divisible by the {device_count} devices in use"
        )
    if (batch // process_count) % (device_count // process_count):
        raise ConfigError("batch_size", batch, "per-process batch must split over local devices")
    steps = _check(config, "num_steps", _is_int, "an integer (> 0 overrides num_epochs)")
    _check(
        config,
        "num_epochs",
        lambda v: _is_number(v) and (v > 0 or steps > 0),
        "a positive number of epochs (or set num_steps > 0)",
    )
    _check(config, "seed", _is_int, "an integer")
    _check(config, "warmup_epochs", lambda v: _is_number(v) and v >= 0, "a number >= 0")
    _check(config, "max_warmup_fraction", lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)")
    for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        _check(config, key, lambda v: _is_int(v) and v > 0, "a positive integer")
    for key in ("async_checkpoints", "tensorboard", "compilation_cache"):
        _check(config, key, lambda v: isinstance(v, bool), "True or False")
    _check(config, "compilation_cache_dir", lambda v: isinstance(v, str), "a folder (or '')")
    _check(
        config,
        "transfer_guard",
        lambda v: v in TRANSFER_GUARDS,
        f"one of {TRANSFER_GUARDS} (jax.transfer_guard levels)",
    )
    _check(
        config,
        "profile_steps",
        lambda v: (
            tuple(v) == () or (len(v) == 2 and all(_is_int(x) for x in v) and 1 <= v[0] <= v[1])
        ),
        "() or (first, last) with 1 <= first <= last, e.g. --config.profile_steps='(10,12)'",
    )

    _check(config, "optimizer.base_lr", lambda v: _is_number(v) and v > 0, "a number > 0")
    _check(config, "optimizer.weight_decay", lambda v: _is_number(v) and v >= 0, "a number >= 0")
    _check(config, "optimizer.momentum", lambda v: 0 <= v < 1, "a number in [0, 1)")
    _check(config, "optimizer.trust_coefficient", lambda v: v > 0, "a number > 0")
    _check(config, "base_tau", lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")

    _check(
        config,
        "model.encoder",
        lambda v: v in models.ENCODERS,
        f"one of {sorted(models.ENCODERS)}",
    )
    _check(config, "model.width", lambda v: _is_int(v) and 1 <= v <= 8, "an integer in 1..8")
    _check(
        config,
        "model.base_width",
        lambda v: _is_int(v) and v >= 0,
        "an integer >= 0 (0 keeps the encoder's default, 64 for ResNets)",
    )
    _check(config, "model.stem", lambda v: v in models.STEMS, f"one of {models.STEMS}")
    _check(config, "model.dtype", lambda v: v in DTYPES, f"one of {DTYPES}")
    _check(config, "model.conv_impl", lambda v: v in CONV_IMPLS, f"one of {CONV_IMPLS}")
    _check(config, "model.padding", lambda v: v in models.PADDINGS, f"one of {models.PADDINGS}")
    for key in ("zero_init_last_bn", "projection_shortcuts"):
        _check(config, f"model.{key}", lambda v: isinstance(v, bool), "True or False")
    for key in ("projector_hidden_dim", "projector_dim", "predictor_hidden_dim"):
        _check(config, f"model.{key}", lambda v: _is_int(v) and v > 0, "a positive integer")

    dataset = _check(
        config,
        "data.dataset",
        lambda v: isinstance(v, str) and v,
        "a tfds name, 'folder' or 'packed'",
    )
    if dataset in PATH_DATASETS:
        what = "a folder of images" if dataset == "folder" else "the --out of byol_jax.prepare"
        _check(
            config,
            "data.folder",
            lambda v: isinstance(v, str) and v.strip(),
            f"the path of {what} (local or gs://) when data.dataset={dataset!r}",
        )
    if "folder_labels" in config.data:
        _check(config, "data.folder_labels", lambda v: isinstance(v, bool), "True or False")
    _check(
        config, "data.image_size", lambda v: _is_int(v) and 8 <= v <= 1024, "an integer in 8..1024"
    )
    _check(
        config,
        "data.source_size",
        lambda v: _is_int(v) and 8 <= v <= 2048,
        "an integer in 8..2048 (the host-side square size)",
    )
    _check(
        config,
        "data.train_source_size",
        lambda v: _is_int(v) and 0 <= v <= 4096,
        "an integer in 0..4096 (0: use data.source_size)",
    )
    _check(config, "data.eval_crop_fraction", lambda v: 0 < v <= 1, "a number in (0, 1]")
    _check(config, "data.eval_batch_size", lambda v: _is_int(v) and v > 0, "a positive integer")
    _check(config, "data.mean", lambda v: len(v) == 3, "three per-channel values")
    _check(config, "data.std", lambda v: len(v) == 3 and min(v) > 0, "three positive values")
    # Whether stream_shards divides the batch is checked where it applies: when tfds data is
    # actually streamed (in-memory IDX data has no shards).
    _check(
        config,
        "data.stream_shards",
        lambda v: _is_int(v) and (v == 0 or (v > 0 and v % process_count == 0)),
        f"0 (auto) or a positive multiple of the process count ({process_count})",
    )
    _check(config, "data.max_bad_records", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    log_every = config.log_every_steps
    positive_int = (lambda v: _is_int(v) and v > 0, "a positive integer")
    positive = (lambda v: _is_number(v) and v > 0, "a number > 0")
    # Options of the evaluators, by name in whichever config.evals entry has them (the entry's
    # type and option names are checked by evaluators.registry when the evaluators are built).
    option_checks = {
        "every_steps": (
            lambda v: _is_int(v) and v >= 0 and v % log_every == 0,
            f"0 (off) or a positive multiple of log_every_steps ({log_every})",
        ),
        "at_end": (lambda v: isinstance(v, bool), "True or False"),
        "k": positive_int,
        "temperature": positive,
        "knn_temperature": positive,
        "l2_grid": (
            lambda v: len(v) > 0 and all(_is_number(x) and x > 0 for x in v),
            "one or more positive L2 strengths",
        ),
        "holdout_fraction": (lambda v: 0 < v < 1, "a number in (0, 1)"),
        "max_iter": positive_int,
        "rows": (
            lambda v: len(v) > 0 and set(v) <= set(TABLE_ROWS),
            f"one or more of {TABLE_ROWS}",
        ),
        "knn_ks": (
            lambda v: len(v) > 0 and all(_is_int(k) and k > 0 for k in v),
            "one or more positive integers",
        ),
        "epochs": positive_int,
        "base_lr": positive,
        "batch_size": positive_int,
        "label_fraction": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    }
    for name, entry in config.evals.items():
        for option, (ok, allowed) in option_checks.items():
            if option in entry:
                _check(config, f"evals.{name}.{option}", ok, allowed)
    _check(config, "augment.crop_area_min", lambda v: 0 < v <= 1, "a number in (0, 1]")
    _check(
        config,
        "augment.crop_aspect_range",
        lambda v: len(v) == 2 and 0 < v[0] <= v[1],
        "two aspect ratios (width / height) 0 < low <= high, e.g. (0.75, 1.333); (1, 1): square",
    )
    _check(config, "augment.jitter_prob", lambda v: 0 <= v <= 1, "a probability in [0, 1]")
    _check(config, "augment.jitter_strength", lambda v: v >= 0, "a number >= 0 (0: no jitter)")
    for key in ("augment.blur_prob", "augment.solarize_prob"):
        _check(
            config,
            key,
            lambda v: len(v) == 2 and all(0 <= p <= 1 for p in v),
            "two probabilities (view 1, view 2) in [0, 1]",
        )
    # Last: it imports TensorFlow Datasets, which takes seconds; the other checks answer faster.
    if dataset not in PATH_DATASETS and known_datasets is not None and not known_datasets(dataset):
        raise ConfigError(
            "data.dataset",
            dataset,
            "not a tfds dataset (e.g. fashion_mnist, mnist, cifar10, cifar100, stl10, "
            "imagenet2012, imagenette), 'folder' or 'packed'",
        )
