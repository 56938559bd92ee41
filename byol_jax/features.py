"""The one feature path: an encoder from an explicit spec, and the embeddings of a split.

Every evaluator (probe, kNN, linear, baselines) and the export go through ``embed_images``:
the deterministic eval view (central crop, bicubic resize, normalization), the encoder in
inference mode (BatchNorm moving averages), padded and sharded over the local devices with
``flax.jax_utils.pad_shard_unpad`` and split over processes: each process embeds its own slice
of the split and ``multihost_utils.process_allgather`` hands every process all the rows.

No config and no Orbax here: callers pass an ``EncoderSpec`` (or a module) and variables.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import flax.jax_utils
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import augment, models, parallel
from byol_jax import data as input_pipeline

SPEC_FORMAT = "byol_jax.encoder.v1"


class SpecError(ValueError):
    """An encoder description that this version cannot read."""


@dataclasses.dataclass(frozen=True)
class View:
    """The deterministic evaluation transform of an encoder's inputs."""

    image_size: int
    crop_fraction: float
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """Architecture and input convention of an encoder (the content of ``encoder.json``)."""

    encoder: str
    width: int
    base_width: int | None  # None: the variant's default
    stem: str
    dtype: str
    image_size: int  # the encoder's input resolution
    source_size: int  # host resize of the training pipeline
    crop_fraction: float  # central crop of the eval transform, before resizing to image_size
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embedding_dim: int = 0  # 0: filled in from the architecture
    step: int | None = None  # pretraining step of the weights
    padding: str = "symmetric"  # model.padding (older encoder.json files lack it)
    projection_shortcuts: bool = False  # model.projection_shortcuts

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not self.embedding_dim:
            dim = models.embedding_dim(self.build("native"))
            object.__setattr__(self, "embedding_dim", dim)

    @property
    def view(self) -> View:
        return View(self.image_size, self.crop_fraction, self.mean, self.std)

    def build(self, conv_impl: str = "auto") -> models.ResNet:
        """The encoder module (cross-device BN axis set, so it can also be fine-tuned)."""
        if conv_impl == "auto":
            # Both implementations share parameters; matmul is the fast one on CPU.
            conv_impl = "matmul" if jax.default_backend() == "cpu" else "native"
        return models.build_encoder(
            self.encoder,
            width=self.width,
            base_width=self.base_width,
            stem=self.stem,
            axis_name=parallel.AXIS_NAME,
            dtype=jnp.dtype(self.dtype),
            conv_impl=conv_impl,
            padding=self.padding,
            projection_shortcuts=self.projection_shortcuts,
        )

    def to_json(self) -> dict[str, Any]:
        return {"format": SPEC_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EncoderSpec:
        if data.get("format") != SPEC_FORMAT:
            raise SpecError(
                f"unsupported encoder format {data.get('format')!r}; want {SPEC_FORMAT}"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


class LabeledImages(NamedTuple):
    """A labelled split held in host memory: uint8 (or [0, 1] float) NHWC images, int labels."""

    images: np.ndarray
    labels: np.ndarray


class PixelEncoder(nn.Module):
    """The raw-pixel "encoder": flattens the normalized view (a baseline for linear eval/kNN)."""

    first_channel_only: bool = False  # grayscale stored as 3 equal channels

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        if self.first_channel_only:
            x = x[..., :1]
        return x.reshape(x.shape[0], -1).astype(jnp.float32)


def eval_views(images: jax.Array, view: View) -> jax.Array:
    """Deterministic centre crop + resize + normalization of a uint8 batch."""
    crop = functools.partial(
        augment.center_crop_resize, out_size=view.image_size, crop_fraction=view.crop_fraction
    )
    return augment.normalize(jax.vmap(crop)(images), view.mean, view.std)


def load_split(
    dataset: str,
    split: str,
    *,
    source_size: int,
    data_dir: str | None = None,
    idx_dir: str = input_pipeline.DEFAULT_IDX_DIR,
    batch_size: int = 1000,
    folder_labels: bool = False,
) -> LabeledImages:
    """Read a whole split into host memory (uint8 [N, S, S, 3] images and int32 labels).

    Meant for datasets of up to a few hundred thousand small images (Fashion-MNIST, CIFAR,
    STL-10); ImageNet does not fit and needs a streaming evaluator.
    """
    images, labels = [], []
    for batch in input_pipeline.eval_batches(
        dataset,
        split,
        data_dir=data_dir,
        batch_size=batch_size,
        source_size=source_size,
        idx_dir=idx_dir,
        folder_labels=folder_labels,
    ):
        keep = batch["mask"]
        images.append(batch["image"][keep])
        labels.append(batch["label"][keep])
    return LabeledImages(np.concatenate(images), np.concatenate(labels).astype(np.int32))


def device_multiple(size: int) -> int:
    """``size`` rounded up to a multiple of the local device count (a mapped batch size)."""
    devices = parallel.local_device_count()
    return max(devices, int(math.ceil(size / devices)) * devices)


@functools.lru_cache(maxsize=32)
def _encode_fn(encoder: nn.Module, view: View) -> Callable:
    # Cached so that repeated calls (e.g. the periodic kNN) compile once per shape.
    def encode(variables: Any, images: jax.Array) -> jax.Array:
        return encoder.apply(variables, eval_views(images, view), train=False).astype(jnp.float32)

    return flax.jax_utils.pad_shard_unpad(parallel.map_function(encode), static_argnums=(0,))


def embed_images(
    encoder: nn.Module,
    variables: Mapping[str, Any],
    images: np.ndarray,
    view: View,
    *,
    batch_size: int = 512,
    replicated: bool = False,
) -> np.ndarray:
    """Features [N, D] of host images [N, H, W, C] (the same array on every process).

    ``variables``: ``{"params", "batch_stats"}`` of the encoder, on the host, or already
    replicated over the local devices (``replicated=True``: e.g. the training state's own
    encoder subtree, which then never leaves the devices). Each process embeds a contiguous
    slice of ``images`` in the same number of fixed-size calls (one compilation) and every
    process returns all N rows.
    """
    images = np.asarray(images)
    count, processes = len(images), jax.process_count()
    per_process = -(-count // processes)
    lo = min(jax.process_index() * per_process, count)
    local = images[lo : min(lo + per_process, count)]
    if not replicated:
        variables = parallel.replicate(dict(variables))
    batch = device_multiple(batch_size)
    per_device = batch // parallel.local_device_count()
    fn = _encode_fn(encoder, view)
    parts = [
        fn(variables, local[start : start + batch], min_device_batch=per_device)
        for start in range(0, max(per_process, 1), batch)  # equal call counts on all processes
    ]
    features = np.concatenate(parts)[: len(local)]
    if processes == 1:
        return features
    from jax.experimental import multihost_utils

    padded = np.zeros((per_process, *features.shape[1:]), features.dtype)
    padded[: len(features)] = features
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return gathered.reshape(-1, *features.shape[1:])[:count]


def embed_batches(
    encoder: nn.Module,
    variables: Mapping[str, Any],
    batches: Iterable[Mapping[str, np.ndarray]],
    view: View,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every unmasked example of a stream of host batches (one process).

    For splits too large to hold (``input_pipeline.eval_batches``); batches of one size share
    one compilation.
    """
    replicated = parallel.replicate(dict(variables))
    fn = _encode_fn(encoder, view)
    features, labels = [], []
    for batch in batches:
        keep = np.asarray(batch.get("mask", np.ones(len(batch["image"]), bool)))
        out = fn(replicated, np.asarray(batch["image"]))
        features.append(out[keep])
        label = batch.get("label", np.full(len(keep), -1, np.int32))
        labels.append(np.asarray(label)[keep])
    if not features:
        raise ValueError("no batches to embed")
    return np.concatenate(features), np.concatenate(labels).astype(np.int32)


def encoder_variables(tree: Any) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` of the online encoder of a TrainState (or its dict form).

    Works on host and replicated states alike: it only selects subtrees, it copies nothing.
    """
    get = tree.get if isinstance(tree, Mapping) else lambda name: getattr(tree, name)
    return {
        "params": get("online_params")["encoder"],
        "batch_stats": get("online_batch_stats")["encoder"],
    }


def feature_dim(encoder: nn.Module, variables: Mapping[str, Any], view: View) -> int:
    """Width of the encoder's output for the view's inputs (no computation)."""
    dummy = jax.ShapeDtypeStruct((1, view.image_size, view.image_size, 3), jnp.float32)
    out = jax.eval_shape(lambda v, x: encoder.apply(v, x, train=False), dict(variables), dummy)
    return int(out.shape[-1])


def random_variables(encoder: nn.Module, image_size: int, seed: int = 0) -> dict[str, Any]:
    """Freshly initialized ``{"params", "batch_stats"}`` of ``encoder`` (host arrays)."""
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    init = jax.jit(lambda key: encoder.init(key, dummy, train=False))
    return dict(jax.device_get(init(jax.random.key(seed))))
