"""Test setup: 8 fake CPU devices for the multi-device tests, quiet TensorFlow."""

import os

# Must happen before JAX initializes its backends (i.e. before the first test imports jax).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Tests run tiny models for a few steps: compile time dominates, so skip XLA's slow passes.
jax.config.update("jax_disable_most_optimizations", True)
