"""mio_jax: MIO self-supervised binary contrastive learning in JAX/Flax."""
