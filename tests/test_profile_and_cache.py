"""The profiler window and the persistent compilation cache of a training run."""

import glob
import os
import subprocess

from launch_helpers import ROOT, SMOKE, launch_command, launch_env


def _launch(workdir, *args):
    env = launch_env()
    # The test session's shared cache folder would win over the workdir's (a user's
    # JAX_COMPILATION_CACHE_DIR does): these runs must use the default.
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    result = subprocess.run(
        launch_command(workdir, f"--config={SMOKE}", *args),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_profile_window_and_compilation_cache_land_in_the_workdir(tmp_path):
    workdir = tmp_path / "run"
    _launch(workdir, "--config.num_steps=4", "--config.profile_steps=(2,3)")

    # One trace of the window, in the layout TensorBoard's profile plugin reads.
    traces = glob.glob(str(workdir / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0, traces

    # Compiled programs were written to WORKDIR/compilation_cache for a restarted run.
    assert os.listdir(workdir / "compilation_cache")

    # Off switch: no cache folder, no trace without the window.
    off = tmp_path / "off"
    _launch(off, "--config.num_steps=2", "--config.compilation_cache=False")
    assert not (off / "compilation_cache").exists() and not (off / "profile").exists()
