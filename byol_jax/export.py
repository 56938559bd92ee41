"""Take a pretrained encoder away: export it, load it as a function, embed a dataset split.

An exported encoder is a directory with two files:

* ``encoder.msgpack``: ``{"params": ..., "batch_stats": ...}`` of the online encoder alone,
  serialized with ``flax.serialization`` (msgpack; never pickle), loadable without this package's
  model code as a nested dict of NumPy arrays;
* ``encoder.json``: the architecture and the input convention (encoder name, width, base_width,
  stem, dtype, image_size, source_size, crop_fraction, mean, std, embedding_dim) plus the
  pretraining step it came from.

``load_encoder(path)`` accepts such a directory (or either file in it) or a pretraining workdir;
from a workdir it reads the ``encoder.json`` pretraining wrote there and restores only the online
encoder's parameters and BN statistics from the newest Orbax checkpoint (no optimizer state, no
target network).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Iterable
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from byol_jax import checkpoint, features, storage
from byol_jax import data as input_pipeline
from byol_jax.features import NETWORKS, EncoderSpec, encoder_variables  # noqa: F401  (public here too)

ENCODER_FILE = "encoder.msgpack"
SPEC_FILE = "encoder.json"
FORMAT = features.SPEC_FORMAT


class ExportError(features.SpecError):
    """A path holds neither a pretraining workdir with checkpoints nor an exported encoder."""


def restore_encoder_variables(
    workdir: storage.PathLike, step: int | None = None, *, network: str = "online"
) -> tuple[dict, int]:
    """Encoder variables (NumPy) of checkpoint ``step`` in ``workdir``: the online network's
    (the one BYOL releases), or the target (EMA) network's with ``network="target"``.

    Without ``step``: the newest checkpoint that can be read (a damaged newer one is skipped
    with a warning, as when training resumes).
    """
    fields = features.encoder_subtrees(network)  # refuses an unknown network before any I/O
    directory = checkpoint.checkpoint_dir(workdir)
    if not directory.is_dir():
        raise ExportError(f"{workdir} has no checkpoints directory ({directory})")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    # The PyTree handler reads StandardSave checkpoints and can restore a subtree only.
    with ocp.CheckpointManager(
        directory, options=options, item_handlers=ocp.PyTreeCheckpointHandler()
    ) as manager:
        steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
        if not steps:
            raise ExportError(f"no checkpoint in {directory}; pretrain first")
        failures = []
        for candidate in steps:
            try:
                restored = _restore_encoder_subtree(manager, candidate, fields.values())
                return features.encoder_variables(restored, network), candidate
            except Exception as error:  # Orbax/TensorStore raise many types for bad files.
                failures.append(f"step {candidate}: {type(error).__name__}: {error}")
                logging.warning("cannot read checkpoint %s: %s", candidate, failures[-1])
    raise ExportError(f"no readable checkpoint in {directory} ({'; '.join(failures)})")


def _restore_encoder_subtree(
    manager: ocp.CheckpointManager, step: int, fields: Iterable[str]
) -> dict[str, Any]:
    """``{field: {"encoder": ...}}`` of checkpoint ``step``: only those encoder subtrees read."""
    tree = manager.item_metadata(step).tree
    wanted = {field: {"encoder": tree[field]["encoder"]} for field in fields}
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
    return manager.restore(
        step,
        args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True),
    )


def _read_spec_file(directory: storage.PathLike) -> EncoderSpec:
    return EncoderSpec.from_json(json.loads(storage.read_text(storage.path(directory) / SPEC_FILE)))


def _resolve(location: storage.PathLike) -> tuple[str, epath.Path]:
    """(kind, directory) of ``location`` (local or ``gs://``): kind is "export" or "workdir"."""
    path = storage.path(location)
    if path.name in (ENCODER_FILE, SPEC_FILE) and path.is_file():
        path = path.parent
    if (path / ENCODER_FILE).is_file():
        return "export", path
    if checkpoint.checkpoint_dir(path).is_dir() or (path / "config.json").is_file():
        return "workdir", path
    raise ExportError(
        f"{path} is neither an exported encoder ({SPEC_FILE} + {ENCODER_FILE}) nor a "
        "pretraining workdir (checkpoints/)"
    )


def read_encoder(
    path: storage.PathLike, *, step: int | None = None, conv_impl: str = "auto"
) -> tuple[Any, dict[str, Any], EncoderSpec]:
    """(encoder module, ``{"params", "batch_stats"}``, spec) from a workdir or an export.

    ``step`` picks a checkpoint of a workdir (default: newest); exports hold one step. Both
    describe the encoder in ``encoder.json`` (pretraining writes it into the workdir).
    """
    kind, directory = _resolve(path)
    if not (directory / SPEC_FILE).is_file():
        raise ExportError(
            f"{directory} has no {SPEC_FILE} (workdirs of earlier versions): run launch.py "
            "--mode=export (or any evaluation mode) with the run's --config once to write it"
        )
    spec = _read_spec_file(directory)
    if kind == "export":
        variables = flax.serialization.msgpack_restore(storage.read_bytes(directory / ENCODER_FILE))
    else:
        variables, restored_step = restore_encoder_variables(directory, step)
        spec = dataclasses.replace(spec, step=restored_step)
    return spec.build(conv_impl), dict(variables), spec


def export_encoder(
    workdir: storage.PathLike,
    out_dir: storage.PathLike,
    *,
    step: int | None = None,
    process_index: int = 0,
) -> str:
    """Write ``out_dir/encoder.msgpack`` and ``out_dir/encoder.json`` (local or ``gs://``);
    returns ``out_dir``.

    On a pod every process must call it (Orbax's restore is collective); only process 0 writes.
    """
    _, variables, spec = read_encoder(workdir, step=step)
    if process_index != 0:
        return str(out_dir)
    folder = storage.makedirs(out_dir)
    payload = flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, variables))
    # Each file is written whole (aside and renamed on local disk): never half-written.
    storage.write_bytes(folder / ENCODER_FILE, payload)
    storage.write_text(folder / SPEC_FILE, json.dumps(spec.to_json(), indent=2) + "\n")
    return str(folder)


def _as_image_batch(images: Any) -> np.ndarray:
    """float32 RGB [N, H, W, 3] in [0, 1] from uint8/float, 1- or 3-channel, NHWC or NHW.

    Converted on the host (exactly as ``augment.to_float``/``to_rgb`` would on the device), so
    every input kind shares one compiled encoder per image size.
    """
    x = np.asarray(images)
    if x.ndim == 3:  # [N, H, W]: grayscale without a channel axis
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [N, H, W, C] with C in (1, 3), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError("integer images must lie in [0, 255]")
        x = x.astype(np.float32) / np.float32(255.0)
    x = x.astype(np.float32)  # floats are taken to be in [0, 1]
    return np.broadcast_to(x, (*x.shape[:3], 3)) if x.shape[-1] == 1 else x


def load_encoder(
    path: storage.PathLike,
    *,
    batch_size: int = 256,
    step: int | None = None,
    conv_impl: str = "auto",
) -> Callable[[np.ndarray], np.ndarray]:
    """A function from images to float32 NumPy embeddings [N, embedding_dim].

    Images: [N, H, W, C] (C 1 or 3; [N, H, W] is read as grayscale), uint8 in [0, 255] or float
    in [0, 1], any N and any H, W. They get the eval transform of pretraining: central crop of
    ``crop_fraction`` of the shorter side, bicubic resize to ``image_size``, normalization; the
    encoder runs in inference mode with its BN moving averages. Images at the training source
    size reproduce the embeddings of pretraining's evaluation exactly. The function carries
    ``spec`` (an ``EncoderSpec``) as an attribute.
    """
    encoder, variables, spec = read_encoder(path, step=step, conv_impl=conv_impl)

    def embed(images: np.ndarray) -> np.ndarray:
        batch = _as_image_batch(images)
        if batch.shape[0] == 0:
            return np.zeros((0, spec.embedding_dim), np.float32)
        return features.embed_images(encoder, variables, batch, spec.view, batch_size=batch_size)

    embed.spec = spec  # type: ignore[attr-defined]
    return embed


def embed_split(
    path: storage.PathLike,
    dataset: str,
    split: str,
    out_path: str,
    *,
    data_dir: str | None = None,
    idx_dir: str = input_pipeline.DEFAULT_IDX_DIR,
    batch_size: int = 256,
    save_labels: bool = True,
    folder_labels: bool = False,
    workdir: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, Any]:
    """Embed every example of a split and ``np.save`` them to ``out_path`` [N, D].

    Labels go next to it as ``<out_path stem>_labels.npy`` unless ``save_labels`` is False.
    With ``process_count`` > 1 (a pod, all processes calling together) process ``p`` embeds
    only its contiguous part of the split and writes it alone, to ``part_paths(out_path, p,
    process_count)``: no host embeds or holds the whole split, and no two write the same object.
    ``read_embeddings(out_path)`` joins the parts in order, which is the one-process array.
    ``workdir``: a folder dataset's file list stored by pretraining (the same order as training).
    Returns the written paths and the shape of what this process wrote.
    """
    encoder, variables, spec = read_encoder(path)
    batches = input_pipeline.eval_batches(
        dataset,
        split,
        data_dir=data_dir,
        batch_size=features.device_multiple(batch_size),
        source_size=spec.source_size,
        process_index=process_index,
        process_count=process_count,
        idx_dir=idx_dir,
        folder_labels=folder_labels,
        workdir=workdir,
    )
    # Every process gets the same number of batches (padding masked), so the device calls of
    # a multi-process run stay in step.
    embeddings, labels = features.embed_batches(encoder, variables, batches, spec.view)
    target, labels_target = part_paths(out_path, process_index, process_count)
    storage.makedirs(storage.path(target).parent)
    _save_npy(target, embeddings)
    result: dict[str, Any] = {"embeddings": target, "shape": list(embeddings.shape)}
    if save_labels:
        _save_npy(labels_target, labels)
        result["labels"] = labels_target
    return result


def part_paths(out_path: str, process_index: int = 0, process_count: int = 1) -> tuple[str, str]:
    """(embeddings, labels) files that process ``process_index`` of ``process_count`` writes.

    One process: ``<stem>.npy`` and ``<stem>_labels.npy``; several:
    ``<stem>-00003-of-00064.npy`` and ``<stem>_labels-00003-of-00064.npy``.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    stem = out_path[: -len(".npy")] if out_path.endswith(".npy") else out_path
    if process_count == 1:
        return f"{stem}.npy", f"{stem}_labels.npy"
    part = f"-{process_index:05d}-of-{process_count:05d}.npy"
    return f"{stem}{part}", f"{stem}_labels{part}"


def read_embeddings(out_path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(embeddings [N, D], labels [N] or None) that ``embed_split`` wrote to ``out_path``,
    from one file or joined from every process's part, in split order."""
    single, single_labels = part_paths(out_path)
    if storage.path(single).is_file():
        return _load_npy(single), _load_npy_if_present(single_labels)
    stem = single[: -len(".npy")]
    folder = storage.path(stem).parent
    parts = sorted(folder.glob(f"{storage.path(stem).name}-?????-of-?????.npy"))
    counts = {int(p.name[-len("00064.npy") : -len(".npy")]) for p in parts}
    if len(counts) != 1 or len(parts) != next(iter(counts)):
        raise FileNotFoundError(
            f"no complete embeddings at {out_path}: expected {single} or one part per process "
            f"({stem}-NNNNN-of-NNNNN.npy), found {[p.name for p in parts] or 'none'}"
        )
    count = len(parts)
    pairs = [part_paths(out_path, index, count) for index in range(count)]
    embeddings = np.concatenate([_load_npy(e) for e, _ in pairs])
    labels = [_load_npy_if_present(lab) for _, lab in pairs]
    return embeddings, None if any(lab is None for lab in labels) else np.concatenate(labels)


def _load_npy(source: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(source)), allow_pickle=False)


def _load_npy_if_present(source: str) -> np.ndarray | None:
    return _load_npy(source) if storage.path(source).is_file() else None


def _save_npy(target: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    storage.write_bytes(target, buffer.getvalue())
