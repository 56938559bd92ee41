"""Test setup: 8 fake CPU devices for the multi-device tests, quiet TensorFlow, one XLA cache."""

import os

import pytest

# Must happen before JAX initializes its backends (i.e. before the first test imports jax).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Tests run tiny models for a few steps: compile time dominates, so skip XLA's slow passes.
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache_for_subprocesses(tmp_path_factory):
    """One persistent XLA cache for every ``launch.py``/bench subprocess of this test session.

    Those subprocesses compile the same smoke-config programs again and again (a resumed run, the
    second process of a pair); reading them back halves a smoke launch. pytest-xdist workers
    (``-n 2``) share it: their temporary folders have one parent. This process already imported
    JAX, so only the children see these variables.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    cache_dir = root / "xla_cache"
    cache_dir.mkdir(exist_ok=True)
    cache = {
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    saved = {name: os.environ.get(name) for name in cache}
    os.environ.update(cache)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
