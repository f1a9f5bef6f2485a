"""Sampling: one jitted function generates every character for a batch of temperatures; and
restoring a checkpoint into a ready-to-use Sampler."""

import dataclasses
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxchar import checkpoint
from jaxchar.config import Config, SampleConfig
from jaxchar.data import Corpus, Vocab
from jaxchar.errors import UserError
from jaxchar.lstm import lstm_cell
from jaxchar.model import (CharLSTM, Carry, fused_lstm_kernels, init_params, layer_name,
                           num_layers_of)


def scale_logits(logits: jnp.ndarray, temperatures: jnp.ndarray, top_k: int) -> jnp.ndarray:
  """Logits divided by per-row temperature, optionally keeping only the top_k per row."""
  if top_k:
    kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  return logits / temperatures[:, None]


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


@functools.partial(jax.jit, static_argnames=("model", "length", "top_k"))
def generate_window(model: Any, params, context: jnp.ndarray, temperatures: jnp.ndarray,
                    key: jax.Array, length: int, top_k: int = 0,
                    context_len: jnp.ndarray | int | None = None) -> jnp.ndarray:
  """Generates `length` ids per row, each from the model run on the last maxlen ids only.

  context: int32 [B, maxlen], the seed window of each row (the reference's sliding window);
  context_len: how many leading ids of it are real (default all): a shorter prime grows the
  window as characters are generated, then it slides. temperatures: float32 [B].
  Returns int32 [B, length].

  The reference reruns the LSTM over the whole window for every character: maxlen sequential
  cell steps each. Here the maxlen overlapping windows are run side by side instead: window s
  starts from a zero state at position s, every live window consumes each new character in
  one batched cell step, and the window that has just seen maxlen characters gives the logits
  (then its slot is reused for the window starting at the next position). Each window sees
  exactly the characters it would alone, so the result is the reference's, with one cell step
  per character instead of maxlen.
  """
  batch, maxlen = context.shape
  filled = jnp.asarray(maxlen if context_len is None else context_len, jnp.int32)
  x_table, layers = _cell_tables(params, model.dtype)
  hidden = layers[0][1].shape[0]

  def consume(slots, ids, position):
    """Starts the window at `position` and feeds ids [B] (the character there) to all."""
    # Per layer (c, h) [maxlen, B, H]: slot position % maxlen holds the window starting there.
    keep = (jnp.arange(maxlen) != position % maxlen).astype(model.dtype)[:, None, None]
    slots = [(c * keep, h * keep) for c, h in slots]  # a fresh (zero) state starts here
    x_proj = jnp.broadcast_to(x_table[ids], (maxlen, batch, 4 * hidden))
    return _stack_step(slots, x_proj, layers)

  def logits_at(slots, position):
    """Logits for the character at `position`: from the window ending just before it."""
    return _readout(params, slots[-1][1][jnp.maximum(position - maxlen, 0) % maxlen])

  zeros = [(jnp.zeros((maxlen, batch, hidden), model.dtype),) * 2 for _ in layers]

  def prime(slots, t):
    fed = consume(slots, context[:, t], t)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(t < filled, a, b), fed, slots), None

  slots, _ = jax.lax.scan(prime, zeros, jnp.arange(maxlen))

  def next_id(slots, inputs):
    k, step_key = inputs
    position = filled + k
    logits = logits_at(slots, position)
    new = jax.random.categorical(step_key, scale_logits(logits, temperatures, top_k))
    return consume(slots, new, position), new.astype(jnp.int32)

  _, generated = jax.lax.scan(next_id, slots,
                              (jnp.arange(length), jax.random.split(key, length)))
  return generated.T


@functools.partial(jax.jit, static_argnames=("model", "length", "top_k"))
def generate_window_rerun(model: Any, params, context: jnp.ndarray, temperatures: jnp.ndarray,
                    key: jax.Array, length: int, top_k: int = 0,
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
    new = jax.random.categorical(step_key, scale_logits(logits, temperatures, top_k))
    new = new.astype(window.dtype)
    slid = jnp.concatenate([window[:, 1:], new[:, None]], axis=1)
    grown = window.at[:, jnp.minimum(filled, maxlen - 1)].set(new)
    window = jnp.where(filled == maxlen, slid, grown)
    return (window, jnp.minimum(filled + 1, maxlen)), new

  _, generated = jax.lax.scan(next_id, (context, filled), jax.random.split(key, length))
  return generated.T


@functools.partial(jax.jit, static_argnames=("model", "length", "top_k"))
def generate_stateful(model: CharLSTM, params, context: jnp.ndarray, temperatures: jnp.ndarray,
                      key: jax.Array, length: int, top_k: int = 0,
                      context_len: jnp.ndarray | int | None = None) -> jnp.ndarray:
  """Like generate_window, but runs the LSTM over the context once and then carries its state:
  one cell step per character, so the model also sees characters beyond the last maxlen."""
  batch, maxlen = context.shape
  filled = jnp.full((batch,), maxlen if context_len is None else context_len, jnp.int32)
  carry, logits = model.apply({"params": params}, context, filled, method=CharLSTM.encode)
  x_table, layers = _cell_tables(params, model.dtype)

  def next_id(state, step_key):
    carries, logits = state
    new = jax.random.categorical(step_key, scale_logits(logits, temperatures, top_k))
    carries = _stack_step(carries, x_table[new], layers)
    return (carries, _readout(params, carries[-1][1])), new.astype(jnp.int32)

  _, generated = jax.lax.scan(next_id, (carry, logits), jax.random.split(key, length))
  return generated.T


GENERATORS = {"window": generate_window, "stateful": generate_stateful}
# For the benchmark: the reference algorithm (model rerun over the window per character).
REFERENCE_GENERATORS = {"window (rerun per character)": generate_window_rerun}


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A restored model, ready to sample: parameters plus the checkpoint's metadata."""

  model: CharLSTM
  params: Any
  vocab: Vocab
  maxlen: int
  lowercase: bool
  step: int
  meta: dict

  def encode_prime(self, prime: str, unknown: str = "error") -> tuple[np.ndarray, int]:
    """The context window [maxlen] (left-aligned) and how many of its ids are real."""
    if self.lowercase:
      prime = prime.lower()
    missing = self.vocab.unknown(prime)
    if missing and unknown == "error":
      raise UserError(
          f"the prime has characters the model never saw in training: "
          f"{', '.join(repr(c) for c in missing)}. Remove them, or pass --unknown=skip to drop "
          "them.")
    prime = "".join(c for c in prime if c not in missing)
    if not prime:  # start as from a line break, or the first symbol if the text has none
      prime = "\n" if "\n" in self.vocab.chars else self.vocab.chars[0]
    ids = self.vocab.encode(prime[-self.maxlen:])
    window = np.zeros(self.maxlen, np.int32)
    window[:len(ids)] = ids
    return window, len(ids)

  def sample(self, prime: str, temperatures: Sequence[float], length: int, num_samples: int = 1,
             seed: int = 0, top_k: int = 0, unknown: str = "error",
             mode: str = "window") -> list[list[str]]:
    """`num_samples` continuations of `prime` per temperature: result[t][n]."""
    if top_k > self.vocab.size:
      raise UserError(f"--top_k={top_k} is larger than the vocabulary ({self.vocab.size} "
                      f"characters); use 0 (off) to {self.vocab.size}.")
    window, filled = self.encode_prime(prime, unknown)
    temps = np.repeat(np.asarray(temperatures, np.float32), num_samples)
    context = np.broadcast_to(window, (len(temps), self.maxlen))
    out = np.asarray(GENERATORS[mode](self.model, self.params, jnp.asarray(context),
                                      jnp.asarray(temps), jax.random.PRNGKey(seed), length,
                                      top_k, filled))
    texts = [self.vocab.decode(row) for row in out]
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(temperatures))]


LISTING_ROUNDS = 5  # times the sampler lists a live run's checkpoints before giving up


def candidate_steps(metas: dict[int, dict]) -> list[int]:
  """The order to try checkpoints in: the best by validation loss, the latest, then older."""
  scored = [(meta["val_loss"], step) for step, meta in metas.items()
            if meta.get("val_loss") is not None]
  first = [min(scored)[1]] if scored else []
  return list(dict.fromkeys(first + sorted(metas, reverse=True)))


def _describe(error: Exception) -> str:
  return f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)


def _restore_sampler(workdir: Path, step: int, meta: dict) -> "Sampler":
  model = CharLSTM(meta["vocab_size"], meta["hidden"], meta.get("num_layers", 1),
                   meta.get("embed_dim", 0))
  template = jax.device_get(init_params(model, jax.random.PRNGKey(0), meta["maxlen"]))
  params = jax.device_put(checkpoint.restore_params(workdir, step, template))
  return Sampler(model, params, Vocab(meta["vocab"]), meta["maxlen"], meta["lowercase"], step,
                 meta)


def _finished_steps(workdir: Path) -> list[int]:
  if not workdir.is_dir():
    raise UserError(f"--workdir={workdir} does not exist; point it at a training run's folder "
                    "(the trainer's --workdir, default ckpt/moe).")
  steps = checkpoint.checkpoint_steps(workdir)
  if not steps and checkpoint.unfinished_checkpoints(workdir):
    raise UserError(f"--workdir={workdir} has no finished checkpoint yet: the first one is still "
                    "being written (or its writer stopped midway). Wait for the trainer's first "
                    "save (end of epoch 1, or every --save_every_steps) and retry.")
  if not steps:
    raise UserError(f"--workdir={workdir} holds no checkpoint; train first, e.g. "
                    f"`python -m jaxchar.train --flagfile=launch/moe.flags --workdir={workdir}`.")
  return steps


def load_sampler(workdir: str | Path, step: int | None = None) -> Sampler:
  """Restores parameters (not optimizer state) and metadata onto the default device.

  Without `step`: the best checkpoint, else the latest, else older ones, skipping with a
  warning any that vanish (a live run's --keep) or fail to restore. Never changes `workdir`.
  """
  workdir = Path(workdir)
  steps = _finished_steps(workdir)
  if step is not None:
    if step not in steps:
      raise UserError(f"--step={step} has no checkpoint in {workdir}; the steps saved are "
                      f"{', '.join(map(str, steps))}.")
    try:
      return _restore_sampler(workdir, step, checkpoint.read_meta(workdir, step))
    except UserError:
      raise
    except Exception as e:  # orbax raises many types for missing or damaged files
      raise UserError(f"the checkpoint at step {step} in {workdir} cannot be restored "
                      f"({_describe(e)}): it is damaged, or was deleted meanwhile by a running "
                      "trainer's --keep. Leave out --step to use the best one that "
                      "restores.") from None
  failures, tried = [], set()
  for _ in range(LISTING_ROUNDS):  # a live run may have saved new ones while we read
    metas = {}
    for candidate in sorted(set(steps) - tried):
      tried.add(candidate)
      try:
        metas[candidate] = checkpoint.read_meta(workdir, candidate)
      except UserError:
        raise
      except Exception as e:  # noqa: BLE001 - reported, and the next checkpoint is tried
        if not checkpoint.has_step(workdir, candidate):
          continue  # deleted since listed (a live run's --keep): as if never there
        failures.append(f"step {candidate}: {_describe(e)}")
        _warn(f"skipping the checkpoint at step {candidate} in {workdir}: its metadata cannot "
              f"be read ({_describe(e)}).")
    for candidate in candidate_steps(metas):
      try:
        return _restore_sampler(workdir, candidate, metas[candidate])
      except Exception as e:  # noqa: BLE001 - reported, and the next checkpoint is tried
        failures.append(f"step {candidate}: {_describe(e)}")
        why = ("it was deleted while being read (the running trainer's --keep)"
               if not checkpoint.has_step(workdir, candidate)
               else f"it cannot be restored ({_describe(e)})")
        _warn(f"skipping the checkpoint at step {candidate} in {workdir}: {why}; trying the "
              "next one.")
    steps = checkpoint.checkpoint_steps(workdir)
    if not set(steps) - tried:
      break
  if not failures:
    raise UserError(f"every checkpoint in {workdir} was deleted while being read; is a "
                    "trainer with a small --keep saving very often there? Retry.")
  raise UserError(f"none of the {len(tried)} checkpoints in {workdir} can be restored "
                  f"({'; '.join(failures)[:600]}). They are damaged or were deleted while "
                  "reading; rerun the trainer on this --workdir (it sets damaged checkpoints "
                  "aside and resumes from the newest good one, or starts afresh).")


def run_sampling(config: SampleConfig) -> str:
  """Restores the checkpoint and returns the samples as printable text."""
  sampler = load_sampler(config.workdir, config.step)
  samples = sampler.sample(config.prime, config.temperatures, config.length, config.num_samples,
                           config.seed, config.top_k, config.unknown, config.mode)
  val = sampler.meta.get("val_loss")
  lines = [f"# checkpoint step {sampler.step} (epoch {sampler.meta['epoch']}"
           + (f", validation loss {val:.4f} nats)" if val is not None else ")")]
  for temperature, texts in zip(config.temperatures, samples):
    for n, text in enumerate(texts, 1):
      lines.append(f"----- temperature {temperature}, sample {n}\n{config.prime}{text}")
  return "\n".join(lines)


def epoch_samples(state, model: CharLSTM, corpus: Corpus, config: Config,
                  epoch: int) -> tuple[str, dict[float, str]]:
  """Generates from a random training window at every temperature: (markdown, {T: text})."""
  rng = np.random.default_rng([config.seed, epoch, 1])
  start = int(rng.integers(0, corpus.cut - config.maxlen))
  seed_ids = corpus.ids[start:start + config.maxlen]
  temps = jnp.asarray(config.temperatures, jnp.float32)
  context = jnp.broadcast_to(jnp.asarray(seed_ids), (len(temps), config.maxlen))
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), epoch)
  generated = GENERATORS[config.sample_mode](model, state.params, context, temps, key,
                                            config.sample_len)
  seed_text = corpus.vocab.decode(seed_ids)
  texts = {t: f"[{seed_text}]{corpus.vocab.decode(row)}"
           for t, row in zip(config.temperatures, np.asarray(generated))}
  parts = [f"## Epoch {epoch}\n\nSeed window (in brackets below): `{seed_text!r}`\n"]
  parts += [f"### Temperature {t}\n\n```\n{text}\n```\n" for t, text in texts.items()]
  return "\n".join(parts), texts
