"""Shared by the tests that run ``launch.py`` as a user would: start it, restore what it saved."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np

from byol_jax import checkpoint, train
from byol_jax import data as input_pipeline
from configs import smoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")


def launch_command(workdir: Any, *args: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "launch.py"), f"--workdir={workdir}", *args]


def launch_env(**extra: str) -> dict[str, str]:
    """This environment plus fast compiles (tiny models) and unbuffered output."""
    return dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", PYTHONUNBUFFERED="1", **extra)


def start_launch(workdir: Any, *args: str, **env: str) -> subprocess.Popen:
    """``launch.py`` in the background; stdout and stderr merged into ``process.stdout``."""
    return subprocess.Popen(
        launch_command(workdir, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=launch_env(**env),
        cwd=ROOT,
    )


def restore_smoke_state(workdir: Any, step: int | None = None) -> tuple[Any, int]:
    """(host state, step) of a smoke-config run: the given step, or the newest good one."""
    experiment = train.build_experiment(smoke.get_config(), num_classes=10, num_train_examples=256)
    template = jax.device_get(train.initial_state(experiment, 0))
    manager = checkpoint.create_manager(str(workdir))
    if step is None:
        return checkpoint.restore_latest(manager, template)
    return checkpoint.restore_step(manager, step, template), step


def free_port(host: str = "localhost") -> int:
    """A TCP port nobody listens on now (for a coordinator or a local server)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def smoke_eval_batch(split: str, size: int) -> dict[str, np.ndarray]:
    """The first ``size`` examples of ``split`` as the smoke config's evaluation reads them."""
    data = smoke.get_config().data
    return next(
        input_pipeline.eval_batches(
            data.dataset,
            split,
            data_dir=data.data_dir,
            batch_size=size,
            source_size=data.source_size,
            idx_dir=data.idx_dir,
        )
    )


def wait_for_line(process: subprocess.Popen, prefix: str, timeout: float = 300) -> str:
    """Reads ``process.stdout`` until a line starts with ``prefix``; returns the output so far."""
    lines, deadline = [], time.time() + timeout
    for line in process.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return "".join(lines)
        assert time.time() < deadline, "".join(lines)
    raise AssertionError(f"no line starting with {prefix!r}:\n" + "".join(lines))


def damage_checkpoint(step_dir: Any, how: str = "garble") -> None:
    """Truncate or overwrite every file of a checkpoint step folder (a damaged disk or upload)."""
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                if how == "truncate":
                    f.truncate(size // 3)
                else:
                    f.write(os.urandom(max(size, 16)))
