"""The model: a Flax OptimizedLSTMCell scanned over the window, then Dense logits of the last step.

Initialisation follows Keras's LSTM/Dense defaults where Flax allows it: input kernels are
Glorot-uniform over Keras's fused [in, 4*hidden] shape, biases zero with the forget gate at 1.0
(`unit_forget_bias`), output Dense Glorot-uniform. One difference remains: Keras draws one
orthogonal [hidden, 4*hidden] recurrent matrix, Flax an orthogonal [hidden, hidden] one per gate.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jnp.ndarray


def keras_fused_glorot_uniform(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  """Glorot-uniform for one gate's [in, hidden] kernel, scaled as Keras's fused [in, 4*hidden]."""
  fan_in, fan_out = shape[0], 4 * shape[1]
  limit = np.sqrt(6.0 / (fan_in + fan_out))
  return jax.random.uniform(key, shape, dtype, -limit, limit)


class CharLSTM(nn.Module):
  """LSTM(hidden) -> Dense(vocab): logits for the character after each input window."""

  vocab_size: int
  hidden: int
  dtype: jnp.dtype = jnp.float32  # computation dtype; parameters stay float32

  def setup(self):
    self.cell = nn.OptimizedLSTMCell(
        self.hidden, kernel_init=keras_fused_glorot_uniform, dtype=self.dtype, name="lstm")
    self.rnn = nn.RNN(self.cell, return_carry=True, name="rnn")
    self.head = nn.Dense(self.vocab_size, kernel_init=nn.initializers.glorot_uniform(),
                         dtype=self.dtype, name="head")

  def __call__(self, inputs: Array, lengths: Array | None = None) -> Array:
    """int ids [B, T] -> float32 logits [B, vocab] for the character after the window.

    `lengths` [B] marks left-aligned windows shorter than T (a short sampling prime): the
    logits then follow position lengths-1, and later positions are ignored.
    """
    return self.encode(inputs, lengths)[1]

  def encode(self, inputs: Array, lengths: Array | None = None) -> tuple[tuple, Array]:
    """Like __call__, also returning the LSTM carry (c, h) after the window."""
    x = jax.nn.one_hot(inputs, self.vocab_size, dtype=self.dtype)
    carry, _ = self.rnn(x, seq_lengths=lengths)
    return carry, self.head(carry[1]).astype(jnp.float32)


def init_params(model: CharLSTM, key: Array, maxlen: int) -> dict:
  """Initial parameters, with the forget-gate bias set to 1.0 as Keras's unit_forget_bias."""
  params = model.init(key, jnp.zeros((1, maxlen), jnp.int32))["params"]
  forget_bias = params["lstm"]["hf"]["bias"]
  params["lstm"]["hf"]["bias"] = jnp.ones_like(forget_bias)
  return params


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def fused_lstm_kernels(params: dict) -> tuple[Array, Array, Array]:
  """OptimizedLSTMCell's per-gate params as input kernel [V, 4H], recurrent kernel [H, 4H] and
  bias [4H], gates in the cell's order (i, f, g, o)."""
  lstm = params["lstm"]
  gates = ("i", "f", "g", "o")
  w_in = jnp.concatenate([lstm[f"i{g}"]["kernel"] for g in gates], axis=-1)
  w_rec = jnp.concatenate([lstm[f"h{g}"]["kernel"] for g in gates], axis=-1)
  bias = jnp.concatenate([lstm[f"h{g}"]["bias"] for g in gates], axis=-1)
  return w_in, w_rec, bias


def lstm_cell(carry: tuple[Array, Array], x_proj: Array, w_rec: Array) -> tuple[Array, Array]:
  """OptimizedLSTMCell's update given the input projection x @ W_in + b (one row per carry)."""
  c, h = carry
  i, f, g, o = jnp.split(x_proj + h @ w_rec, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return c, jax.nn.sigmoid(o) * jnp.tanh(c)
