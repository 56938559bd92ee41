"""BYOL on your own folder of images (JPEG/PNG/BMP/GIF at any depth, any sizes), ResNet-50.

Launch (unlabelled: every image under the folder; labels -1, label-based evaluators skipped):
  python launch.py --config=configs/folder.py --config.data.folder=/data/my_images \
      --workdir=workdirs/my_images
Subfolders as classes (kNN/probe/table then run on a fixed, seeded 10% held out):
  ... --config.data.folder_labels=True
A tfds ImageFolder layout (/data/my_images/train/<label>/*, .../test/<label>/*) is detected:
  ... --config.data.eval_split=test --config.evals.knn.test_split=test
gs:// folders work too (read through tf.io.gfile). For pods, pack the folder first
(python -m byol_jax.prepare --folder=... --out=...) and train with data.dataset=packed.
See docs/data.md.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = common.base_config()
    config.batch_size = 256
    config.num_epochs = 200
    config.model.dtype = "bfloat16"
    config.data.dataset = "folder"
    config.data.folder = ""  # required: --config.data.folder=PATH
    config.data.folder_labels = False
    # Splits of a folder are slices of a fixed, seeded shuffle of its file list.
    config.data.train_split = "train"
    config.data.eval_split = "train[90%:]"
    # Whole images at 384 px (longer side), as for ImageNet; evaluation resizes to 256 / 224.
    config.data.train_source_size = 384
    config.evals.knn.update(train_split="train[:90%]", test_split="train[90%:]")
    return config
