"""Where BYOL's kNN-20 stands against raw pixels on Fashion-MNIST (docs/recipe_study.md).

    PYTHONPATH=. python docs/measurements/knn_diagnosis.py /tmp/deep7 [more workdirs]

For each pretraining workdir (newest checkpoint) it prints the table's kNN (cosine, T = 0.1,
k = 20 and 200, all 60,000 training images as the bank, the 10,000 test images as queries) for

* ``online``: the encoder the table scores (the online network, its BN running statistics);
* ``online, BN re-estimated``: the same weights, BN statistics replaced by population moments of
  2,048 clean (eval-view) training images, as the table's random row gets them;
* ``target``: the EMA network's encoder and BN statistics;
* ``online, standardized`` and ``raw pixels, standardized``: features centred and scaled per
  dimension with train statistics before the cosine;

then, for the online encoder and raw pixels, the kNN-20 confusion matrix (% of each true class,
its diagonal the per-class accuracy) and the effective rank (exp of the entropy of the
normalized singular-value spectrum) of the training features. The data, view and calibration
images are the table's for the default config (``configs/fashion_mnist.py``) and the workdir's
encoder (its ``encoder.json``).
"""

from __future__ import annotations

import time

import numpy as np
from absl import app

from byol_jax import export, features
from byol_jax.evaluators import baselines, knn, logistic
from configs import fashion_mnist

CLASSES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "boot")  # fmt: skip
KS = (20, 200)


def _standardized(bank: features.LocalFeatures, queries: features.LocalFeatures):
    """Both sides scaled per dimension by the bank's statistics (the linear protocol's scaler)."""
    scale = logistic.Standardizer.fit(bank.features[bank.mask])
    return (x._replace(features=scale(x.features)) for x in (bank, queries))


def _effective_rank(bank: features.LocalFeatures) -> float:
    real = bank.features[bank.mask]
    singular = np.linalg.svd(real - real.mean(0), compute_uv=False)
    p = singular**2 / np.sum(singular**2)
    return float(np.exp(-np.sum(p * np.log(p + 1e-12))))


def _knn(bank, queries) -> tuple[str, np.ndarray]:
    """("kNN-20 | kNN-200" in %, the kNN-20 confusion matrix in % of each true class)."""
    result = knn.sharded_knn_ks(bank, queries, num_classes=10, ks=KS, return_scores=True)
    predicted = np.asarray(result[20]["scores"]).argmax(1)
    labels = queries.labels[queries.mask]
    counts = np.zeros((10, 10))
    np.add.at(counts, (labels, predicted[queries.mask]), 1)
    confusion = 100 * counts / counts.sum(1, keepdims=True)
    return " | ".join(f"{100 * result[k]['top1']:.2f}" for k in KS), confusion


def _print_confusion(name: str, confusion: np.ndarray) -> None:
    print(f"\n| {name}: true \\ kNN-20 | " + " | ".join(CLASSES) + " |")
    print("|---" * (len(CLASSES) + 1) + "|")
    for true, row in zip(CLASSES, confusion, strict=True):
        print(f"| {true} | " + " | ".join(f"{v:.1f}" for v in row) + " |")


def main(argv: list[str]) -> None:
    data = fashion_mnist.get_config().data
    train_split, test_split = (
        features.load_split(data.dataset, split, source_size=data.source_size)
        for split in (data.train_split, data.eval_split)
    )
    train, test = (features.SplitShards.from_arrays(*s) for s in (train_split, test_split))
    calibration = train_split.images[:2048]  # the table's calibration images: the first 2,048
    for workdir in argv[1:]:
        encoder, online, spec = export.read_encoder(workdir)
        target, _ = export.restore_encoder_variables(workdir, spec.step, network="target")
        view = spec.view
        recalibrated = dict(online)
        recalibrated["batch_stats"] = baselines.population_batch_stats(
            encoder, online, calibration, batches=8, batch_size=256, seed=0,
            image_size=view.image_size, crop_fraction=view.crop_fraction, mean=view.mean,
            std=view.std,
        )  # fmt: skip
        print(f"## {workdir} (step {spec.step})\n\n| features | kNN-20 | kNN-200 | time |")
        print("|---|---|---|---|")
        pixels = features.PixelEncoder(first_channel_only=True)  # grayscale: one channel of 3
        variants = [  # (key, label, module, variables)
            ("online", "online (the table's)", encoder, online),
            ("recalibrated", "online, BN re-estimated", encoder, recalibrated),
            ("target", "target", encoder, target),
            ("pixels", "raw pixels (the table's)", pixels, {}),
        ]
        embedded, confusions = {}, {}
        for key, label, module, variables in variants:
            start = time.perf_counter()
            split_features = tuple(
                features.embed_split(module, variables, split, view=view) for split in (train, test)
            )
            accuracies, confusions[key] = _knn(*split_features)
            embedded[key] = split_features
            print(f"| {label} | {accuracies} | {time.perf_counter() - start:.0f} s |", flush=True)
        shown = {"online": "online", "pixels": "raw pixels"}
        for key, label in shown.items():
            accuracies, _ = _knn(*_standardized(*embedded[key]))
            print(f"| {label}, standardized | {accuracies} | |", flush=True)
        for key, label in shown.items():
            _print_confusion(label, confusions[key])
        ranks = ", ".join(
            f"{label} {_effective_rank(embedded[key][0]):.1f}" for key, label in shown.items()
        )
        print(f"\neffective rank of the training features: {ranks}\n", flush=True)


if __name__ == "__main__":
    app.run(main)
