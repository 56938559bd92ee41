"""Benchmark preset B: lightly 1.6's BYOL on CIFAR-10 (PyTorch, CPU), ResNet-18 at 32 px.

Launch:
  python -m byol_jax.bench --config=configs/bench_lightly.py
  python -m byol_jax.bench --config=configs/bench_lightly.py --config.model.dtype=bfloat16
  python -m byol_jax.bench --config=configs/bench_lightly.py --input   # + real input pipeline

Like for like with lightly's BYOL example (reference on a quiet 2-core CPU machine: 17.1
images/s, 21.6 with channels-last): ResNet-18 with the CIFAR stem (3x3/1 conv, no max-pool) at
32x32, batch 128, projector 512 → 1024 → 256 and predictor 256 → 1024 → 256, EMA target,
float32. Our MLP head is Linear(hidden) → BN → ReLU → Linear(out), the same layers as lightly's
BYOLProjectionHead/BYOLPredictionHead.

Residual differences: lightly's example trains with SGD (momentum 0.9); this project keeps LARS
(weight decay + trust ratio + momentum: a few element-wise passes over the parameters, well under
1% of the step). The online linear probe (10 classes, on the stop-gradient embedding) has no
counterpart in lightly's example; it costs one 512 x 10 matmul per step.

``--input`` reads CIFAR-10 through tfds; pass ``--config.data.dataset=fashion_mnist`` to use the
offline IDX copy (resized to 32 px).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = common.base_config()
    config.batch_size = 128
    config.num_epochs = 200
    config.optimizer.base_lr = 1.0
    config.optimizer.weight_decay = 1e-5
    config.base_tau = 0.99
    config.model.encoder = "resnet18"
    config.model.stem = "cifar"
    config.model.projector_hidden_dim = 1024
    config.model.projector_dim = 256
    config.model.predictor_hidden_dim = 1024
    config.model.dtype = "float32"
    config.model.conv_impl = "auto"
    config.data.dataset = "cifar10"
    config.data.eval_split = "test"
    config.data.source_size = 32
    config.data.image_size = 32
    config.data.eval_crop_fraction = 1.0
    config.data.mean = (0.4914, 0.4822, 0.4465)
    config.data.std = (0.2470, 0.2435, 0.2616)
    config.bench = ml_collections.ConfigDict({"num_classes": 10, "num_train_examples": 50_000})
    return config
