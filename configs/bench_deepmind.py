"""Benchmark preset A: DeepMind's released BYOL update step, at 32 px on CPU.

Launch:
  python -m byol_jax.bench --config=configs/bench_deepmind.py
  python -m byol_jax.bench --config=configs/bench_deepmind.py:resnet50
  python -m byol_jax.bench --config=configs/bench_deepmind.py --config.model.dtype=bfloat16
  python -m byol_jax.bench --config=configs/bench_deepmind.py --input   # + real input pipeline

Like for like with the released pmapped step (reference on a quiet 2-core CPU machine: 37.8
images/s for ResNet-18, 19.1 for ResNet-50): ResNet-18 (or ResNet-50) with the ImageNet stem at
32x32 (source and training size 32, on-device crop/colour/blur/solarize augmentation), global
batch 64, projector and predictor 4096 → 256, online linear probe with 1000 classes, LARS with
the released chain, EMA target, float32.

One residual difference: the released code gives ResNet-18/34 a 1x1 projection shortcut in the
first block of every stage, including stage 1 (64 → 64 channels); this project's standard
ResNet-18 projects only where the shape changes. At 32 px that extra 1x1 convolution runs on an
8x8 map and is < 1% of the step's FLOPs.

``--input`` reads the configured dataset (CIFAR-10 through tfds; pass
``--config.data.dataset=fashion_mnist`` to use the offline IDX copy, resized to 32 px).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.batch_size = 64
    config.num_epochs = 1000
    config.optimizer.base_lr = 0.2
    config.optimizer.weight_decay = 1.5e-6
    config.base_tau = 0.996
    if arg in (None, "", "resnet18"):
        config.model.encoder = "resnet18"
    elif arg == "resnet50":
        config.model.encoder = "resnet50"
    else:
        raise ValueError(f"unknown variant {arg!r}; use configs/bench_deepmind.py or :resnet50")
    config.model.stem = "imagenet"
    config.model.projector_hidden_dim = 4096
    config.model.projector_dim = 256
    config.model.predictor_hidden_dim = 4096
    config.model.dtype = "float32"
    config.model.conv_impl = "auto"
    config.data.dataset = "cifar10"
    config.data.eval_split = "test"
    config.data.source_size = 32
    config.data.image_size = 32
    config.data.eval_crop_fraction = 1.0
    config.bench = ml_collections.ConfigDict({"num_classes": 1000, "num_train_examples": 50_000})
    return config
