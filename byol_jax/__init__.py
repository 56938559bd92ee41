"""byol_jax: BYOL (Grill et al., 2020) self-supervised pretraining in JAX/Flax."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): ``import byol_jax.console`` must not import JAX (launch.py sets up the
    # console before JAX starts); ``byol_jax.load_encoder`` still works as before.
    if name == "load_encoder":
        from byol_jax.export import load_encoder

        return load_encoder
    raise AttributeError(f"module 'byol_jax' has no attribute {name!r}")
