"""The workdir's record of a run: ``config.json``, ``encoder.json``, and the refusal to resume
checkpoints under a config whose model or data differ from the one that wrote them.

Part of the training loop's layer (with ``train.py`` and ``launch.py``, it reads the config).
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections

from byol_jax import checkpoint, export, features, storage

# Config sections that must not change under an existing run's checkpoints.
_FIXED_KEYS = (
    "model",
    "data.dataset",
    "data.folder",
    "data.image_size",
    "data.source_size",
    "seed",
)
# Keys added after runs were saved without them: a missing key meant this (the old behaviour).
_ADDED_KEY_DEFAULTS = {
    "model.padding": "symmetric",
    "model.projection_shortcuts": False,
    "data.folder": "",
    "data.folder_labels": False,
}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_and_save_config(
    config: ml_collections.ConfigDict,
    workdir: storage.PathLike,
    *,
    allow_config_change: bool = False,
) -> None:
    """Write ``workdir/config.json``; refuse a run whose model/data differ from the saved one."""
    path = storage.path(workdir) / "config.json"
    new = json.loads(config.to_json_best_effort())
    has_checkpoints = bool(checkpoint.step_dirs(workdir))
    if path.exists() and has_checkpoints and not allow_config_change:
        _refuse_changes(path, new, workdir)
    # Written whole: a crash never leaves a half-written config.
    storage.write_text(path, json.dumps(new, indent=2, sort_keys=True))
    write_encoder_spec(config, workdir)


def refuse_a_shorter_run(workdir: storage.PathLike, total_steps: int) -> None:
    """Refuse a workdir whose newest checkpoint is past ``total_steps`` (a shorter run pointed at
    a longer one's workdir), changes allowed or not: resuming would train nothing and score the
    longer run's encoder as this one's. Every process calls it, so all exit together."""
    saved_steps = checkpoint.step_dirs(workdir)
    if saved_steps and saved_steps[-1] > total_steps:
        raise ConfigConflictError(
            f"{workdir} holds a checkpoint at step {saved_steps[-1]}, past the {total_steps} "
            "steps this config trains (num_epochs, num_steps or batch_size is smaller than the "
            "saved run's). Use a new --workdir for the shorter run."
        )


def _refuse_changes(path: Any, new: dict[str, Any], workdir: storage.PathLike) -> None:
    old = _flatten(json.loads(storage.read_text(path)))
    flat_new = _flatten(new)
    changed = sorted(
        key
        for key in set(old) | set(flat_new)
        if key.startswith(_FIXED_KEYS)
        and old.get(key, _ADDED_KEY_DEFAULTS.get(key)) != flat_new.get(key)
    )
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {flat_new.get(k)!r}" for k in changed[:5])
        raise ConfigConflictError(
            f"{workdir} holds checkpoints of a different run ({diffs}). Use a new --workdir, "
            "or pass --allow_config_change to resume anyway."
        )


def encoder_spec(config: ml_collections.ConfigDict) -> features.EncoderSpec:
    """The encoder's architecture and input convention (``workdir/encoder.json``)."""
    model, data = config.model, config.data
    return features.EncoderSpec(
        encoder=model.encoder,
        width=int(model.width),
        base_width=int(model.base_width) or None,  # 0 keeps the variant's default
        stem=model.stem,
        dtype=model.dtype,
        image_size=int(data.image_size),
        source_size=int(data.source_size),
        crop_fraction=float(data.eval_crop_fraction),
        mean=tuple(data.mean),
        std=tuple(data.std),
        padding=model.padding,
        projection_shortcuts=bool(model.projection_shortcuts),
    )


def write_encoder_spec(config: ml_collections.ConfigDict, workdir: storage.PathLike) -> None:
    """``workdir/encoder.json``: what evaluation and export read instead of the config."""
    path = storage.path(workdir) / export.SPEC_FILE
    storage.write_text(path, json.dumps(encoder_spec(config).to_json(), indent=2))


def ensure_encoder_spec(config: ml_collections.ConfigDict, workdir: storage.PathLike) -> None:
    """Workdirs of earlier versions lack ``encoder.json``: write it from ``config`` after checking
    that the config's model and data match the workdir's ``config.json``."""
    if (storage.path(workdir) / export.SPEC_FILE).exists():
        return
    path = storage.path(workdir) / "config.json"
    if not path.exists():
        return  # not a workdir: export.read_encoder explains
    _refuse_changes(path, json.loads(config.to_json_best_effort()), workdir)
    write_encoder_spec(config, workdir)


class ConfigConflictError(ValueError):
    """The config differs from the one that wrote the checkpoints in the workdir."""
