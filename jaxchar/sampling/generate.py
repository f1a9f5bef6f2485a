"""Sampling: one jitted function generates every character for a batch of rows, each with its
own context, temperature, top-k and key."""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxchar.core.lstm import lstm_cell
from jaxchar.core.model import CharLSTM, Carry, fused_lstm_kernels, layer_name, num_layers_of
from jaxchar.sampling.config import SAMPLE_MODES


def scale_logits(logits: jnp.ndarray, temperatures: jnp.ndarray,
                 top_k: jnp.ndarray | int = 0) -> jnp.ndarray:
  """Logits divided by per-row temperature, keeping only each row's top_k (0 = all).

  top_k: one value for every row, or one per row [B]."""
  top_k = jnp.broadcast_to(jnp.asarray(top_k, jnp.int32), logits.shape[:1])

  def keep_top(logits):
    descending = -jnp.sort(-logits, axis=-1)
    kth = jnp.take_along_axis(descending, jnp.maximum(top_k - 1, 0)[:, None], axis=-1)
    return jnp.where((top_k[:, None] > 0) & (logits < kth), -jnp.inf, logits)

  logits = jax.lax.cond(jnp.any(top_k > 0), keep_top, lambda logits: logits, logits)
  return logits / temperatures[:, None]


def _step_keys(key: jax.Array, length: int) -> jax.Array:
  """One key per generated character: [length, 2] from one key, or [length, B, 2] from one
  key per row [B, 2] (a row's characters then depend only on its own key)."""
  if key.ndim == 1:
    return jax.random.split(key, length)
  return jax.vmap(lambda k: jax.random.split(k, length), out_axes=1)(key)


def _draw(step_key: jax.Array, logits: jnp.ndarray) -> jnp.ndarray:
  if step_key.ndim == 1:
    return jax.random.categorical(step_key, logits)
  return jax.vmap(jax.random.categorical)(step_key, logits)


def _cell_tables(params, dtype) -> tuple[jnp.ndarray, list[tuple]]:
  """The first layer's input projection of every symbol [V, 4H] (embedding and bias folded
  in), and per layer its (input kernel, recurrent kernel, bias)."""
  layers = [tuple(w.astype(dtype) for w in fused_lstm_kernels(params[layer_name(i)]))
            for i in range(num_layers_of(params))]
  w_in, _, bias = layers[0]
  if "embed" in params:
    w_in = params["embed"]["embedding"].astype(dtype) @ w_in
  return w_in + bias, layers


def _stack_step(carries: list[Carry], x_proj: jnp.ndarray, layers: list[tuple]) -> list[Carry]:
  """One cell step of every layer, given the first layer's input projection."""
  new = []
  for i, (carry, (w_in, w_rec, bias)) in enumerate(zip(carries, layers)):
    if i:
      x_proj = new[-1][1] @ w_in + bias
    new.append(lstm_cell(*carry, x_proj, w_rec)[:2])
  return new


def _readout(params, h: jnp.ndarray) -> jnp.ndarray:
  """The output layer: float32 logits from hidden states h [..., H]."""
  head = params["head"]
  return (h @ head["kernel"].astype(h.dtype) + head["bias"]).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("model", "length"))
def generate_window(model: Any, params, context: jnp.ndarray, temperatures: jnp.ndarray,
                    key: jax.Array, length: int, top_k: jnp.ndarray | int = 0,
                    context_len: jnp.ndarray | int | None = None) -> jnp.ndarray:
  """Generates `length` ids per row, each from the model run on the last maxlen ids only.

  context: int32 [B, maxlen], the seed window of each row (the reference's sliding window);
  context_len: how many leading ids of it are real (default all; one value or one per row): a
  shorter prime grows the window as characters are generated, then it slides.
  temperatures: float32 [B]; top_k: one value or one per row (0 = off); key: one key, or one
  per row [B, 2]. Returns int32 [B, length].

  The reference reruns the LSTM over the whole window for every character: maxlen sequential
  cell steps each. Here the maxlen overlapping windows are run side by side instead: window s
  starts from a zero state at position s, every live window consumes each new character in
  one batched cell step, and the window that has just seen maxlen characters gives the logits
  (then its slot is reused for the window starting at the next position). Each window sees
  exactly the characters it would alone, so the result is the reference's, with one cell step
  per character instead of maxlen.
  """
  batch, maxlen = context.shape
  filled = jnp.broadcast_to(jnp.asarray(maxlen if context_len is None else context_len,
                                        jnp.int32), (batch,))
  x_table, layers = _cell_tables(params, model.dtype)
  hidden = layers[0][1].shape[0]
  rows = jnp.arange(batch)

  def consume(slots, ids, position):
    """Starts each row's window at its `position` [B] and feeds ids [B] to all windows."""
    # Per layer (c, h) [maxlen, B, H]: slot position % maxlen holds the window starting there.
    fresh = jnp.arange(maxlen)[:, None] == (position % maxlen)[None, :]
    keep = (~fresh).astype(model.dtype)[:, :, None]
    slots = [(c * keep, h * keep) for c, h in slots]  # a fresh (zero) state starts here
    x_proj = jnp.broadcast_to(x_table[ids], (maxlen, batch, 4 * hidden))
    return _stack_step(slots, x_proj, layers)

  def logits_at(slots, position):
    """Logits for the character at `position` [B]: from the window ending just before it."""
    return _readout(params, slots[-1][1][jnp.maximum(position - maxlen, 0) % maxlen, rows])

  zeros = [(jnp.zeros((maxlen, batch, hidden), model.dtype),) * 2 for _ in layers]

  def prime(slots, t):
    fed = consume(slots, context[:, t], jnp.full((batch,), t))
    real = (t < filled)[None, :, None]
    return jax.tree_util.tree_map(lambda a, b: jnp.where(real, a, b), fed, slots), None

  slots, _ = jax.lax.scan(prime, zeros, jnp.arange(maxlen))

  def next_id(slots, inputs):
    k, step_key = inputs
    position = filled + k
    logits = logits_at(slots, position)
    new = _draw(step_key, scale_logits(logits, temperatures, top_k))
    return consume(slots, new, position), new.astype(jnp.int32)

  _, generated = jax.lax.scan(next_id, slots, (jnp.arange(length), _step_keys(key, length)))
  return generated.T


@functools.partial(jax.jit, static_argnames=("model", "length"))
def generate_window_rerun(model: Any, params, context: jnp.ndarray, temperatures: jnp.ndarray,
                    key: jax.Array, length: int, top_k: jnp.ndarray | int = 0,
                    context_len: jnp.ndarray | int | None = None) -> jnp.ndarray:
  """generate_window as the reference computes it: the whole model rerun on the window for
  every character. Works with any `model.apply(variables, ids, lengths)`; kept as the
  specification the fast version is tested against, and as a benchmark baseline.

  context: int32 [B, maxlen], the seed window of each row (the reference's sliding window);
  context_len: how many leading ids of it are real (default all): a shorter prime fills the
  window as characters are generated, then it slides. temperatures: float32 [B].
  Returns int32 [B, length].
  """
  batch, maxlen = context.shape
  filled = jnp.asarray(maxlen if context_len is None else context_len, jnp.int32)

  def next_id(carry, step_key):
    window, filled = carry
    logits = model.apply({"params": params}, window, jnp.full((batch,), filled))
    new = _draw(step_key, scale_logits(logits, temperatures, top_k))
    new = new.astype(window.dtype)
    slid = jnp.concatenate([window[:, 1:], new[:, None]], axis=1)
    grown = window.at[:, jnp.minimum(filled, maxlen - 1)].set(new)
    window = jnp.where(filled == maxlen, slid, grown)
    return (window, jnp.minimum(filled + 1, maxlen)), new

  _, generated = jax.lax.scan(next_id, (context, filled), _step_keys(key, length))
  return generated.T


@functools.partial(jax.jit, static_argnames=("model", "length"))
def generate_stateful(model: CharLSTM, params, context: jnp.ndarray, temperatures: jnp.ndarray,
                      key: jax.Array, length: int, top_k: jnp.ndarray | int = 0,
                      context_len: jnp.ndarray | int | None = None) -> jnp.ndarray:
  """Like generate_window, but runs the LSTM over the context once and then carries its state:
  one cell step per character, so the model also sees characters beyond the last maxlen."""
  batch, maxlen = context.shape
  filled = jnp.broadcast_to(jnp.asarray(maxlen if context_len is None else context_len,
                                        jnp.int32), (batch,))
  carry, logits = model.apply({"params": params}, context, filled, method=CharLSTM.encode)
  x_table, layers = _cell_tables(params, model.dtype)

  def next_id(state, step_key):
    carries, logits = state
    new = _draw(step_key, scale_logits(logits, temperatures, top_k))
    carries = _stack_step(carries, x_table[new], layers)
    return (carries, _readout(params, carries[-1][1])), new.astype(jnp.int32)

  _, generated = jax.lax.scan(next_id, (carry, logits), _step_keys(key, length))
  return generated.T


GENERATORS = dict(zip(SAMPLE_MODES, (generate_window, generate_stateful)))
# For the benchmark: the reference algorithm (model rerun over the window per character).
REFERENCE_GENERATORS = {"window (rerun per character)": generate_window_rerun}
