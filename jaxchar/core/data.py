"""Text to model inputs: vocabulary, split, windows and device-shaped batches.

Nothing of the text's size is built: each batch's windows are read from the ids' memory map
(`device_batch`, only this process's share; a large text's with pread, `idmap`, so they map
nothing in), in an order given by a seeded bijection on window numbers (`shuffled`), and the
steps gather inputs and targets from them (`gather_windows`).
"""

import dataclasses
import hashlib
from collections.abc import Iterator

import jax.numpy as jnp
import numpy as np

from jaxchar.core import idmap
from jaxchar.errors import UserError


_ENCODE_CHUNK = 1 << 22  # characters per encoding chunk


def ids_dtype(count: int) -> type:
  """The narrowest of uint8, uint16 and uint32 that holds `count` distinct ids."""
  return np.uint8 if count <= 1 << 8 else np.uint16 if count <= 1 << 16 else np.uint32


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
  """An encoded text with its train/validation split. Windows are numbered, not listed:
  training window i starts at i * stride, validation window j at cut + j (64-bit offsets)."""

  vocab: Vocab
  raw: np.ndarray  # the text's ids, memory-mapped from the id cache or in memory
  table: np.ndarray | None  # raw id -> vocabulary id; None when the raw ids are those
  cut: int  # train = [0, cut), validation = [cut, num_chars)
  maxlen: int
  stride: int  # characters between training windows' starts
  sha256: str  # of the text as trained on (after lowercasing): identifies it on resume
  num_files: int = 1
  reader: idmap.WindowReader | None = dataclasses.field(default=None, compare=False, repr=False)

  @property
  def num_chars(self) -> int:
    return len(self.raw)

  @property
  def num_train_windows(self) -> int:
    return -(-max(self.cut - self.maxlen, 0) // self.stride)

  @property
  def num_val_windows(self) -> int:
    return max(self.num_chars - self.cut - self.maxlen, 0)

  def read(self, start: int, stop: int) -> np.ndarray:
    """Vocabulary ids of characters [start, stop) (from the id file, not its map: a run of them
    is a sequential read)."""
    raw = idmap.read_span(self.raw, start, stop)
    return raw if self.table is None else self.table[raw]

  def share_from(self, first_id: int, chunk: int = 1 << 24) -> float:
    """The share of the text's characters whose vocabulary id is `first_id` or above (read in
    chunks: any size of text)."""
    count = sum(int(np.count_nonzero(self.read(start, start + chunk) >= first_id))
                for start in range(0, self.num_chars, chunk))
    return count / max(self.num_chars, 1)

  def windows(self, starts: np.ndarray, width: int | None = None) -> np.ndarray:
    """Vocabulary ids [..., width] (default maxlen + 1: a window and its target) at `starts`:
    read by `reader` (exactly their bytes, nothing mapped in), else indexed in `raw`."""
    width = width or self.maxlen + 1
    if self.reader is not None:
      raw = self.reader.read(starts, width)
    else:
      raw = self.raw[np.asarray(starts, np.int64)[..., None] + np.arange(width)]
    return raw if self.table is None else self.table[raw]


def split_index(text: str, val_fraction: float) -> int:
  """The first paragraph break ("\\n\\n") at or after (1 - val_fraction) of the text."""
  nominal = int((1.0 - val_fraction) * len(text))
  found = text.find("\n\n", nominal)
  return nominal if found < 0 else found


def split_index_of_ids(ids: np.ndarray, newline: int | None, val_fraction: float,
                       chunk: int = 1 << 22) -> int:
  """split_index on the text's ids (`newline`: the id of "\\n"), read in chunks from the
  nominal point."""
  nominal = int((1.0 - val_fraction) * len(ids))
  if newline is None:
    return nominal
  for start in range(nominal, len(ids) - 1, chunk):
    part = idmap.read_span(ids, start, start + chunk + 1)
    found = np.flatnonzero((part[:-1] == newline) & (part[1:] == newline))
    if len(found):
      return start + int(found[0])
  return nominal


def _checked(corpus: Corpus, val_fraction: float) -> Corpus:
  if corpus.vocab.size < 2:
    raise UserError(
        f"the text has only one distinct character ({corpus.vocab.chars!r}), so there is "
        "nothing to predict: every next character is that one. Train on a text with at least "
        "two different characters.")
  if corpus.num_train_windows == 0:
    raise UserError(
        f"the training part of the corpus has {corpus.cut} characters, too few for one window "
        f"of --maxlen={corpus.maxlen} plus its target; use a longer text or a smaller --maxlen.")
  if val_fraction > 0 and corpus.num_val_windows == 0:
    raise UserError(
        f"the validation part of the corpus has {corpus.num_chars - corpus.cut} characters, too "
        f"few for one window of --maxlen={corpus.maxlen} plus its target; raise --val_fraction, "
        "lower --maxlen, or use a longer text (or --val_fraction=0 to train without "
        "validation).")
  return corpus


def build_corpus(text: str, *, maxlen: int, stride: int, val_fraction: float,
                 lowercase: bool = True, vocab: Vocab | None = None) -> Corpus:
  """Lowercases (optionally), encodes and splits `text` held in memory, as the reference
  notebook does; with its own sorted vocabulary, or `vocab`, which must hold every character
  of the text. (The trainer streams its text through the id cache: `from_encoded`.)"""
  if lowercase:
    text = text.lower()
  vocab = Vocab.from_text(text) if vocab is None else vocab
  cut = split_index(text, val_fraction) if val_fraction > 0 else len(text)
  return _checked(Corpus(vocab, vocab.encode(text), None, cut, maxlen, stride,
                         hashlib.sha256(text.encode("utf-8")).hexdigest()), val_fraction)


def from_encoded(encoded, *, maxlen: int, stride: int, val_fraction: float,
                 vocab: Vocab | None = None, num_files: int = 1) -> Corpus:
  """The corpus of an `idcache.EncodedText`, with its own sorted vocabulary or `vocab` (which
  must hold every character the text has): the same as build_corpus on the whole text."""
  vocab = Vocab(encoded.present) if vocab is None else vocab
  table = np.zeros(len(encoded.codes), ids_dtype(vocab.size))
  position = {c: i for i, c in enumerate(vocab.chars)}
  for raw_id, code in enumerate(encoded.codes.tolist()):
    table[raw_id] = position.get(chr(code), 0)
  newline = 10 if "\n" in encoded.present else None  # ASCII raw ids are the characters
  cut = (split_index_of_ids(encoded.ids, newline, val_fraction) if val_fraction > 0
         else encoded.num_chars)
  return _checked(Corpus(vocab, encoded.ids, table, cut, maxlen, stride, encoded.sha256,
                         num_files, idmap.WindowReader.of(encoded.ids)), val_fraction)


_ROUNDS = 4
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _feistel(x: np.ndarray, keys: np.ndarray, half: int) -> np.ndarray:
  """A keyed permutation of [0, 4**half) (balanced Feistel rounds, splitmix64 mixing)."""
  mask = np.uint64((1 << half) - 1)
  left, right = x >> np.uint64(half), x & mask
  for key in keys:
    z = (right + key) * _MIX[0]
    z = (z ^ (z >> np.uint64(31))) * _MIX[1]
    z = (z ^ (z >> np.uint64(29))) * _MIX[2]
    left, right = right, left ^ ((z ^ (z >> np.uint64(32))) & mask)
  return (left << np.uint64(half)) | right


def shuffled(positions: np.ndarray, num_windows: int, seed: int, epoch: int) -> np.ndarray:
  """Which window comes at each of `positions` in the epoch's shuffled order: a bijection of
  [0, num_windows) that is a pure function of (seed, epoch), so resumable, computed for just
  these positions (no permutation of every window is held)."""
  keys = np.random.default_rng([seed, epoch]).integers(0, 2**63, _ROUNDS, dtype=np.uint64)
  half = max(1, -(-max(num_windows - 1, 1).bit_length() // 2))
  out = _feistel(np.asarray(positions, np.uint64), keys, half)
  outside = out >= num_windows
  while outside.any():  # cycle walking: the domain is under 4x as large, so few rounds
    out[outside] = _feistel(out[outside], keys, half)
    outside = out >= num_windows
  return out.astype(np.int64)


def train_batch_starts(corpus: Corpus, batch: int, batch_size: int, seed: int,
                       epoch: int) -> np.ndarray:
  """The start offsets [batch_size] (int64) of the epoch's `batch`-th training batch."""
  positions = np.arange(batch * batch_size, (batch + 1) * batch_size, dtype=np.int64)
  return shuffled(positions, corpus.num_train_windows, seed, epoch) * corpus.stride


def device_batch(corpus: Corpus, starts: np.ndarray,
                 width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """This process's windows at `starts` [devices, per_device] as the steps take them: each
  device's windows laid end to end [devices, per_device * width] (width: maxlen + 1 unless
  given), and where each one starts in that row [devices, per_device] (int32), for
  gather_windows."""
  windows = corpus.windows(starts, width)
  devices, per_device, width = windows.shape
  local = np.broadcast_to(np.arange(per_device, dtype=np.int32) * width, (devices, per_device))
  return windows.reshape(devices, per_device * width), np.ascontiguousarray(local)


def validation_starts(corpus: Corpus, limit: int) -> np.ndarray:
  """The validation windows' starts: all of them up to `limit`, else `limit` evenly spaced
  (the same every epoch); O(limit), whatever the text's size."""
  count = corpus.num_val_windows
  picked = (np.arange(count, dtype=np.int64) if count <= limit
            else np.linspace(0, count - 1, limit).round().astype(np.int64))
  return corpus.cut + picked


def eval_batches(starts: np.ndarray, batch_size: int,
                 num_devices: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """All `starts` in device-shaped batches, padded to full size, with 0/1 weights."""
  per_device = batch_size // num_devices
  for i in range(0, len(starts), batch_size):
    chunk = starts[i:i + batch_size]
    weights = np.zeros(batch_size, np.float32)
    weights[:len(chunk)] = 1.0
    padded = np.full(batch_size, starts[0] if len(starts) else 0, np.int64)
    padded[:len(chunk)] = chunk
    yield padded.reshape(num_devices, per_device), weights.reshape(num_devices, per_device)


def gather_windows(ids: jnp.ndarray, starts: jnp.ndarray, maxlen: int,
                   every_position: bool = False) -> dict[str, jnp.ndarray]:
  """Gathers inputs [B, maxlen] from device-resident ids, with next-character targets: [B]
  (the character after each window), or [B, maxlen] (after every position) if every_position."""
  positions = starts[:, None] + jnp.arange(maxlen + 1, dtype=starts.dtype)[None, :]
  window = ids[positions].astype(jnp.int32)
  return {"inputs": window[:, :-1], "targets": window[:, 1:] if every_position else window[:, -1]}


# --carry_state: the training text as contiguous streams, one a batch row, read window after
# window; validation reads the validation text as rows of STREAM_WARMUP windows of context then
# STREAM_CHUNK windows scored (the same characters as window validation scores).
STREAM_WARMUP, STREAM_CHUNK = 4, 4


def stream_steps(corpus: Corpus, rows: int) -> int:
  """Windows of maxlen each of `rows` streams gives an epoch (whatever its offset)."""
  return (corpus.cut // rows - corpus.maxlen) // corpus.maxlen


def stream_batch_starts(corpus: Corpus, step: int, rows: int, seed: int,
                        epoch: int) -> np.ndarray:
  """The starts [rows] of the epoch's `step`-th windows: row r reads its stretch of the
  training text, [r, r + 1) x cut // rows, from an offset below maxlen that varies with the
  epoch (so windows' edges fall elsewhere each epoch), window after window."""
  offset = int(np.random.default_rng([seed, epoch, 2]).integers(0, corpus.maxlen))
  length = corpus.cut // rows
  return np.arange(rows, dtype=np.int64) * length + offset + step * corpus.maxlen


def stream_rows(corpus: Corpus, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """Validation as streams (stream_layout over the validation text): the characters window
  validation scores (those after a full window), or as many evenly spaced rows as score about
  `limit` of them."""
  starts, low, high, width = stream_layout(corpus.num_chars - corpus.cut, corpus.maxlen,
                                           corpus.maxlen, limit)
  return starts + corpus.cut, low + corpus.cut, high + corpus.cut, width


def stream_layout(length: int, first: int, maxlen: int, limit: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """Rows that score the characters [first, length) of a text read as streams: (input starts,
  first and past-last target scored) per row, and the rows' input width. Each row reads up to
  STREAM_WARMUP windows before the STREAM_CHUNK windows of targets it scores (at least maxlen
  characters before each, but where the text starts later), none before 0; together they score
  each character once (or, with `limit`, as many evenly spaced rows as score about `limit`)."""
  width = min((STREAM_WARMUP + STREAM_CHUNK) * maxlen,
              (length - 1) // maxlen * maxlen)  # a short text: less context
  chunk = min(STREAM_CHUNK * maxlen, width - maxlen + 1)  # each target: maxlen before it at least
  count = -(-(length - first) // chunk)
  picked = np.arange(count, dtype=np.int64)
  if limit is not None and count * chunk > limit:
    picked = np.unique(np.linspace(0, count - 1, max(1, -(-limit // chunk))).round()
                       .astype(np.int64))
  low = first + picked * chunk
  high = np.minimum(low + chunk, length)
  starts = np.clip(high - 1 - width, 0, length - 1 - width)
  return starts, low, high, width

