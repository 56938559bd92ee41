"""A seconds-long smoke run for tests and CI: tiny ResNet, 16 px, a handful of steps.

Launch:
  python launch.py --config=configs/smoke.py --workdir=/tmp/byol_smoke
"""

import ml_collections

from configs import fashion_mnist


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = fashion_mnist.get_config()
    config.batch_size = 16
    config.num_steps = 6
    config.log_every_steps = 2
    config.checkpoint_every_steps = 3
    config.model.encoder = "resnet_tiny"
    config.model.base_width = 0
    config.model.projector_hidden_dim = 32
    config.model.projector_dim = 16
    config.model.predictor_hidden_dim = 32
    # XLA's own convolutions compile ~30% faster than the CPU matmul path, and tests are
    # compile-bound; test_models checks that both paths agree.
    config.model.conv_impl = "native"
    config.data.train_split = "train[:256]"
    config.data.eval_split = "test[:64]"
    config.data.source_size = 16
    config.data.image_size = 16
    config.data.eval_batch_size = 32
    config.data.shuffle_buffer = 256
    config.data.stream_shards = 0  # auto: the largest count <= 64 dividing the batch
    return config
