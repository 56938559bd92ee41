"""Evaluators over real processes: 2 processes x 2 CPU devices give 1 process x 4 devices' result.

The linear protocol with augmentation (random crops and flips, SGD Nesterov, LR sweep on a
held-out part) streams each process's own shards every epoch; the same global batches and
per-example augmentation keys make the trained head equal within float tolerance. kNN (bank
split over the devices of both processes) and the logistic table must agree too. Run as a
script, this file is one such process (``_worker``).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from launch_helpers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(out_path: str, process_id: int, processes: int, port: int) -> None:
    import jax

    if processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", processes, process_id)
    from evaluator_helpers import MEAN, STD, coloured_images, in_memory_data, tiny_encoder

    from byol_jax import features
    from byol_jax.evaluators import baselines, knn, linear

    rng = np.random.default_rng(0)
    splits = {"train": coloured_images(200, rng, size=10), "test": coloured_images(70, rng, 10)}
    data = in_memory_data(splits, size=8, in_memory_bytes=0)  # stream every pass
    train, test = data.splits(num_shards=4)
    result = linear.linear_evaluation(
        features.PixelEncoder(), {}, train, test, num_classes=4, image_size=8, mean=MEAN,
        std=STD, epochs=2, batch_size=32, augment=True, lr_sweep=(0.05, 1.0), steps_per_call=3,
        shards=4, shuffle_window=16, return_variables=True,
    )  # fmt: skip
    encoder, variables = tiny_encoder(8)
    view = features.View(8, 1.0, MEAN, STD)
    bank = features.embed_split(encoder, variables, data.shards("train"), view)
    queries = features.embed_split(encoder, variables, data.shards("test"), view)
    nearest = knn.sharded_knn(bank, queries, num_classes=4, k=10, chunk_size=16)
    row = baselines.evaluate_representation(
        encoder, variables, data.shards("train"), data.shards("test"), num_classes=4,
        view=view, l2_grid=(1e-2, 1e-3), knn_ks=(5,),
    )  # fmt: skip
    if jax.process_index() == 0:
        out = {
            "linear": {k: result[k] for k in ("top1", "top5", "sweep_holdout_top1")},
            "settings": result["settings"],
            "head": {k: np.asarray(v).tolist() for k, v in result["head_params"].items()},
            "knn": {k: nearest[k] for k in ("top1", "top5", "num_train_examples")},
            "table": row,
        }
        with open(out_path, "w") as f:
            json.dump(out, f)


def _run(tmp_path, processes: int, devices: int) -> dict:
    out, port = tmp_path / f"{processes}x{devices}.json", free_port()
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        PYTHONPATH=ROOT,
    )
    command = [sys.executable, os.path.abspath(__file__), str(out), "", str(processes), str(port)]
    workers = []
    for i in range(processes):
        command[3] = str(i)
        workers.append(
            subprocess.Popen(
                list(command),
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        )
    for worker in workers:
        output = worker.communicate(timeout=600)[0]
        assert worker.returncode == 0, output[-4000:]
    with open(out) as f:
        return json.load(f)


def test_two_processes_of_two_devices_equal_one_process_of_four(tmp_path):
    two, one = _run(tmp_path, 2, 2), _run(tmp_path, 1, 4)
    assert two["settings"] == one["settings"]
    assert two["settings"]["batch_size"] == 32 and two["settings"]["shards"] == 4
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(two["head"][name], one["head"][name], rtol=1e-4, atol=1e-6)
    sweep = two["linear"].pop("sweep_holdout_top1")
    assert sweep == pytest.approx(one["linear"].pop("sweep_holdout_top1"), abs=1 / 20)
    assert two["linear"] == pytest.approx(one["linear"], abs=1 / 70)
    assert two["linear"]["top1"] > 0.5  # it learned the colours (chance: 0.25)
    assert two["knn"] == pytest.approx(one["knn"])
    assert two["table"] == pytest.approx(one["table"], abs=1 / 70)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
