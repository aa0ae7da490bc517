"""tsgen_jax: TimeVQVAE-style generative modelling of time series in JAX/Flax."""

__version__ = "0.1.0"
