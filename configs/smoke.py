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
    # Only the online probe by default: the kNN monitor and the end-of-run table would add their
    # own compiles to every test run. Tests that check them switch them on (small splits here).
    config.evals.knn.update(every_steps=0, train_split="train[:256]", test_split="test[:64]")
    config.evals.table.at_end = False
    return config
