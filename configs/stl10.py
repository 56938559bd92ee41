"""BYOL on STL-10 (train + 100k unlabelled images), ResNet-18, 96 px source, 64 px crops.

Launch:
  python launch.py --config=configs/stl10.py --workdir=/tmp/byol_stl10 \
      --config.data.data_dir=$TFDS_DIR
The unlabelled split carries no labels (-1); the online probe simply ignores those examples.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = common.base_config()
    config.batch_size = 256
    config.num_epochs = 400
    config.optimizer.base_lr = 1.0
    config.optimizer.weight_decay = 1e-5
    config.base_tau = 0.99
    config.log_every_steps = 50
    config.model.encoder = "resnet18"
    config.model.stem = "cifar"
    config.data.dataset = "stl10"
    config.data.train_split = "train+unlabelled"
    config.data.eval_split = "test"
    config.data.source_size = 96
    config.data.image_size = 64
    config.data.eval_crop_fraction = 1.0
    config.data.mean = (0.4467, 0.4398, 0.4066)
    config.data.std = (0.2603, 0.2566, 0.2713)
    return config
