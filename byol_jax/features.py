"""The one feature path: an encoder from an explicit spec, and the embeddings of a split.

Evaluators read a split as ``SplitShards`` (each process its own contiguous shards, streamed
from the input pipeline, or replayed from memory when the process's share is at most
``IN_MEMORY_BYTES`` of decoded images) and embed it with ``embed_split``: the deterministic eval
view (central crop, bicubic resize, normalization), the encoder in inference mode (BatchNorm
moving averages), over the local devices. The features stay on the process that computed them
(``LocalFeatures``); evaluators combine them with collectives over all devices (kNN candidate
merge, sums of losses and counts), never by gathering them.

``embed_images`` (host images, every process gets all rows via ``process_allgather``) and
``load_split`` (a whole split in memory) remain for the export and small data.

No config and no Orbax here: callers pass an ``EncoderSpec`` (or a module) and variables.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
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


NETWORKS = ("online", "target")  # a TrainState holds <network>_params / <network>_batch_stats


def encoder_subtrees(network: str = "online") -> dict[str, str]:
    """The TrainState fields holding ``network``'s ``{"params", "batch_stats"}``."""
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    return {"params": f"{network}_params", "batch_stats": f"{network}_batch_stats"}


def encoder_variables(tree: Any, network: str = "online") -> dict[str, Any]:
    """``{"params", "batch_stats"}`` of ``network``'s encoder (the online one by default) of a
    TrainState, its dict form or a restored part of it holding those fields.

    Works on host and replicated states alike: it only selects subtrees, it copies nothing.
    """
    get = tree.get if isinstance(tree, Mapping) else lambda name: getattr(tree, name)
    return {key: get(field)["encoder"] for key, field in encoder_subtrees(network).items()}


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


# ---- a split read per process, and its embeddings kept per process ----------------------------

# Largest decoded share of a split (bytes of uint8 images per process) that an evaluator keeps in
# host memory between passes; larger shares are read again from the input pipeline on every
# pass. Both give exactly the same batches, so results do not depend on the choice.
IN_MEMORY_BYTES = 1 << 30

Batch = Mapping[str, np.ndarray]  # image uint8 [B, S, S, 3], label int32 [B], mask bool [B]
ShardReader = Callable[[int, int], Iterable[Batch]]  # (shard index, shard count) -> batches


class SplitShards:
    """This process's share of a split: ``num_shards`` contiguous virtual shards, of which
    process ``p`` of ``P`` owns ``[p * S / P, (p + 1) * S / P)``.

    ``read(index, count)`` is ``input_pipeline.eval_batches`` with ``process_index=index,
    process_count=count``: every shard yields the same number of equal-size batches (padding
    masked), so all processes make the same number of device calls. Shards make the order of a
    split's examples (shard-major) independent of the process count, which is what lets the
    linear protocol draw the same global batches on any number of processes.

    ``in_memory`` (the share's decoded images fit ``in_memory_bytes``): the first pass over a
    shard keeps its batches, later passes replay them; otherwise every pass streams again.
    """

    def __init__(
        self,
        read: ShardReader,
        *,
        num_examples: int,
        example_bytes: int,
        num_shards: int = 0,
        in_memory_bytes: int = IN_MEMORY_BYTES,
        name: str = "",
    ):
        processes, index = jax.process_count(), jax.process_index()
        num_shards = int(num_shards or processes)
        if num_shards < 1 or num_shards % processes:
            raise ValueError(
                f"{num_shards} shards of split {name!r} cannot be shared by {processes} "
                "processes: the shard count must be a positive multiple of the process count"
            )
        if num_examples < num_shards:
            raise ValueError(f"split {name!r} has {num_examples} examples for {num_shards} shards")
        self.read, self.name = read, name
        self.num_examples, self.num_shards = int(num_examples), num_shards
        per_process = num_shards // processes
        self.owned = range(index * per_process, (index + 1) * per_process)
        self.local_bytes = example_bytes * -(-num_examples // num_shards) * per_process
        self.in_memory = self.local_bytes <= in_memory_bytes
        self._cache: dict[int, list[Batch]] = {}
        self._labels: dict[int, np.ndarray] = {}

    def batches(self, shard: int) -> Iterator[Batch]:
        """One pass over an owned shard, in order (padding rows have ``mask`` False)."""
        if shard not in self.owned:
            raise ValueError(f"shard {shard} of {self.name!r} belongs to another process")
        if not self.in_memory:
            return iter(self.read(shard, self.num_shards))
        if shard not in self._cache:
            self._cache[shard] = [
                {key: np.asarray(value) for key, value in batch.items()}
                for batch in self.read(shard, self.num_shards)
            ]
        return iter(self._cache[shard])

    def labels(self, shard: int) -> np.ndarray:
        """Labels of the real examples of an owned shard, in order (one pass, then cached)."""
        if shard not in self._labels:
            parts = [np.asarray(b["label"])[np.asarray(b["mask"])] for b in self.batches(shard)]
            self._labels[shard] = np.concatenate(parts).astype(np.int32)
        return self._labels[shard]

    @classmethod
    def from_arrays(
        cls, images: np.ndarray, labels: np.ndarray, *, num_shards: int = 0, batch_size: int = 256
    ) -> SplitShards:
        """Host arrays (the same on every process) read as shards: for tests and small data."""
        images = np.asarray(images)
        shards = int(num_shards or jax.process_count())
        batch = min(device_multiple(batch_size), device_multiple(-(-len(images) // shards)))
        example_bytes = int(np.prod(images.shape[1:])) * images.dtype.itemsize
        # The arrays are in memory already: slicing them again is the cheap "stream".
        return cls(
            lambda index, count: read_arrays(images, labels, index, count, batch),
            num_examples=len(images), example_bytes=example_bytes, num_shards=shards,
            in_memory_bytes=0,
        )  # fmt: skip


def read_arrays(
    images: np.ndarray, labels: np.ndarray, index: int, count: int, batch_size: int
) -> Iterator[Batch]:
    """``eval_batches``' contract on host arrays: shard ``index`` of ``count`` contiguous,
    near-equal shards, in batches of ``batch_size``, the same number for every shard."""
    total = len(images)
    largest = -(-total // count)
    lo, hi = index * total // count, (index + 1) * total // count
    for start in range(0, -(-largest // batch_size) * batch_size, batch_size):
        rows = np.arange(lo + start, lo + start + batch_size)
        mask = rows < hi
        rows = np.where(mask, rows, lo)
        image = np.where(mask[:, None, None, None], np.asarray(images)[rows], 0)
        label = np.where(mask, np.asarray(labels)[rows], 0)
        yield {"image": image.astype(images.dtype), "label": label.astype(np.int32), "mask": mask}


class LocalFeatures(NamedTuple):
    """This process's rows of a split's embeddings: its owned shards, each padded to
    ``shard_rows`` rows (equal for every shard and process), in shard order.

    Rows of all processes in process order are the whole split (plus padding); no process holds
    another's rows. ``labels`` are -1 on padding rows (and on unlabelled examples).
    """

    features: np.ndarray  # float32 [owned shards * shard_rows, D]
    labels: np.ndarray  # int32 [rows]
    mask: np.ndarray  # bool [rows]: a real example
    shard_rows: int
    num_examples: int  # real examples over all processes

    def shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of the real examples of the ``i``-th owned shard."""
        rows = slice(i * self.shard_rows, (i + 1) * self.shard_rows)
        keep = self.mask[rows]
        return self.features[rows][keep], self.labels[rows][keep]


def embed_split(
    encoder: nn.Module,
    variables: Mapping[str, Any],
    split: SplitShards,
    view: View,
    *,
    replicated: bool = False,
) -> LocalFeatures:
    """Features of this process's shards of ``split`` on its local devices (nothing gathered)."""
    if not replicated:
        variables = parallel.replicate(dict(variables))
    fn = _encode_fn(encoder, view)
    feats, labels, masks, rows = [], [], [], set()
    for shard in split.owned:
        count = 0
        for batch in split.batches(shard):
            mask = np.asarray(batch["mask"], bool)
            feats.append(fn(variables, np.asarray(batch["image"])))
            labels.append(np.where(mask, np.asarray(batch["label"]), -1).astype(np.int32))
            masks.append(mask)
            count += len(mask)
        rows.add(count)
    if len(rows) != 1:
        raise ValueError(f"shards of {split.name!r} gave unequal row counts {sorted(rows)}")
    return LocalFeatures(
        np.concatenate(feats).astype(np.float32),
        np.concatenate(labels),
        np.concatenate(masks),
        rows.pop(),
        split.num_examples,
    )
