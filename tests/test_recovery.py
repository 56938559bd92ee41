"""Failure and recovery: signals, kill -9, corrupt checkpoints, NaN guard, config conflicts."""

import errno
import os
import signal
import time

import jax
import numpy as np
import pytest
from launch_helpers import (
    SMOKE,
    damage_checkpoint,
    free_port,
    restore_smoke_state,
    start_launch,
    wait_for_line,
)

from byol_jax import checkpoint, metrics_io, train, workdir_config
from configs import smoke

# Long enough to interrupt mid-run; checkpoints every 4 steps. (SIGTERM, and resuming after it,
# is tested with two processes in test_multihost.py.)
RUN_ARGS = [f"--config={SMOKE}", "--config.num_steps=16", "--config.checkpoint_every_steps=4"]


def _start(workdir):
    return start_launch(workdir, *RUN_ARGS)


def _run_to_end(workdir):
    process = _start(workdir)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def _assert_bitwise_equal(a, b, what):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=what)


def test_kill9_then_relaunch_resumes_bitwise_identical(tmp_path):
    reference = tmp_path / "reference"
    _run_to_end(reference)
    ref_state, ref_step = restore_smoke_state(reference)
    assert ref_step == 16

    # kill -9 once the step-4 checkpoint is committed (saves are asynchronous; later saves may
    # be mid-write): the relaunch resumes from a complete checkpoint and ends bitwise where the
    # uninterrupted run ended.
    killed = tmp_path / "kill9"
    process = _start(killed)
    wait_for_line(process, "step 6/16")
    deadline = time.time() + 120
    while not checkpoint.step_dirs(killed) and time.time() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=60)
    steps = checkpoint.step_dirs(killed)
    assert steps and 4 <= steps[-1] < 16
    output = _run_to_end(killed)
    assert "resuming from step" in output
    _assert_bitwise_equal(
        restore_smoke_state(killed)[0], ref_state, f"kill -9, then {output[:2000]}"
    )

    # Steps logged after the step-4 checkpoint by the killed run are not left as duplicates.
    def losses(workdir):
        return [
            (r["step"], r["loss"]) for r in metrics_io.read_metrics(str(workdir)) if "loss" in r
        ]

    assert losses(killed) == losses(reference)


def _toy_manager(tmp_path):
    manager = checkpoint.create_manager(str(tmp_path), max_to_keep=5)
    template = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    for step in (1, 2, 3):
        state = {"w": np.full((4, 3), step, np.float32), "b": np.full(3, -step, np.float32)}
        assert checkpoint.save(manager, step, state)
    checkpoint.wait(manager)  # saves are asynchronous
    return manager, template


def test_one_process_with_the_runtime_honours_a_notice_that_came_before_training(tmp_path):
    # A single-host TPU VM starts JAX's distributed runtime, whose notifier owns SIGTERM. A
    # notice while the run still compiles must stop it at its first steps with a checkpoint
    # (not be swallowed), as in a pod.
    port = free_port()
    runtime = [f"--coordinator_address=localhost:{port}", "--num_processes=1", "--process_id=0"]
    process = start_launch(tmp_path, *RUN_ARGS, *runtime)
    wait_for_line(process, "config:")  # printed after the runtime started, before compiling
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "stopped by a preemption notice (SIGTERM or Ctrl-C) on some process" in output, output
    stopped_at = int(output.split("after step ")[1].split(";")[0])
    assert 1 <= stopped_at < 16 and os.listdir(tmp_path / "checkpoints") == [str(stopped_at)]


@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_corrupt_latest_checkpoint_falls_back_to_newest_good_one(tmp_path, how, capsys):
    manager, template = _toy_manager(tmp_path)
    damage_checkpoint(tmp_path / "checkpoints" / "3", how)
    restored, step = checkpoint.restore_latest(manager, template, workdir=str(tmp_path))
    assert step == 2
    np.testing.assert_array_equal(restored["w"], np.full((4, 3), 2, np.float32))
    assert "checkpoint step 3 is unreadable" in capsys.readouterr().out
    # Moved aside, not deleted; the manager no longer lists it.
    assert os.path.isdir(tmp_path / "corrupt_checkpoints" / "3")
    assert manager.latest_step() == 2


def test_all_checkpoints_corrupt_is_a_clear_error_and_touches_nothing(tmp_path):
    manager, template = _toy_manager(tmp_path)
    for step in (1, 2, 3):
        damage_checkpoint(tmp_path / "checkpoints" / str(step), "garble")
    with pytest.raises(checkpoint.CheckpointError, match="none of the checkpoints"):
        checkpoint.restore_latest(manager, template, workdir=str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2", "3"]


def test_disk_full_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    manager, template = _toy_manager(tmp_path)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manager, "save", no_space)
    with pytest.raises(checkpoint.CheckpointError, match="newest: step 3"):
        checkpoint.save(manager, 4, template)
    restored, step = checkpoint.restore_latest(checkpoint.create_manager(str(tmp_path)), template)
    assert step == 3 and restored["w"][0, 0] == 3


def test_non_finite_state_is_never_saved(tmp_path):
    manager, template = _toy_manager(tmp_path)
    with pytest.raises(FloatingPointError, match="non-finite"):
        checkpoint.save(manager, 4, {"w": np.full((4, 3), np.nan, np.float32), "b": template["b"]})
    assert manager.latest_step() == 3


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = smoke.get_config()
    config.num_steps = 6
    config.checkpoint_every_steps = 3
    config.log_every_steps = 1
    workdir = str(tmp_path)
    # First 3 steps normally; then "resume" with an absurd LR that makes the weights overflow.
    config.num_steps = 3
    train.train_and_evaluate(config, workdir)
    config.num_steps = 6
    config.optimizer.base_lr = 1e30
    with pytest.raises(train.NonFiniteLossError, match=r"step [45].*Last good checkpoint: step 3"):
        train.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]


def test_workdir_with_other_model_is_refused_unless_allowed(tmp_path):
    config = smoke.get_config()
    os.makedirs(tmp_path / "checkpoints" / "3")
    workdir_config.check_and_save_config(config, str(tmp_path))
    other = smoke.get_config()
    other.model.encoder = "resnet18"
    with pytest.raises(
        workdir_config.ConfigConflictError, match="model.encoder: 'resnet_tiny' -> 'resnet18'"
    ):
        workdir_config.check_and_save_config(other, str(tmp_path))
    workdir_config.check_and_save_config(other, str(tmp_path), allow_config_change=True)
    # Changing what does not affect the checkpoint layout is fine.
    more_steps = smoke.get_config()
    more_steps.model.encoder = "resnet18"
    more_steps.num_steps = 100
    workdir_config.check_and_save_config(more_steps, str(tmp_path))


def test_shorter_run_in_a_longer_runs_workdir_is_refused_and_leaves_its_config(tmp_path):
    config = smoke.get_config()
    config.num_steps = 6
    workdir = str(tmp_path)
    train.train_and_evaluate(config, workdir)
    saved = (tmp_path / "config.json").read_text()
    shorter = smoke.get_config()
    shorter.num_steps = 4
    for allowed in (False, True):
        with pytest.raises(
            workdir_config.ConfigConflictError, match="checkpoint at step 6, past the 4 steps"
        ):
            train.train_and_evaluate(shorter, workdir, allow_config_change=allowed)
    assert (tmp_path / "config.json").read_text() == saved  # the longer run's config stays
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
    # Rerunning the finished run itself (same length) or training it further is fine.
    workdir_config.refuse_a_shorter_run(workdir, 6)
    workdir_config.refuse_a_shorter_run(workdir, 20)


def test_sigint_and_sigterm_become_a_stop_request_and_handlers_are_restored():
    from byol_jax import preemption

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with preemption.StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: no KeyboardInterrupt, just the flag
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C interrupts at once
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with preemption.StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
