"""A text scored by a trained model: each character's log-probability given the characters
before it, batched over the local devices, and the figures (nats and bits per character,
perplexity). Used by `jaxchar.score` and the server's POST /api/score."""

import collections
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils

from jaxchar.core import data
from jaxchar.core.data import Vocab
from jaxchar.core.model import CharLSTM, over_stream_windows
from jaxchar.errors import UserError
from jaxchar.core.restore import Restored
from jaxchar.core.progress import ValidationProgress


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A text as the model reads it: its known characters encoded, where each one stands in the
  text, and the characters left out (not in the vocabulary) with their counts."""

  text: str  # lowercased if the model is
  ids: np.ndarray
  positions: np.ndarray  # [len(ids)] index in `text` of each id
  excluded: dict[str, int]


def lower_in_place(text: str) -> str:
  """`text` lowercased without changing its length (a character whose lowercase is longer,
  such as 'İ', stays), so positions in it are positions in the text as given."""
  lowered = text.lower()
  if len(lowered) == len(text):
    return lowered
  return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def prepare(text: str, vocab: Vocab, lowercase: bool) -> Prepared:
  """The model's view of `text`: characters outside `vocab` are neither scored nor context."""
  if lowercase:
    text = lower_in_place(text)
  missing = set(vocab.unknown(text))
  if not missing:
    return Prepared(text, vocab.encode(text), np.arange(len(text)), {})
  known = np.fromiter((c not in missing for c in text), bool, len(text))
  positions = np.flatnonzero(known)
  kept = "".join(c for c in text if c not in missing)
  counts = collections.Counter(c for c in text if c in missing)
  return Prepared(text, vocab.encode(kept), positions, dict(counts.most_common()))


def target_indices(count: int, maxlen: int, from_start: bool) -> np.ndarray:
  """Indices (into the encoded ids) of the characters scored: those with a full window before
  them, as validation scores; with `from_start` every one but the first."""
  return np.arange(1 if from_start else maxlen, count, dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class Score:
  """Each scored character's position in the text and log-probability (nats)."""

  prepared: Prepared
  positions: np.ndarray
  log_probs: np.ndarray  # float32, natural log
  from_start: bool
  maxlen: int

  @property
  def nats_per_char(self) -> float:
    return -float(np.sum(self.log_probs, dtype=np.float64)) / len(self.log_probs)

  def figures(self) -> dict:
    """The summary as plain JSON types."""
    nats = self.nats_per_char
    return {"characters": len(self.prepared.text), "scored": len(self.log_probs),
            "excluded": self.prepared.excluded, "from_start": self.from_start,
            "maxlen": self.maxlen, "nats_per_char": nats, "bits_per_char": nats / math.log(2),
            "perplexity": math.exp(nats)}


def check_scorable(prepared: Prepared, maxlen: int, from_start: bool, source: str) -> None:
  """UserError when `prepared` has nothing to score."""
  if not len(prepared.ids):
    raise UserError(f"{source} has no character the model knows ({len(prepared.text):,} "
                    "characters, none in its vocabulary): it was trained on another script or "
                    "alphabet. Score a text of the kind it was trained on.")
  if len(target_indices(len(prepared.ids), maxlen, from_start)) == 0:
    fix = ("" if from_start else ", or pass --from_start (\"from_start\": true) to score its "
           "characters with shorter contexts")
    raise UserError(f"{source} has {len(prepared.ids):,} character(s) the model knows, too few "
                    f"to score: each scored character needs "
                    f"{'one character' if from_start else f'a full {maxlen}-character window'} "
                    f"before it. Give a longer text{fix}.")


def _log_probs_of(model: CharLSTM, maxlen: int, full_windows: bool, params, ids, targets):
  """log p(ids[t] | the up to `maxlen` ids before t) for each t in `targets` [B]."""
  starts = jnp.maximum(targets - maxlen, 0)
  inputs = ids[starts[:, None] + jnp.arange(maxlen, dtype=targets.dtype)[None, :]]
  # Full windows take validation's path (no lengths), so the figures equal its loss.
  lengths = None if full_windows else jnp.minimum(targets, maxlen)
  logits = model.apply({"params": params}, inputs.astype(jnp.int32), lengths)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  return jnp.take_along_axis(log_probs, ids[targets][:, None].astype(jnp.int32), axis=1)[:, 0]


def _streamed(restored: Restored, ids: np.ndarray, first: int, batch_size: int,
              devices: tuple) -> np.ndarray:
  """The log-probabilities of ids[first:] for a model trained with its state carried
  (--carry_state), read as streams as its validation reads them (data.stream_layout)."""
  maxlen = restored.maxlen
  starts, low, high, width = data.stream_layout(len(ids), first, maxlen)
  rows = max(1, batch_size // width) * len(devices)
  p_params = jax_utils.replicate(restored.params, devices)
  p_ids = jax_utils.replicate(jnp.asarray(ids), devices)
  step = _pmapped_streams(devices)
  parts = []
  for i in range(0, len(starts), rows):
    picked = np.resize(starts[i:i + rows], rows).reshape(len(devices), -1)
    log_probs = np.asarray(step(restored.model, maxlen, width, p_params, p_ids, picked))
    for row, (start, a, b) in enumerate(zip(starts[i:i + rows], low[i:i + rows],
                                            high[i:i + rows])):
      parts.append(log_probs.reshape(-1, width)[row, a - start - 1:b - start - 1])
  return np.concatenate(parts)


def _stream_log_probs(model: CharLSTM, maxlen: int, width: int, params, ids, starts):
  """log p(ids[s + 1 + j] | ids[s], ..., ids[s + j]) [rows, width] for each row start s, read
  window after window with the state carried."""
  positions = starts[:, None] + jnp.arange(width + 1, dtype=starts.dtype)[None, :]
  window = ids[positions].astype(jnp.int32)

  def target_log_probs(logits, targets):
    log_probs = jax.nn.log_softmax(logits)
    return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]

  log_probs = over_stream_windows(model, params, window[:, :-1], maxlen, target_log_probs,
                                  window[:, 1:])
  return jnp.swapaxes(log_probs, 0, 1).reshape(len(starts), width)


@functools.lru_cache(maxsize=None)
def _pmapped_streams(devices: tuple):
  return jax.pmap(_stream_log_probs, static_broadcasted_argnums=(0, 1, 2), devices=devices)


@functools.lru_cache(maxsize=None)
def _pmapped(devices: tuple):
  return jax.pmap(_log_probs_of, static_broadcasted_argnums=(0, 1, 2), devices=devices)


def score(restored: Restored, prepared: Prepared, from_start: bool = False,
          batch_size: int = 1024, show_progress: bool = False, devices=None,
          capacity: int = 0) -> Score:
  """Scores `prepared` (check_scorable first) on every local device (or `devices`),
  `batch_size` characters per call; a progress bar on stderr when `show_progress` and there
  are several batches. The ids go to the devices padded to at least `capacity` (one program
  for pieces of several lengths)."""
  devices = tuple(devices or jax.local_devices())
  targets = target_indices(len(prepared.ids), restored.maxlen, from_start)
  if restored.spec.carry_state:
    log_probs = _streamed(restored, prepared.ids, int(targets[0]), batch_size, devices)
    return Score(prepared, prepared.positions[targets], log_probs, from_start, restored.maxlen)
  per_device = -(-batch_size // len(devices))
  batch = per_device * len(devices)
  padding = max(restored.maxlen, capacity - len(prepared.ids))
  padded_ids = np.concatenate([prepared.ids, np.zeros(padding, prepared.ids.dtype)])
  p_params = jax_utils.replicate(restored.params, devices)
  p_ids = jax_utils.replicate(jnp.asarray(padded_ids), devices)
  step = _pmapped(devices)
  num_batches = -(-len(targets) // batch)
  results = []
  with ValidationProgress(num_batches, len(targets), enabled=show_progress and num_batches > 1,
                          label="scoring", noun="characters") as bar:
    for i in range(num_batches):
      chunk = targets[i * batch:(i + 1) * batch]
      shaped = np.resize(chunk, batch).reshape(len(devices), per_device)  # padded by repeats
      results.append((step(restored.model, restored.maxlen, not from_start, p_params, p_ids,
                           shaped), len(chunk)))
      if i:
        jax.block_until_ready(results[-2][0])
        bar.update(i)
    bar.update(num_batches)
  log_probs = np.concatenate([np.asarray(r).reshape(-1)[:n] for r, n in results]
                             ) if results else np.zeros(0, np.float32)
  return Score(prepared, prepared.positions[targets], log_probs, from_start, restored.maxlen)


def tsv_char(c: str) -> str:
  """A character as one TSV field: tab, line breaks and backslash escaped."""
  return {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}.get(c, c)


def per_char_lines(result: Score):
  """The TSV of `--per_char`: a header, then position, character, log-probability."""
  yield "position\tcharacter\tlog_prob_nats\n"
  text = result.prepared.text
  for position, log_prob in zip(result.positions.tolist(), result.log_probs.tolist()):
    yield f"{position}\t{tsv_char(text[position])}\t{log_prob:.6f}\n"
