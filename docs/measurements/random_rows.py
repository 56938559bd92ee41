"""The table's random-init row for candidate encoders on Fashion-MNIST (docs/recipe_study.md).

    PYTHONPATH=. python docs/measurements/random_rows.py resnet10:64:imagenet resnet18:64:imagenet

Each argument is ``encoder:base_width:stem``. The row is exactly the end-of-run table's
``random_init`` row (BN statistics re-estimated on 2,048 training images; logistic regression
with L2 chosen on held-out train; kNN k=20 and k=200), for the default config's input view.
"""

from __future__ import annotations

import time

from absl import app

from byol_jax import features, train_data
from byol_jax.evaluators import baselines
from configs import fashion_mnist


def main(argv: list[str]) -> None:
    config = fashion_mnist.get_config()
    data, view = config.data, train_data.eval_view(config)
    train = features.load_split(data.dataset, data.train_split, source_size=data.source_size)
    test = features.load_split(data.dataset, data.eval_split, source_size=data.source_size)
    print("| encoder | stem | base width | features | linear | kNN-20 | kNN-200 | time |")
    for arg in argv[1:]:
        name, width, stem = arg.split(":")
        spec = features.EncoderSpec(
            encoder=name, width=1, base_width=int(width), stem=stem, dtype="float32",
            image_size=view.image_size, source_size=data.source_size,
            crop_fraction=view.crop_fraction, mean=view.mean, std=view.std,
        )  # fmt: skip
        start = time.perf_counter()
        row = baselines.baseline_table(
            spec.build(), train, test, num_classes=10, view=view, rows=("random_init",)
        )["random_init"]
        print(
            f"| {name} | {stem} | {width} | {spec.embedding_dim} | {100 * row['linear_top1']:.2f} "
            f"| {100 * row['knn20_top1']:.2f} | {100 * row['knn200_top1']:.2f} "
            f"| {time.perf_counter() - start:.0f} s |",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
