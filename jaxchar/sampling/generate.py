"""Sampling: one jitted function generates every character for a batch of rows, each with its
own context, temperature, top-k, top-p and key."""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxchar.core.model import CharLSTM, Carry, Stepper
from jaxchar.sampling.controls import SAMPLE_MODES


def scale_logits(logits: jnp.ndarray, temperatures: jnp.ndarray,
                 top_k: jnp.ndarray | int = 0, top_p: jnp.ndarray | float = 1.0) -> jnp.ndarray:
  """Logits divided by per-row temperature, keeping only each row's top_k (0 = all), then the
  smallest set of most likely characters whose probability reaches top_p (nucleus sampling;
  1 = all). Ties at either cut are kept.

  top_k, top_p: one value for every row, or one per row [B]. Each costs a sort only when some
  row uses it."""
  top_k = jnp.broadcast_to(jnp.asarray(top_k, jnp.int32), logits.shape[:1])
  top_p = jnp.broadcast_to(jnp.asarray(top_p, jnp.float32), logits.shape[:1])

  def keep_top(logits):
    descending = -jnp.sort(-logits, axis=-1)
    kth = jnp.take_along_axis(descending, jnp.maximum(top_k - 1, 0)[:, None], axis=-1)
    return jnp.where((top_k[:, None] > 0) & (logits < kth), -jnp.inf, logits)

  def keep_nucleus(logits):
    descending = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(descending, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # the mass of the likelier characters
    kept = (before < top_p[:, None]) & jnp.isfinite(descending)
    cut = jnp.min(jnp.where(kept, descending, jnp.inf), axis=-1, keepdims=True)
    return jnp.where((top_p[:, None] < 1) & (logits < cut), -jnp.inf, logits)

  logits = jax.lax.cond(jnp.any(top_k > 0), keep_top, lambda logits: logits, logits)
  logits = logits / temperatures[:, None]
  return jax.lax.cond(jnp.any(top_p < 1), keep_nucleus, lambda logits: logits, logits)


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


def _window_start(model: Any, params, context: jnp.ndarray,
                  context_len: jnp.ndarray | int | None) -> tuple[list[Carry], jnp.ndarray]:
  """The window states after the context, and the position of the first character to write."""
  batch, maxlen = context.shape
  filled = jnp.broadcast_to(jnp.asarray(maxlen if context_len is None else context_len,
                                        jnp.int32), (batch,))
  stepper = model.stepper(params)

  def prime(slots, t):
    fed = _consume(stepper, slots, context[:, t], jnp.full((batch,), t))
    real = (t < filled)[None, :, None]
    return jax.tree_util.tree_map(lambda a, b: jnp.where(real, a, b), fed, slots), None

  slots, _ = jax.lax.scan(prime, stepper.initial_carries((maxlen, batch)), jnp.arange(maxlen))
  return slots, filled


def _consume(stepper: Stepper, slots: list[Carry], ids: jnp.ndarray,
             position: jnp.ndarray) -> list[Carry]:
  """Starts each row's window at its `position` [B] and feeds ids [B] to all windows."""
  # Per layer (c, h) [maxlen, B, H]: slot position % maxlen holds the window starting there.
  maxlen, batch = slots[0][0].shape[:2]
  fresh = jnp.arange(maxlen)[:, None] == (position % maxlen)[None, :]
  keep = (~fresh).astype(stepper.dtype)[:, :, None]
  slots = [(c * keep, h * keep) for c, h in slots]  # a fresh (zero) state starts here
  x_proj = stepper.project(ids)  # once per row, then the same for every window
  return stepper.step_projected(slots, jnp.broadcast_to(x_proj, (maxlen, *x_proj.shape)))


def _window_run(model: Any, params, slots: list[Carry], position: jnp.ndarray,
                temperatures: jnp.ndarray, top_k: jnp.ndarray | int, top_p: jnp.ndarray | float,
                step_keys: jax.Array) -> tuple[list[Carry], jnp.ndarray, jnp.ndarray]:
  """Writes one character per step key: (window states, next position, ids [B, length])."""
  maxlen, batch = slots[0][0].shape[:2]
  stepper = model.stepper(params)
  rows = jnp.arange(batch)

  def next_id(state, step_key):
    slots, position = state
    # The logits for `position` come from the window that ends just before it.
    logits = stepper.readout(slots[-1][1][jnp.maximum(position - maxlen, 0) % maxlen, rows])
    new = _draw(step_key, scale_logits(logits, temperatures, top_k, top_p))
    slots = _consume(stepper, slots, new, position)
    return (slots, position + 1), new.astype(jnp.int32)

  (slots, position), generated = jax.lax.scan(next_id, (slots, position), step_keys)
  return slots, position, generated.T


@functools.partial(jax.jit, static_argnames=("model", "length"))
def generate_window(model: Any, params, context: jnp.ndarray, temperatures: jnp.ndarray,
                    key: jax.Array, length: int, top_k: jnp.ndarray | int = 0,
                    context_len: jnp.ndarray | int | None = None,
                    top_p: jnp.ndarray | float = 1.0) -> jnp.ndarray:
  """Generates `length` ids per row, each from the model run on the last maxlen ids only.

  context: int32 [B, maxlen], the seed window of each row (the reference's sliding window);
  context_len: how many leading ids of it are real (default all; one value or one per row): a
  shorter prime grows the window as characters are generated, then it slides.
  temperatures: float32 [B]; top_k, top_p: one value or one per row (0 and 1 = off); key:
  one key, or one per row [B, 2]. Returns int32 [B, length].

  The reference reruns the LSTM over the whole window for every character: maxlen sequential
  cell steps each. Here the maxlen overlapping windows are run side by side instead: window s
  starts from a zero state at position s, every live window consumes each new character in
  one batched cell step, and the window that has just seen maxlen characters gives the logits
  (then its slot is reused for the window starting at the next position). Each window sees
  exactly the characters it would alone, so the result is the reference's, with one cell step
  per character instead of maxlen.
  """
  slots, position = _window_start(model, params, context, context_len)
  return _window_run(model, params, slots, position, temperatures, top_k, top_p,
                     _step_keys(key, length))[2]


@functools.partial(jax.jit, static_argnames=("model", "length"))
def generate_window_rerun(model: Any, params, context: jnp.ndarray, temperatures: jnp.ndarray,
                          key: jax.Array, length: int, top_k: jnp.ndarray | int = 0,
                          context_len: jnp.ndarray | int | None = None,
                          top_p: jnp.ndarray | float = 1.0) -> jnp.ndarray:
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
    new = _draw(step_key, scale_logits(logits, temperatures, top_k, top_p))
    new = new.astype(window.dtype)
    slid = jnp.concatenate([window[:, 1:], new[:, None]], axis=1)
    grown = window.at[:, jnp.minimum(filled, maxlen - 1)].set(new)
    window = jnp.where(filled == maxlen, slid, grown)
    return (window, jnp.minimum(filled + 1, maxlen)), new

  _, generated = jax.lax.scan(next_id, (context, filled), _step_keys(key, length))
  return generated.T


def _stateful_start(model: CharLSTM, params, context: jnp.ndarray,
                    context_len: jnp.ndarray | int | None) -> tuple[list[Carry], jnp.ndarray]:
  """Every layer's carry after the context, and the logits of the first character to write."""
  batch, maxlen = context.shape
  filled = jnp.broadcast_to(jnp.asarray(maxlen if context_len is None else context_len,
                                        jnp.int32), (batch,))
  return model.apply({"params": params}, context, filled, method=CharLSTM.encode)


def _stateful_run(model: CharLSTM, params, carries: list[Carry], logits: jnp.ndarray,
                  temperatures: jnp.ndarray, top_k: jnp.ndarray | int, top_p: jnp.ndarray | float,
                  step_keys: jax.Array) -> tuple[list[Carry], jnp.ndarray, jnp.ndarray]:
  """Writes one character per step key: (carries, next logits, ids [B, length])."""
  stepper = model.stepper(params)

  def next_id(state, step_key):
    carries, logits = state
    new = _draw(step_key, scale_logits(logits, temperatures, top_k, top_p))
    carries = stepper.step(carries, new)
    return (carries, stepper.readout(carries[-1][1])), new.astype(jnp.int32)

  (carries, logits), generated = jax.lax.scan(next_id, (carries, logits), step_keys)
  return carries, logits, generated.T


@functools.partial(jax.jit, static_argnames=("model", "length"))
def generate_stateful(model: CharLSTM, params, context: jnp.ndarray, temperatures: jnp.ndarray,
                      key: jax.Array, length: int, top_k: jnp.ndarray | int = 0,
                      context_len: jnp.ndarray | int | None = None,
                      top_p: jnp.ndarray | float = 1.0) -> jnp.ndarray:
  """Like generate_window, but runs the LSTM over the context once and then carries its state:
  one cell step per character, so the model also sees characters beyond the last maxlen."""
  carries, logits = _stateful_start(model, params, context, context_len)
  return _stateful_run(model, params, carries, logits, temperatures, top_k, top_p,
                       _step_keys(key, length))[2]


# Generation in chunks, for the server: `start_rows` turns each row's context into a state, and
# `advance_rows` writes the next `length` characters of any rows from their states, so rows can
# join and leave a batch between chunks. A state is a tuple of arrays whose first axis is the
# row; the text does not depend on how the rows are chunked or batched, only on each row's keys.
_STARTS = {"window": _window_start, "stateful": _stateful_start}
_RUNS = {"window": _window_run, "stateful": _stateful_run}


def _flatten(mode: str, carries: list[Carry], last: jnp.ndarray) -> tuple:
  axis = 1 if mode == "window" else 0  # window slots are [maxlen, B, H]
  return tuple(jnp.moveaxis(a, axis, 0) for carry in carries for a in carry) + (last,)


def _unflatten(mode: str, state: tuple) -> tuple[list[Carry], jnp.ndarray]:
  axis = 1 if mode == "window" else 0
  arrays = [jnp.moveaxis(a, 0, axis) for a in state[:-1]]
  return [tuple(arrays[i:i + 2]) for i in range(0, len(arrays), 2)], state[-1]


@functools.partial(jax.jit, static_argnames=("model", "mode"))
def start_rows(model: CharLSTM, params, mode: str, context: jnp.ndarray,
               context_len: jnp.ndarray) -> tuple:
  """Each row's state after its context [B, maxlen] (the first context_len [B] ids real)."""
  return _flatten(mode, *_STARTS[mode](model, params, context, context_len))


def chunk_keys(seeds: jnp.ndarray, indices: jnp.ndarray, chunks: jnp.ndarray) -> jax.Array:
  """Each row's PRNG key [B, 2] for one chunk: PRNGKey(seed), folded with the row index, then
  the chunk number."""
  def key(seed, index, chunk):
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), index), chunk)
  return jax.vmap(key)(seeds, indices, chunks)


@functools.partial(jax.jit, static_argnames=("model", "mode", "length"))
def advance_rows(model: CharLSTM, params, mode: str, state: tuple, temperatures: jnp.ndarray,
                 top_k: jnp.ndarray, top_p: jnp.ndarray, seeds: jnp.ndarray,
                 indices: jnp.ndarray, chunks: jnp.ndarray,
                 length: int) -> tuple[tuple, jnp.ndarray]:
  """(the rows' new state, their next `length` ids [B, length]); row b writes its chunk number
  chunks[b] with chunk_keys(seeds, indices, chunks)[b] (uint32 [B] each)."""
  carries, last = _unflatten(mode, state)
  carries, last, ids = _RUNS[mode](model, params, carries, last, temperatures, top_k, top_p,
                                   _step_keys(chunk_keys(seeds, indices, chunks), length))
  return _flatten(mode, carries, last), ids


GENERATORS = dict(zip(SAMPLE_MODES, (generate_window, generate_stateful)))
# For the benchmark: the reference algorithm (model rerun over the window per character).
REFERENCE_GENERATORS = {"window (rerun per character)": generate_window_rerun}
