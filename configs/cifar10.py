"""BYOL on CIFAR-10: ResNet-18 with the CIFAR stem (3x3/1 conv, no max-pool), 32 px.

Launch:
  python launch.py --config=configs/cifar10.py --workdir=/tmp/byol_cifar10 \
      --config.data.data_dir=$TFDS_DIR
Hyperparameters follow the common CIFAR recipes (batch 256, 1000 epochs, LARS base LR 1.0,
wd 1e-5 → solo-learn reports 92.6% linear top-1 for this setting).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = common.base_config()
    config.batch_size = 256
    config.num_epochs = 1000
    config.optimizer.base_lr = 1.0
    config.optimizer.weight_decay = 1e-5
    config.base_tau = 0.99
    config.log_every_steps = 50
    config.model.encoder = "resnet18"
    config.model.stem = "cifar"
    config.data.dataset = "cifar10"
    config.data.eval_split = "test"
    config.data.source_size = 32
    config.data.image_size = 32
    config.data.eval_crop_fraction = 1.0
    config.data.mean = (0.4914, 0.4822, 0.4465)
    config.data.std = (0.2470, 0.2435, 0.2616)
    return config
