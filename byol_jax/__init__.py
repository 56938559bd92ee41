"""byol_jax: BYOL (Grill et al., 2020) self-supervised pretraining in JAX/Flax."""
