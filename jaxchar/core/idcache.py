"""A text encoded once: its ids in a cache file (1, 2 or 4 bytes each), memory-mapped by every
later run over the same unchanged files with the same lowercasing.

The file holds raw ids, numbered in order of first appearance; its header lists their
characters, so any vocabulary (the text's own sorted one, or a base model's, extended) maps
them with a small table per batch and one cache serves both. The header is written last and
checked on every open (the files' sizes, modification times and sampled contents; the id file's
size and sampled contents): a stale or damaged cache is rebuilt, never trusted."""

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxchar.core import atomic, textstream
from jaxchar.core.data import ids_dtype
from jaxchar.core.storage.local import sampled_digest
from jaxchar.core.textstream import SourceFile
from jaxchar.errors import UserError

FORMAT = 1
_UNSEEN = np.uint32(0xFFFFFFFF)
PLAIN_EVERY_SECONDS = 30.0


def _fingerprint(sources: list[SourceFile]) -> list[dict]:
  """What identifies the files' contents (Location.fingerprint: a bucket object's name, size and
  generation, reading nothing more; a local file's size, modification time and sampled
  blocks)."""
  return [s.path.fingerprint() for s in sources]


@dataclasses.dataclass(frozen=True)
class EncodedText:
  """A text's raw ids (memory-mapped) and the characters they stand for."""

  ids: np.ndarray  # raw ids: ASCII its own, others in order of first appearance from 128
  codes: np.ndarray  # the code point of each raw id
  present: str  # the characters the text holds, sorted
  sha256: str  # of the text as encoded (joined, lowercased if asked), UTF-8
  path: Path  # the id file
  reused: bool
  seconds: float  # to open or encode

  @property
  def num_chars(self) -> int:
    return len(self.ids)


def cache_paths(cache_dir: Path, sources: list[SourceFile], lowercase: bool) -> tuple[Path, Path]:
  """(id file, header) for these files and lowercasing: named by a hash of both."""
  key = json.dumps({"paths": [str(s.path) for s in sources], "lowercase": lowercase})
  name = "text-" + hashlib.sha256(key.encode()).hexdigest()[:16]
  return cache_dir / f"{name}.ids", cache_dir / f"{name}.json"


def _open_cached(ids_path: Path, header_path: Path, sources: list[SourceFile],
                 lowercase: bool) -> tuple[np.ndarray, dict] | None:
  """The cached ids and header if they match the files now, else None."""
  try:
    header = json.loads(header_path.read_text(encoding="utf-8"))
    if (header.get("format") != FORMAT or header["lowercase"] != lowercase
        or header["sources"] != _fingerprint(sources)):
      return None
    dtype = np.dtype(header["dtype"])
    if ids_path.stat().st_size != header["num_chars"] * dtype.itemsize or not header["num_chars"]:
      return None
    if sampled_digest(ids_path, ids_path.stat().st_size) != header["ids_sample"]:
      return None
    return np.memmap(ids_path, dtype, mode="r"), header
  except (OSError, ValueError, KeyError, TypeError):
    return None


class _Bar:
  """Bytes encoded: a tqdm bar on a terminal, else a line every PLAIN_EVERY_SECONDS."""

  def __init__(self, total: int, desc: str, enabled: bool):
    self.enabled, self.total, self.desc = enabled, total, desc
    self.start = self.last = time.perf_counter()
    self.bar = (tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr,
                     dynamic_ncols=True, leave=False)
                if enabled and sys.stderr.isatty() else None)

  def update(self, done: int) -> None:
    if self.bar is not None:
      self.bar.update(done - self.bar.n)
    elif self.enabled and time.perf_counter() - self.last >= PLAIN_EVERY_SECONDS:
      self.last = time.perf_counter()
      rate = done / max(self.last - self.start, 1e-9)
      print(f"{self.desc}: {done / 1e6:,.0f} of {self.total / 1e6:,.0f} MB, {rate / 1e6:.0f} "
            "MB/s", file=sys.stderr, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class _IdWriter:
  """Appends raw ids to `path`, widening the file's ids when the vocabulary outgrows them."""

  def __init__(self, path: Path):
    self.path, self.dtype, self.count = path, np.uint8, 0
    self.file = open(path, "wb")

  def write(self, raw: np.ndarray, vocab_size: int) -> None:
    if ids_dtype(vocab_size) != self.dtype:
      self._widen(ids_dtype(vocab_size))
    self.file.write(np.ascontiguousarray(raw, self.dtype).data)
    self.count += len(raw)

  def _widen(self, dtype: type) -> None:
    self.file.close()
    with atomic.replaced(self.path) as wider, open(wider, "wb") as out:
      old = np.memmap(self.path, self.dtype, mode="r") if self.count else np.zeros(0, self.dtype)
      for i in range(0, len(old), 1 << 24):
        out.write(np.asarray(old[i:i + (1 << 24)]).astype(dtype).tobytes())
      del old
    self.dtype, self.file = dtype, open(self.path, "ab")

  def finish(self) -> None:
    self.file.flush()
    os.fsync(self.file.fileno())
    self.file.close()


class _Vocabulary:
  """Raw ids as the text is streamed: ASCII characters are their own ids (so an ASCII piece
  needs no lookup), others numbered from 128 in order of first appearance."""

  def __init__(self):
    self.table = np.full(0x110000, _UNSEEN, np.uint32)  # code point -> raw id
    self.table[:128] = np.arange(128)
    self.codes = list(range(128))  # raw id -> code point
    self.known = bytes(range(128, 256))  # bytes of no interest: non-ASCII and seen ASCII
    self.present: set[str] = set()

  def raw_ids(self, piece: str, utf8: bytes) -> np.ndarray:
    """The raw ids of `piece` (whose UTF-8 is `utf8`); notes the characters it holds."""
    new_ascii = set(utf8.translate(None, self.known))  # one pass, usually leaving nothing
    if new_ascii:
      self.known += bytes(new_ascii)
      self.present.update(chr(c) for c in new_ascii)
    if piece.isascii():
      return np.frombuffer(utf8, np.uint8)
    codes = np.frombuffer(piece.encode("utf-32-le"), np.uint32)
    raw = self.table[codes]
    unseen = raw == _UNSEEN
    if unseen.any():
      new = np.unique(codes[unseen])
      self.table[new] = np.arange(len(self.codes), len(self.codes) + len(new), dtype=np.uint32)
      self.codes.extend(new.tolist())
      self.present.update(map(chr, new.tolist()))
      raw = self.table[codes]
    return raw


def _encode(sources: list[SourceFile], lowercase: bool, partial: Path, desc: str,
            show_progress: bool) -> dict:
  """Streams the text into raw ids at `partial`; the header's fields."""
  vocabulary = _Vocabulary()
  sha = hashlib.sha256()
  writer = _IdWriter(partial)
  bar = _Bar(textstream.total_size(sources), desc, show_progress)
  done = 0
  try:
    for piece in textstream.stream_text(sources, lowercase):
      utf8 = piece.encode("utf-8")
      sha.update(utf8)
      writer.write(vocabulary.raw_ids(piece, utf8), len(vocabulary.codes))
      done += len(utf8)
      bar.update(min(done, bar.total))
  finally:
    bar.close()
    writer.finish()
  return {"format": FORMAT, "lowercase": lowercase, "num_chars": writer.count,
          "dtype": np.dtype(writer.dtype).name, "codes": vocabulary.codes,
          "present": "".join(sorted(vocabulary.present)), "sha256": sha.hexdigest()}


def _no_room(cache_dir: Path, need: int, error: OSError) -> UserError:
  return UserError(
      f"the id cache could not be written in {cache_dir} ({error.strerror or error}): it needs "
      f"about {need / 1e6:,.0f} MB there. Nothing was left half-written. Free some space, or "
      "put the cache on another disk with --cache_dir=FOLDER.")


def open_or_encode(spec: str, sources: list[SourceFile], lowercase: bool, cache_dir: Path,
                   show_progress: bool = True) -> EncodedText:
  """The text's ids from its cache in `cache_dir` when that matches, else encoded (with a
  progress bar) and cached; UserError when the folder cannot hold the cache."""
  started = time.perf_counter()
  cache_dir = Path(cache_dir)
  ids_path, header_path = cache_paths(cache_dir, sources, lowercase)
  cached = _open_cached(ids_path, header_path, sources, lowercase)
  if cached is None:
    need = textstream.total_size(sources) * 4 // 3 + (1 << 20)  # 1 byte per char, plus room
    try:
      cache_dir.mkdir(parents=True, exist_ok=True)
      for stale in (header_path, ids_path):  # the header first: no header, no cache
        stale.unlink(missing_ok=True)  # also frees its room for the new one
      free = shutil.disk_usage(cache_dir).free
    except OSError as e:
      raise UserError(f"--cache_dir={cache_dir} cannot be created or written ({e.strerror}); "
                      "point --cache_dir at a writable folder for the text's id cache.") from None
    if not os.access(cache_dir, os.W_OK | os.X_OK):
      raise UserError(f"--cache_dir={cache_dir} is not writable, so the text's ids cannot be "
                      "cached there; point --cache_dir at a writable folder (about "
                      f"{need / 1e6:,.0f} MB free).")
    if free < need:
      raise _no_room(cache_dir, need, OSError(errno.ENOSPC, f"{free / 1e6:,.0f} MB free"))
    try:
      with atomic.replaced(ids_path) as partial:
        header = _encode(sources, lowercase, partial, f"encoding {spec}", show_progress)
        header["sources"] = _fingerprint(sources)
        header["ids_sample"] = sampled_digest(partial, partial.stat().st_size)
      atomic.write_bytes(header_path, json.dumps(header).encode())  # last: no header, no cache
    except OSError as e:
      raise _no_room(cache_dir, need, e) from None
    cached = np.memmap(ids_path, np.dtype(header["dtype"]), mode="r"), header
    reused = False
  else:
    reused = True
  ids, header = cached
  return EncodedText(ids, np.asarray(header["codes"], np.uint32), header["present"],
                     header["sha256"], ids_path, reused,
                     time.perf_counter() - started)
