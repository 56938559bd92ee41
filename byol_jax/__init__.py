"""byol_jax: BYOL (Grill et al., 2020) self-supervised pretraining in JAX/Flax."""

from byol_jax.export import load_encoder  # noqa: F401
