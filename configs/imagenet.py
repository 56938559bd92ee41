"""BYOL on ImageNet, ResNet-50, 224 px, with the paper's presets selected by epochs.

Launch (TPU VM / multi-GPU host):
  python launch.py --config=configs/imagenet.py:epochs=1000 --workdir=$WORKDIR \
      --config.data.data_dir=$TFDS_DIR
Presets (batch 4096): epochs=1000 → lr 0.2, wd 1.5e-6, τ 0.996; 300 → 0.3, 1e-6, 0.99;
100 → 0.45, 1e-6, 0.99; 40 → 0.45, 1e-6, 0.97.
"""

import ml_collections

from configs import common

PRESETS = {
    1000: dict(base_lr=0.2, weight_decay=1.5e-6, base_tau=0.996),
    300: dict(base_lr=0.3, weight_decay=1e-6, base_tau=0.99),
    100: dict(base_lr=0.45, weight_decay=1e-6, base_tau=0.99),
    40: dict(base_lr=0.45, weight_decay=1e-6, base_tau=0.97),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: ``epochs=N`` with N one of 40, 100, 300, 1000 (default 1000)."""
    options = dict(item.split("=", 1) for item in (arg or "").split(",") if item)
    epochs = int(options.get("epochs", 1000))
    if epochs not in PRESETS:
        raise ValueError(f"epochs={epochs} has no preset; choose one of {sorted(PRESETS)}")
    preset = PRESETS[epochs]
    config = common.base_config()
    config.num_epochs = epochs
    config.optimizer.base_lr = preset["base_lr"]
    config.optimizer.weight_decay = preset["weight_decay"]
    config.base_tau = preset["base_tau"]
    # The released code warms up for 10 epochs at every preset: a quarter of the 40-epoch one.
    config.max_warmup_fraction = 0.25
    config.model.dtype = "bfloat16"
    # Whole images at 384 px (longer side): crops keep at least the detail of the old 256 px
    # centre square for aspect ratios up to 3:2 (README, Datasets: measured with
    # byol_jax.bench_source_size); 1.7 GB per global batch of 4096 at host-to-device.
    config.data.train_source_size = 384
    # The released network (byol/utils/networks.py on Haiku's ResNet v1): zero-initialised last
    # BN of each bottleneck, 'SAME' padding, projection shortcuts in every stage's first block.
    config.model.zero_init_last_bn = True
    config.model.padding = "same"
    config.model.projection_shortcuts = True
    # Evaluation at ImageNet scale (docs/evaluation_at_scale.md: time and memory per host). Every
    # evaluator reads only its process's shards; shards=64 gives the same linear-protocol result
    # on any process count dividing 64.
    config.evals.linear.update(train_split="train", test_split="validation", shards=64)
    config.evals.fine_tune.update(train_split="train", test_split="validation", shards=64)
    # The bank is the whole train split: N x D / processes of features per host (2.6 GB on 4
    # hosts), N x D / chips on each chip; queries are the 50k validation images.
    config.evals.knn.update(train_split="train", test_split="validation")
    # Raw pixels at 224 px are 150k-d features: the table keeps a 10k-image train subset.
    config.evals.table.update(train_split="train[:10000]", test_split="validation[:10000]")
    return config
