"""Multi-process training with real processes on localhost (JAX's distributed runtime, gloo).

Two processes with 2 CPU devices each: a SIGTERM to one process stops both at the same step
with a checkpoint; relaunched, they resume there and end with identical states, equal (within
float tolerance) to one process with 4 devices on the same global batches, with the same
evaluator results; and one failing process brings the whole job down instead of leaving the
others hanging.
"""

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from launch_helpers import (
    SMOKE,
    damage_checkpoint,
    free_port,
    restore_smoke_state,
    smoke_eval_batch,
    start_launch,
    wait_for_line,
)

from byol_jax import export

# Checkpoints every 4 steps, all kept: step 4 compares layouts before float noise grows.
RUN_ARGS = [
    f"--config={SMOKE}",
    "--config.num_steps=14",
    "--config.checkpoint_every_steps=4",
    "--config.keep_checkpoints=10",
    # Any device-to-host transfer (even an explicit one) on a step that neither logs nor saves
    # fails the run: the host must never wait on the devices there.
    "--config.transfer_guard=disallow_explicit",
]


def _start(workdir, devices, *extra, process_id=None, port=None):
    args = [*RUN_ARGS, *extra]
    if process_id is not None:
        args += [
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={process_id}",
        ]
    flags = f"--xla_force_host_platform_device_count={devices}"
    return start_launch(workdir, *args, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)


def _start_pair(workdir, extra=((), ())):
    port = free_port()
    return [_start(workdir, 2, *extra[i], process_id=i, port=port) for i in range(2)]


def _finish(processes, timeout=900):  # the end table compiles L-BFGS: slow on a busy 2-core box
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    for p, out in zip(processes, outputs, strict=True):
        assert p.returncode == 0, out
    return outputs


def _summary(workdir):
    with open(workdir / "summary.json") as f:
        return json.load(f)


# Evaluation in both processes: the kNN monitor at the last step and the end-of-run table.
EVAL_ARGS = (
    "--config.evals.knn.every_steps=14",
    "--config.evals.knn.train_split=train[:256]",
    "--config.evals.knn.test_split=test[:64]",
    "--config.evals.table.at_end=True",
    "--config.evals.table.l2_grid=(0.01,0.001)",
)


def _knn_record(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if "knn_accuracy" in line][-1]["knn_accuracy"]


def test_two_processes_stop_together_resume_and_match_one_process(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    pair, single = _start_pair(two), _start(one, 4, *EVAL_ARGS)

    # SIGTERM to the worker only: every process finishes the same step, it is checkpointed, all
    # exit 0.
    wait_for_line(pair[0], "step 6/14")
    pair[1].send_signal(signal.SIGTERM)
    chief_output = _finish(pair)[0]
    assert "stopped by a preemption notice" in chief_output, chief_output
    stopped_at = int(chief_output.split("after step ")[1].split(";")[0])
    assert 6 <= stopped_at < 14 and str(stopped_at) in os.listdir(two / "checkpoints")

    # Relaunched (now with the kNN monitor and the end-of-run table), the pair resumes there.
    chief_output, worker_output = _finish(_start_pair(two, (EVAL_ARGS, EVAL_ARGS)))
    assert f"resuming from step {stopped_at} of 14" in chief_output
    _finish([single])

    # Logs come from process 0 only; both processes end with bitwise-identical states.
    assert "step 14/14" in chief_output and "step 14/14" not in worker_output
    digests = _summary(two)["state_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]

    # Every evaluator ran over both processes and agrees with one process of 4 devices (the
    # states differ by float noise, so accuracies may move by an example or so).
    assert abs(_knn_record(two) - _knn_record(one)) <= 2 / 64
    two_table, one_table = _summary(two)["table"], _summary(one)["table"]
    assert set(two_table) == set(one_table) == {"byol", "random_init", "raw_pixels"}
    for name in ("random_init", "raw_pixels"):  # independent of training: equal
        for column in ("linear_top1", "knn20_top1", "knn200_top1", "l2"):
            assert two_table[name][column] == pytest.approx(one_table[name][column], abs=1 / 64)
    for column in ("linear_top1", "knn20_top1", "knn200_top1"):
        assert abs(two_table["byol"][column] - one_table["byol"][column]) <= 2 / 64

    # Same global batches, same trajectory as 4 devices in one process. Float tolerance: the
    # cross-process reductions add in another order, and that noise grows with the steps.
    # (Bitwise resumption after an interruption is checked in one process: test_recovery.py.)
    two_state, one_state = restore_smoke_state(two, 4)[0], restore_smoke_state(one, 4)[0]
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(two_state)[0], jax.tree.leaves(one_state), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5, err_msg=jax.tree_util.keystr(path))

    # A damaged newest checkpoint: process 0 picks the newest readable step, both processes
    # resume there, and only then is the damaged one moved aside (once).
    damage_checkpoint(two / "checkpoints" / "14")
    chief_output, worker_output = _finish(_start_pair(two, (("--config.num_steps=16",),) * 2))
    assert "checkpoint step 14 is unreadable" in chief_output, chief_output
    assert "resuming from step 12 of 16" in chief_output, chief_output
    assert "unreadable" not in worker_output, worker_output
    assert os.listdir(two / "corrupt_checkpoints") == ["14"]
    digests = _summary(two)["state_digests"]
    assert _summary(two)["step"] == 16 and digests[0] == digests[1]

    # --mode=embed on the pair: each process embeds and writes its own part of the split; the
    # parts join to the encoder's embedding of the whole split, in order.
    embed_args = ("--mode=embed", "--split=test[:24]", f"--output={two / 'emb.npy'}")
    _finish(_start_pair(two, (embed_args, embed_args)))
    assert sorted(p.name for p in two.glob("emb*")) == [
        f"emb{kind}-0000{p}-of-00002.npy" for kind in ("", "_labels") for p in range(2)
    ]
    embeddings, labels = export.read_embeddings(str(two / "emb.npy"))
    batch = smoke_eval_batch("test[:24]", 24)
    np.testing.assert_array_equal(labels, batch["label"])
    expected = export.load_encoder(str(two))(batch["image"])
    np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-5)


def test_a_failing_process_stops_the_whole_job(tmp_path):
    # Process 1 gets a config error after the runtime is up; process 0 starts training and
    # would wait forever in its first collective without the fail-fast exit.
    bad = ("--config.optimizer.base_lr=-1",)
    start = time.time()
    processes = _start_pair(tmp_path, extra=((), bad))
    outputs = []
    for p in processes:
        try:
            outputs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in processes:
                q.kill()
            raise AssertionError(
                f"a process hung {time.time() - start:.0f}s after the failure"
            ) from None
    assert processes[1].returncode == 2, outputs[1]
    assert "error:" in outputs[1] and "base_lr" in outputs[1]
    assert processes[0].returncode != 0, outputs[0]
