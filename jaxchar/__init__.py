"""jaxchar: a JAX/Flax trainer and sampler for character-level LSTM language models."""

__version__ = "0.1.0"
