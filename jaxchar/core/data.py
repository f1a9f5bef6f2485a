"""Text to model inputs: vocabulary, split, window starts and device-shaped batches.

No one-hot tensor and no window matrix is built on the host: the corpus ids go to the device(s)
once, and each batch is a small array of window start offsets gathered there (`gather_windows`).
"""

import dataclasses
import hashlib
from collections.abc import Iterator

import jax.numpy as jnp
import numpy as np

from jaxchar.errors import UserError


_ENCODE_CHUNK = 1 << 22  # characters per encoding chunk


def ids_dtype(vocab_size: int) -> type:
  """The dtype of a corpus' ids: one byte per character while the vocabulary fits in one."""
  return np.uint8 if vocab_size <= 256 else np.int32


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Distinct characters; ids are positions in `chars`. Sorted for a new model; a fine-tuned
  one keeps its base's order and appends the new text's other characters (`extended`)."""

  chars: str

  @classmethod
  def from_text(cls, text: str) -> "Vocab":
    return cls("".join(sorted(set(text))))

  def extended(self, text: str) -> tuple["Vocab", str]:
    """This vocabulary with the characters of `text` it lacks appended (sorted), and those."""
    new = "".join(self.unknown(text))
    return Vocab(self.chars + new), new

  @property
  def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
    """Code points sorted, and the id of each (searchsorted needs sorted codes)."""
    codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
    order = np.argsort(codes, kind="stable")
    return codes[order], order

  @property
  def size(self) -> int:
    return len(self.chars)

  def unknown(self, text: str) -> list[str]:
    """Characters of `text` that are not in the vocabulary, sorted."""
    return sorted(set(text) - set(self.chars))

  def encode(self, text: str) -> np.ndarray:
    """Ids of `text` (uint8 when the vocabulary fits, else int32); every character must be in
    the vocabulary. Encoded in chunks so a large corpus needs little more than its ids."""
    ids = np.empty(len(text), ids_dtype(self.size))
    table, id_of = self._lookup
    for start in range(0, len(text), _ENCODE_CHUNK):
      codes = np.frombuffer(text[start:start + _ENCODE_CHUNK].encode("utf-32-le"), np.uint32)
      ids[start:start + len(codes)] = id_of[np.searchsorted(table, codes)]
    return ids

  def decode(self, ids) -> str:
    return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


@dataclasses.dataclass(frozen=True)
class Corpus:
  """An encoded text with its train/validation split and window start offsets."""

  vocab: Vocab
  ids: np.ndarray  # [len(text)], uint8 for vocabularies of up to 256 symbols, else int32
  cut: int  # train = ids[:cut], validation = ids[cut:]
  train_starts: np.ndarray  # int32 offsets into ids
  val_starts: np.ndarray  # int32 offsets into ids (already shifted by `cut`)
  sha256: str  # of the text as trained on (after lowercasing): identifies it on resume

  @property
  def num_train_windows(self) -> int:
    return len(self.train_starts)

  @property
  def num_val_windows(self) -> int:
    return len(self.val_starts)


def split_index(text: str, val_fraction: float) -> int:
  """The first paragraph break ("\\n\\n") at or after (1 - val_fraction) of the text."""
  nominal = int((1.0 - val_fraction) * len(text))
  found = text.find("\n\n", nominal)
  return nominal if found < 0 else found


def window_starts(length: int, maxlen: int, stride: int) -> np.ndarray:
  """Starts s = 0, stride, ... with s + maxlen < length: input [s, s+maxlen), target s+maxlen."""
  return np.arange(0, max(length - maxlen, 0), stride, dtype=np.int32)


def build_corpus(text: str, *, maxlen: int, stride: int, val_fraction: float,
                 lowercase: bool = True, vocab: Vocab | None = None) -> Corpus:
  """Lowercases (optionally), encodes and splits `text`, as the reference notebook does; with
  its own sorted vocabulary, or `vocab`, which must hold every character of the text."""
  if lowercase:
    text = text.lower()
  vocab = Vocab.from_text(text) if vocab is None else vocab
  if vocab.size < 2:
    raise UserError(
        f"the text has only one distinct character ({vocab.chars!r}), so there is nothing to "
        "predict: every next character is that one. Train on a text with at least two "
        "different characters.")
  cut = split_index(text, val_fraction) if val_fraction > 0 else len(text)
  train_starts = window_starts(cut, maxlen, stride)
  val_starts = window_starts(len(text) - cut, maxlen, 1) + cut
  if len(train_starts) == 0:
    raise UserError(
        f"the training part of the corpus has {cut} characters, too few for one window of "
        f"--maxlen={maxlen} plus its target; use a longer text or a smaller --maxlen.")
  if val_fraction > 0 and len(val_starts) == 0:
    raise UserError(
        f"the validation part of the corpus has {len(text) - cut} characters, too few for one "
        f"window of --maxlen={maxlen} plus its target; raise --val_fraction, lower --maxlen, or "
        "use a longer text (or --val_fraction=0 to train without validation).")
  return Corpus(vocab, vocab.encode(text), cut, train_starts, val_starts.astype(np.int32),
                hashlib.sha256(text.encode("utf-8")).hexdigest())


def epoch_order(num_windows: int, seed: int, epoch: int) -> np.ndarray:
  """The shuffled window order of one epoch; a pure function of (seed, epoch), so resumable."""
  return np.random.default_rng([seed, epoch]).permutation(num_windows)


def train_batches(starts: np.ndarray, order: np.ndarray, batch_size: int,
                  num_devices: int) -> np.ndarray:
  """Start offsets as [num_batches, num_devices, batch_size // num_devices]; the last partial
  batch is dropped (a different remainder each epoch, since the order is reshuffled)."""
  num_batches = len(order) // batch_size
  chosen = starts[order[:num_batches * batch_size]]
  return chosen.reshape(num_batches, num_devices, batch_size // num_devices)


def evenly_spaced(starts: np.ndarray, limit: int) -> np.ndarray:
  """`starts` when it has at most `limit` entries, else `limit` of them evenly spaced from the
  first to the last: the same subset every call."""
  if len(starts) <= limit:
    return starts
  return starts[np.linspace(0, len(starts) - 1, limit).round().astype(np.int64)]


def eval_batches(starts: np.ndarray, batch_size: int,
                 num_devices: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """All `starts` in device-shaped batches, padded to full size, with 0/1 weights."""
  per_device = batch_size // num_devices
  for i in range(0, len(starts), batch_size):
    chunk = starts[i:i + batch_size]
    weights = np.zeros(batch_size, np.float32)
    weights[:len(chunk)] = 1.0
    padded = np.zeros(batch_size, np.int32)
    padded[:len(chunk)] = chunk
    yield padded.reshape(num_devices, per_device), weights.reshape(num_devices, per_device)


def gather_windows(ids: jnp.ndarray, starts: jnp.ndarray, maxlen: int,
                   every_position: bool = False) -> dict[str, jnp.ndarray]:
  """Gathers inputs [B, maxlen] from device-resident ids, with next-character targets: [B]
  (the character after each window), or [B, maxlen] (after every position) if every_position."""
  positions = starts[:, None] + jnp.arange(maxlen + 1, dtype=starts.dtype)[None, :]
  window = ids[positions].astype(jnp.int32)
  return {"inputs": window[:, :-1], "targets": window[:, 1:] if every_position else window[:, -1]}
