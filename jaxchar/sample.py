"""Sampling: one jitted function generates every character, for a batch of temperatures."""

import functools
from typing import Any

import jax
import jax.numpy as jnp


def scale_logits(logits: jnp.ndarray, temperatures: jnp.ndarray, top_k: int) -> jnp.ndarray:
  """Logits divided by per-row temperature, optionally keeping only the top_k per row."""
  if top_k:
    kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  return logits / temperatures[:, None]


@functools.partial(jax.jit, static_argnames=("model", "length", "top_k"))
def generate_window(model: Any, params, context: jnp.ndarray, temperatures: jnp.ndarray,
                    key: jax.Array, length: int, top_k: int = 0) -> jnp.ndarray:
  """Generates `length` ids per row, rerunning the model on the last maxlen ids each time.

  context: int32 [B, maxlen], the seed window of each row (the reference's sliding window);
  temperatures: float32 [B]. Returns int32 [B, length].
  """

  def next_id(window, step_key):
    logits = model.apply({"params": params}, window)
    new = jax.random.categorical(step_key, scale_logits(logits, temperatures, top_k))
    new = new.astype(window.dtype)
    return jnp.concatenate([window[:, 1:], new[:, None]], axis=1), new

  _, generated = jax.lax.scan(next_id, context, jax.random.split(key, length))
  return generated.T
