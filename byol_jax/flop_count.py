"""Hand count of a BYOL step's FLOPs from the architecture alone (no XLA involved).

The preflight prints it next to XLA's cost analysis, so a wrong compiled program (a doubled
pass, a convolution in the wrong place) shows up as a mismatch. Counts multiply-adds of the
convolutions and dense layers (BatchNorm, activations, pooling, augmentation and the optimizer
are left out) and reports FLOPs as 2 per multiply-add, XLA's convention. Like XLA, a
convolution window's taps on the zero padding are not counted (``padded=True`` counts them,
as the literature's "4.1 G multiply-adds" for ResNet-50 does).
"""

from __future__ import annotations

from collections.abc import Sequence


def _out(size: int, stride: int) -> int:
    # Every convolution and the max-pool pad k//2 on each side, so the output is ceil(size/s).
    return (size - 1) // stride + 1


def _taps(size: int, k: int, stride: int, padded: bool) -> int:
    """Kernel taps along one axis summed over the outputs (those inside the image only)."""
    if padded:
        return _out(size, stride) * k
    pad = k // 2
    return sum(
        min(o * stride - pad + k, size) - max(o * stride - pad, 0)
        for o in range(_out(size, stride))
    )


def resnet_macs(
    stage_sizes: Sequence[int],
    block: str,
    channels: int,
    stem: str,
    image_size: int,
    padded: bool = False,
) -> int:
    """Multiply-adds of one forward pass of ``models.ResNet`` on one square RGB image."""
    macs = 0
    size = image_size

    def conv(size_in: int, k: int, stride: int, c_in: int, c_out: int) -> int:
        return _taps(size_in, k, stride, padded) ** 2 * c_in * c_out

    if stem == "imagenet":
        macs += conv(size, 7, 2, 3, channels)
        size = _out(_out(size, 2), 2)  # 7x7/2 conv, then 3x3/2 max-pool
    else:
        stride = 2 if stem == "stride2" else 1
        macs += conv(size, 3, stride, 3, channels)
        size = _out(size, stride)
    c_in = channels
    for stage, blocks in enumerate(stage_sizes):
        features = channels * 2**stage
        for index in range(blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            out = _out(size, stride)
            if block == "basic":
                macs += conv(size, 3, stride, c_in, features) + conv(out, 3, 1, features, features)
                c_out = features
            else:
                macs += conv(size, 1, 1, c_in, features) + conv(size, 3, stride, features, features)
                macs += conv(out, 1, 1, features, 4 * features)
                c_out = 4 * features
            if stride != 1 or c_in != c_out:
                macs += conv(size, 1, stride, c_in, c_out)
            size, c_in = out, c_out
    return macs


def mlp_macs(dim_in: int, hidden: int, dim_out: int) -> int:
    """Multiply-adds of a projector/predictor head: Linear(hidden) → BN → ReLU → Linear(out)."""
    return dim_in * hidden + hidden * dim_out


def stem_macs(channels: int, stem: str, image_size: int) -> int:
    """Multiply-adds of the stem convolution alone (its input gradient is never computed)."""
    k, stride = (7, 2) if stem == "imagenet" else (3, 2 if stem == "stride2" else 1)
    return _taps(image_size, k, stride, False) ** 2 * 3 * channels


def byol_train_flops_per_image(
    *,
    encoder_macs: int,
    stem_macs: int,
    embedding_dim: int,
    projector_hidden_dim: int,
    projector_dim: int,
    predictor_hidden_dim: int,
    num_classes: int,
) -> dict[str, float]:
    """FLOPs per source image of one BYOL step, by part.

    Each image gives two views. Online network (encoder + projector + predictor): forward and
    backward (backward ≈ 2 forwards) for each view = 6 forward-equivalents; target network
    (encoder + projector): forward only for each view = 2; the probe: forward + weight gradient
    on view 1 = 2. So 8 encoder+projector passes, 6 predictor passes, less the stem
    convolution's input gradient (the images need none) for each online view.
    """
    projector = mlp_macs(embedding_dim, projector_hidden_dim, projector_dim)
    predictor = mlp_macs(projector_dim, predictor_hidden_dim, projector_dim)
    probe = embedding_dim * num_classes
    parts = {
        "encoder": 2.0 * (8 * encoder_macs - 2 * stem_macs),
        "heads": 2.0 * (8 * projector + 6 * predictor),
        "probe": 2.0 * 2 * probe,
    }
    parts["total"] = sum(parts.values())
    return parts
