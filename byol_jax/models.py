"""Flax linen networks for BYOL: the ResNet encoder family, MLP heads, online/target networks.

The encoder is ResNet v1.5 (stride on the 3x3 conv of bottleneck blocks) with an integer width
multiplier that also widens the stem, and one of three stems: ImageNet (7x7/2 conv + 3x3/2
max-pool), CIFAR (3x3/1 conv, no pool) or stride-2 (3x3/2 conv, no pool: half the CIFAR stem's
resolution at a quarter of its cost, for small images such as 28 px). BatchNorm has momentum 0.9,
eps 1e-5 and an optional cross-device axis name so that statistics cover the whole global batch
under `pmap`. Defaults follow torchvision's ResNet; ``padding="same"``, ``zero_init_last_bn`` and
``projection_shortcuts`` switch to the released BYOL network's choices (see ``ResNet``).

Convolutions and max-pooling have two interchangeable implementations with identical parameters:
``"native"`` (XLA's convolution, right on GPU/TPU) and ``"matmul"``, the CPU path. Its
convolutions are mostly explicit padding, strided slices and one matrix product
(``conv_matmul``), which XLA's CPU backend runs many times faster than its native convolution on
small maps with many channels (20-100x on the 2x2 and 1x1 maps of ResNet stages 3-4 at 32 px),
mostly in the backward pass. Where XLA's own float32 convolution measured faster (the 7x7 stem,
and k x k stride-1 convolutions whose output is at least 4x4 on the machine it was first tuned
on), it uses that instead. Which convolution takes which path is a per-shape ``ConvPlan`` that
``cpu_autotune`` measures on the machine at hand; shapes it does not list fall back to the
untuned default (``native_conv_is_faster``).
``conv_matmul`` also drops kernel taps that only ever see zero padding (exact; 8 of 9 taps of the
3x3 convolutions on the 1x1 maps of ResNet stage 4 at 32 px), and the slice max-pool has a VJP
that routes each gradient to the first maximum of its window (as XLA's select-and-scatter does)
instead of differentiating a chain of 8 maximums. ``train.resolve_conv_impl("auto")`` picks
"matmul" on CPU only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_IMPLS = ("native", "matmul")
STEMS = ("imagenet", "cifar", "stride2")
# "symmetric": k//2 on every side (torchvision); "same": XLA/TensorFlow 'SAME', as the released
# Haiku network, which pads one less at the top/left for stride 2 on even sizes.
PADDINGS = ("symmetric", "same")

# He-normal with fan-out, the standard ResNet convolution initializer.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _same_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    # Symmetric k//2 padding as in torchvision. The released BYOL (Haiku) network uses 'SAME'
    # instead, asymmetric for stride 2 on even sizes: ``padding="same"`` (see ``window_pads``).
    p = (kernel_size - 1) // 2
    return ((p, p), (p, p))


def window_pads(size: int, window: int, stride: int, padding: str) -> tuple[int, int]:
    """(before, after) padding of one spatial axis for a ``window``-wide conv/pool.

    "same" is XLA/TensorFlow 'SAME': ceil(size / stride) outputs, the odd pixel of padding
    after. For odd windows it differs from "symmetric" only at stride 2 on even sizes, e.g. the
    7x7/2 stem at 224 px pads (2, 3) instead of (3, 3) and 3x3/2 pads (0, 1) instead of (1, 1).
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if padding == "symmetric":
        return (window - 1) // 2, (window - 1) // 2
    total = max((-(-size // stride) - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def _strided_window_slices(
    x: jax.Array, size: int, stride: int, taps: Sequence[tuple[int, int]] | None = None
) -> list[jax.Array]:
    """Shifted, strided views of an already padded NHWC tensor: one per window tap ``(i, j)``.

    ``taps`` defaults to all ``size x size`` taps in row-major order.
    """
    out_h = (x.shape[1] - size) // stride + 1
    out_w = (x.shape[2] - size) // stride + 1
    if taps is None:
        taps = [(i, j) for i in range(size) for j in range(size)]
    return [
        jax.lax.slice(
            x,
            (0, i, j, 0),
            (x.shape[0], i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, x.shape[3]),
            (1, stride, stride, 1),
        )
        for i, j in taps
    ]


def _live_taps(size: int, kernel_size: int, stride: int, pad: int) -> tuple[int, int]:
    """The range [lo, hi) of kernel offsets along one axis that ever touch a real input pixel.

    Offsets outside it only ever multiply zero padding (e.g. the 3x3 convolutions on the 1x1
    maps of ResNet stage 4 at 32 px, where 8 of 9 taps are padding), so dropping them is exact.
    """
    out = (size + 2 * pad - kernel_size) // stride + 1
    live = [
        i for i in range(kernel_size) if any(0 <= i - pad + stride * o < size for o in range(out))
    ]
    return live[0], live[-1] + 1


def conv_matmul(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """k x k convolution (k//2 padding) as im2col + one matrix product; HWIO kernel.

    Patches are ordered (i, j, c) to match the kernel reshaped to [k*k*C, F]. Kernel taps that
    only ever see padding are left out of both (their gradient is exactly zero either way).
    """
    k, features = kernel.shape[0], kernel.shape[-1]
    pad = (k - 1) // 2
    rows = _live_taps(x.shape[1], k, stride, pad)
    cols = _live_taps(x.shape[2], k, stride, pad)
    if rows != (0, k) or cols != (0, k):
        kernel = kernel[rows[0] : rows[1], cols[0] : cols[1]]
    taps = [(i, j) for i in range(*rows) for j in range(*cols)]
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = _strided_window_slices(x, k, stride, taps)
    patches = windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)
    return patches @ kernel.reshape(-1, features)


def native_conv(
    x: jax.Array,
    kernel: jax.Array,
    stride: int,
    pads: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> jax.Array:
    """XLA's k x k convolution (k//2 padding on every side unless ``pads`` says otherwise);
    HWIO kernel, NHWC."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=pads or _same_padding(kernel.shape[0]),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


# One convolution of the CPU path as the autotuner sees it: (height, width, in_channels, features,
# kernel_size, stride, dtype name) of its input and kernel; the batch is fixed per plan.
ConvKey = tuple[int, int, int, int, int, int, str]
# Measured choices, "native" or "matmul" per ConvKey (``cpu_autotune``): a tuple of pairs, so
# that modules holding it stay hashable and frozen.
ConvPlan = tuple[tuple[ConvKey, str], ...]


def conv_key(
    height: int,
    width: int,
    in_channels: int,
    features: int,
    kernel_size: int,
    stride: int,
    dtype: Any,
) -> ConvKey:
    """The plan key of one convolution (``dtype`` is the compute dtype)."""
    return (height, width, in_channels, features, kernel_size, stride, jnp.dtype(dtype).name)


def native_conv_is_faster(
    height: int, width: int, kernel_size: int, stride: int, dtype: Any
) -> bool:
    """The untuned default of the CPU path: whether XLA's convolution replaces ``conv_matmul``.

    Measured once on one machine (XLA:CPU, jax 0.10, 2-core Sapphire Rapids, batch 64, float32,
    forward + backward): XLA's convolution for the 7x7 stem and k x k stride-1 convolutions with
    at least 4x4 outputs; ``conv_matmul`` for strided 3x3, every 1x1, maps below 4x4 and other
    dtypes. It is what a convolution missing from the plan gets (``--config.cpu_autotune=False``
    or shapes the tuner had no time for); ``cpu_autotune`` measures the choice per machine.
    """
    if jnp.dtype(dtype) != jnp.float32 or kernel_size == 1:
        return False
    if kernel_size == 7:
        return True
    pad = (kernel_size - 1) // 2
    out_h = (height + 2 * pad - kernel_size) // stride + 1
    out_w = (width + 2 * pad - kernel_size) // stride + 1
    return stride == 1 and min(out_h, out_w) >= 4


def cpu_conv_choice(key: ConvKey, plan: ConvPlan = ()) -> str:
    """ "native" or "matmul" for one convolution of the CPU path: the plan's, else the default."""
    for planned, choice in plan:
        if planned == key:
            return choice
    height, width, _, _, kernel_size, stride, dtype = key
    return (
        "native" if native_conv_is_faster(height, width, kernel_size, stride, dtype) else "matmul"
    )


class Conv(nn.Module):
    """Bias-free square convolution with k//2 padding and a selectable implementation.

    ``padding="same"``: XLA's 'SAME' padding (released-network parity); where it differs from
    k//2 (stride 2 on even sizes) XLA's convolution is used whatever ``impl`` says.
    """

    features: int
    kernel_size: int
    stride: int = 1
    impl: str = "native"
    dtype: Any = jnp.float32
    padding: str = "symmetric"
    plan: ConvPlan = ()  # per-shape choices of the "matmul" (CPU) path; see cpu_conv_choice

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", _conv_init, (k, k, x.shape[-1], self.features), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if self.impl not in CONV_IMPLS:
            raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {self.impl!r}")
        pads = tuple(window_pads(n, k, self.stride, self.padding) for n in x.shape[1:3])
        if pads != _same_padding(k):
            return native_conv(x, kernel, self.stride, pads)
        key = conv_key(*x.shape[1:], self.features, k, self.stride, x.dtype)
        if self.impl == "native" or cpu_conv_choice(key, self.plan) == "native":
            return native_conv(x, kernel, self.stride)
        return conv_matmul(x, kernel, self.stride)


@jax.custom_vjp
def _max_pool_slices(x: jax.Array) -> jax.Array:
    return _max_pool_fwd(x)[0]


def _max_pool_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    windows = _strided_window_slices(padded, 3, 2)
    best, index = windows[0], jnp.zeros(windows[0].shape, jnp.int8)
    for tap, window in enumerate(windows[1:], start=1):
        # Strictly greater: the first maximal tap wins, like XLA's select-and-scatter.
        better = window > best
        best = jnp.where(better, window, best)
        index = jnp.where(better, jnp.int8(tap), index)
    return best, (index, jnp.zeros(x.shape[1:3] + (0,), x.dtype))


def _max_pool_bwd(residuals: tuple[jax.Array, jax.Array], grad: jax.Array) -> tuple[jax.Array]:
    # Route each output gradient to its window's (first) maximum: for every tap, scatter the
    # gradients it won back to input positions with an interior-padded pad; XLA fuses the sum.
    index, shape_carrier = residuals
    height, width = shape_carrier.shape[:2]
    out_h, out_w = grad.shape[1:3]
    zero = jnp.zeros((), grad.dtype)
    total = None
    for tap in range(9):
        i, j = divmod(tap, 3)
        part = jnp.where(index == tap, grad, zero)
        # Output o of tap i reads padded row 2*o + i, i.e. input row 2*o + i - 1.
        part = jax.lax.pad(
            part,
            zero,
            (
                (0, 0, 0),
                (i - 1, height - (i - 1) - (2 * (out_h - 1) + 1), 1),
                (j - 1, width - (j - 1) - (2 * (out_w - 1) + 1), 1),
                (0, 0, 0),
            ),
        )
        total = part if total is None else total + part
    return (total,)


_max_pool_slices.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_3x3_s2(x: jax.Array, impl: str, padding: str = "symmetric") -> jax.Array:
    """3x3 max-pool, stride 2, padding 1 (the ImageNet stem's pool); ``padding="same"``: XLA's
    'SAME' (0 before, 1 after on even sizes), always with XLA's pool.

    ``"matmul"`` (the CPU path) takes the maximum of 9 strided slices and routes the gradient
    with a custom VJP to the first maximal element of each window, like the native pool.
    """
    pads = tuple(window_pads(n, 3, 2, padding) for n in x.shape[1:3])
    if pads != ((1, 1), (1, 1)):
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads)
    if impl == "native":
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return _max_pool_slices(x)


def batch_norm(
    *, train: bool, axis_name: str | None, dtype: Any, name: str, zero_init: bool = False
) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        # Cross-device statistics only make sense while training inside pmap.
        axis_name=axis_name if train else None,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
        name=name,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34). ``projection``: a 1x1 projection shortcut even where
    the identity fits (the released network's first block of every stage)."""

    features: int
    stride: int
    norm: Callable[..., nn.Module]
    conv: Callable[..., nn.Module]
    zero_init_last_bn: bool = False
    projection: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x
        y = self.conv(self.features, 3, self.stride, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, 3, 1, name="conv2")(y)
        y = self.norm(name="bn2", zero_init=self.zero_init_last_bn)(y)
        if self.projection or self.stride != 1 or x.shape[-1] != self.features:
            residual = self.conv(self.features, 1, self.stride, name="shortcut_conv")(x)
            residual = self.norm(name="shortcut_bn")(residual)
        return nn.relu(y + residual)


class BottleneckBlock(nn.Module):
    """1x1 → 3x3 (strided, v1.5) → 1x1 with 4x expansion (ResNet-50 and deeper). The first
    block of every stage changes the width, so it always has a projection shortcut."""

    features: int
    stride: int
    norm: Callable[..., nn.Module]
    conv: Callable[..., nn.Module]
    zero_init_last_bn: bool = False
    projection: bool = False  # accepted for symmetry; the shortcut there is a projection anyway

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x
        y = nn.relu(self.norm(name="bn1")(self.conv(self.features, 1, 1, name="conv1")(x)))
        y = self.conv(self.features, 3, self.stride, name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.features * 4, 1, 1, name="conv3")(y)
        y = self.norm(name="bn3", zero_init=self.zero_init_last_bn)(y)
        if self.stride != 1 or x.shape[-1] != self.features * 4:
            residual = self.conv(self.features * 4, 1, self.stride, name="shortcut_conv")(x)
            residual = self.norm(name="shortcut_bn")(residual)
        return nn.relu(y + residual)


class ResNet(nn.Module):
    """ResNet v1.5 trunk returning global-average-pooled features [N, C] in float32.

    Released-network parity options (defaults: torchvision's ResNet): ``padding="same"``
    (XLA 'SAME' in every conv and the stem's pool), ``zero_init_last_bn`` (last BN scale of each
    residual branch starts at 0) and ``projection_shortcuts`` (a 1x1 projection in the first
    block of every stage, which changes only ResNet-18/34's first stage).
    """

    stage_sizes: Sequence[int]
    block: str  # "basic" or "bottleneck"
    width: int = 1
    base_width: int = 64
    stem: str = "imagenet"
    zero_init_last_bn: bool = False
    padding: str = "symmetric"
    projection_shortcuts: bool = False
    axis_name: str | None = None
    dtype: Any = jnp.float32
    conv_impl: str = "native"
    conv_plan: ConvPlan = ()  # measured per-shape choices of the "matmul" path (cpu_autotune)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        conv = functools.partial(
            Conv,
            impl=self.conv_impl,
            dtype=self.dtype,
            padding=self.padding,
            plan=self.conv_plan,
        )
        norm = functools.partial(
            batch_norm, train=train, axis_name=self.axis_name, dtype=self.dtype
        )
        block_cls = {"basic": BasicBlock, "bottleneck": BottleneckBlock}[self.block]
        channels = self.base_width * self.width

        if self.stem == "imagenet":
            x = conv(channels, 7, 2, name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
            x = max_pool_3x3_s2(x, self.conv_impl, self.padding)
        else:
            x = conv(channels, 3, 2 if self.stem == "stride2" else 1, name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))

        for stage, num_blocks in enumerate(self.stage_sizes):
            for index in range(num_blocks):
                x = block_cls(
                    features=channels * 2**stage,
                    stride=2 if stage > 0 and index == 0 else 1,
                    norm=norm,
                    conv=conv,
                    zero_init_last_bn=self.zero_init_last_bn,
                    projection=self.projection_shortcuts and index == 0,
                    name=f"stage{stage + 1}_block{index + 1}",
                )(x)
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic")
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="basic")
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck")
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block="bottleneck")
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block="bottleneck")
ResNet200 = functools.partial(ResNet, stage_sizes=(3, 24, 36, 3), block="bottleneck")
# One basic block per stage: half of ResNet-18's depth, for small images on few cores.
ResNet10 = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block="basic")
# Test-only: ResNet-10 with 8 base channels.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block="basic", base_width=8)

ENCODERS: dict[str, Callable[..., ResNet]] = {
    "resnet10": ResNet10,
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet152": ResNet152,
    "resnet200": ResNet200,
    "resnet_tiny": ResNetTiny,
}


class MLPHead(nn.Module):
    """BYOL projector/predictor: Linear(hidden) → BN → ReLU → Linear(out, no bias)."""

    hidden_dim: int = 4096
    output_dim: int = 256
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="hidden")(x)
        x = batch_norm(train=train, axis_name=self.axis_name, dtype=self.dtype, name="bn")(x)
        x = nn.relu(x)
        x = nn.Dense(self.output_dim, use_bias=False, dtype=self.dtype, name="output")(x)
        return x.astype(jnp.float32)


class BYOLNetwork(nn.Module):
    """Encoder → projector (→ predictor). Online: with_predictor=True; target: False.

    Returns a dict with ``embedding`` (pooled encoder output), ``projection`` and, for the online
    network, ``prediction``; all float32.
    """

    encoder: nn.Module
    projector_hidden_dim: int = 4096
    projector_dim: int = 256
    predictor_hidden_dim: int = 4096
    with_predictor: bool = True
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> dict[str, jax.Array]:
        embedding = self.encoder(x, train=train)
        head = functools.partial(MLPHead, axis_name=self.axis_name, dtype=self.dtype)
        projection = head(self.projector_hidden_dim, self.projector_dim, name="projector")(
            embedding, train=train
        )
        out = {"embedding": embedding, "projection": projection}
        if self.with_predictor:
            out["prediction"] = head(
                self.predictor_hidden_dim, self.projector_dim, name="predictor"
            )(projection, train=train)
        return out


def build_encoder(
    name: str,
    *,
    width: int = 1,
    base_width: int | None = None,
    stem: str = "imagenet",
    zero_init_last_bn: bool = False,
    axis_name: str | None = None,
    dtype: Any = jnp.float32,
    conv_impl: str = "native",
    padding: str = "symmetric",
    projection_shortcuts: bool = False,
    conv_plan: ConvPlan = (),
) -> ResNet:
    """Encoder by name (see ``ENCODERS``); ``base_width=None`` keeps the variant's default.

    ``conv_plan`` (from ``cpu_autotune``) picks the implementation of each convolution of the
    ``"matmul"`` path by shape; convolutions it does not list keep the untuned default.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    extra = {} if base_width is None else {"base_width": base_width}
    return ENCODERS[name](
        width=width,
        stem=stem,
        zero_init_last_bn=zero_init_last_bn,
        axis_name=axis_name,
        dtype=dtype,
        conv_impl=conv_impl,
        padding=padding,
        projection_shortcuts=projection_shortcuts,
        conv_plan=tuple(conv_plan),
        **extra,
    )


def embedding_dim(encoder: ResNet) -> int:
    """Width of the pooled representation of an encoder."""
    expansion = 4 if encoder.block == "bottleneck" else 1
    last_stage = len(encoder.stage_sizes) - 1
    return encoder.base_width * encoder.width * 2**last_stage * expansion
