"""Peak host memory (RSS) and wall time of one evaluator on a synthetic split of N images.

Usage (one evaluator and size per process, so ``ru_maxrss`` is that run's peak):
  PYTHONPATH=. python docs/eval_memory.py --mode=linear --train=40000 [--size=64] \
      [--in_memory_bytes=0]

The split is generated on the fly by a reader with ``input_pipeline.eval_batches``' contract
(shard index/count, padded equal batches), so no image file or decoded split exists anywhere:
what grows with N is only what the evaluator keeps. The encoder is ``resnet_tiny`` (64-d
features, matmul convolutions) so that CPU time stays small; ``--mode=linear`` is the linear
evaluator with augmentation (the ``--mode=linear_eval`` path without the checkpoint restore),
``knn`` the kNN evaluator, ``table`` the baselines table (l2 grid of one value, kNN k=20).
Prints one JSON line (per process: ``--num_processes=2 --process_id=0|1`` on localhost).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import jax
import numpy as np
from absl import app, flags

from byol_jax import features, models, parallel
from byol_jax.evaluators import registry
from byol_jax.evaluators.base import EvalData

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "linear", ["linear", "knn", "table"], "Evaluator to run.")
flags.DEFINE_integer("train", 20_000, "Training-split images.")
flags.DEFINE_integer("test", 5_000, "Test-split images.")
flags.DEFINE_integer("size", 64, "Image side (pixels).")
flags.DEFINE_integer("in_memory_bytes", 0, "Per-process share kept in memory (0: stream).")
flags.DEFINE_integer("epochs", 1, "Linear evaluation epochs.")
flags.DEFINE_integer("num_processes", 1, "Processes (each reports its own peak RSS).")
flags.DEFINE_integer("process_id", 0, "This process's index.")
flags.DEFINE_string("coordinator", "localhost:12355", "Coordinator address when several.")


def _reader(total: int, size: int, seed: int):
    def read(split: str, index: int, count: int, batch_size: int):
        del split
        lo, hi = index * total // count, (index + 1) * total // count
        largest = -(-total // count)
        for start in range(0, -(-largest // batch_size) * batch_size, batch_size):
            rows = np.arange(lo + start, lo + start + batch_size)
            mask = rows < hi
            labels = (rows % 10).astype(np.int32)
            # Each image from its own global index: the same split for any shard count.
            images = np.stack(
                [
                    np.random.default_rng([seed, row]).integers(0, 160, (size, size, 3), np.uint8)
                    for row in rows
                ]
            )
            # A class-dependent tint, so that the metrics are not just chance.
            images[np.arange(batch_size), :, :, labels % 3] += (24 * (labels // 3)).astype(
                np.uint8
            )[:, None, None]
            yield {"image": images * mask[:, None, None, None], "label": labels, "mask": mask}

    return read


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    readers = {
        "train": _reader(FLAGS.train, FLAGS.size, 0),
        "test": _reader(FLAGS.test, FLAGS.size, 1),
    }
    sizes = {"train": FLAGS.train, "test": FLAGS.test}
    data = EvalData(
        read_shard=lambda split, i, n, b: readers[split](split, i, n, b),
        num_examples=sizes.__getitem__,
        example_bytes=FLAGS.size**2 * 3,
        stream_split=lambda split: readers[split](split, 0, 1, 512),
        train_split="train",
        test_split="test",
        num_classes=10,
        view=features.View(FLAGS.size, 1.0, (0.5,) * 3, (0.25,) * 3),
        batch_size=512,
        in_memory_bytes=FLAGS.in_memory_bytes,
    )
    entries = {
        "linear": dict(type="linear", epochs=FLAGS.epochs, batch_size=1024, augment=True),
        "knn": dict(type="knn", k=200),
        "table": dict(type="baselines", l2_grid=(1e-3,), knn_ks=(20,)),
    }
    encoder = models.build_encoder("resnet_tiny", axis_name=parallel.AXIS_NAME, conv_impl="matmul")
    variables = features.random_variables(encoder, FLAGS.size)
    evaluator = registry.build(FLAGS.mode, entries[FLAGS.mode], data)
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.time()
    metrics = evaluator.run(encoder, variables)
    wall = time.time() - start
    images = FLAGS.train * (FLAGS.epochs if FLAGS.mode == "linear" else 1) + FLAGS.test
    dim = models.embedding_dim(encoder)
    out = {
        "mode": FLAGS.mode,
        "train": FLAGS.train,
        "test": FLAGS.test,
        "size": FLAGS.size,
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_run_mb": round(start_rss),
        "features_mb": round((FLAGS.train + FLAGS.test) * dim * 4 / 2**20, 1),
        "wall_s": round(wall, 1),
        "s_per_1k_images": round(1000 * wall / images, 3),
        "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
    }
    print(json.dumps(out), file=sys.stdout, flush=True)


if __name__ == "__main__":
    app.run(main)
