"""The training text as a stream: which files --data names, and their text decoded, with
newlines normalised and optionally lowercased, in pieces of bounded size. Joined and lowered
piece by piece, it is exactly the text `join_texts` gives from the whole files."""

import codecs
import dataclasses
import glob
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxchar.core import storage
from jaxchar.errors import UserError

CHUNK_BYTES = 1 << 23  # bytes read per piece
# Lowercasing depends on context only for a final sigma; these characters end that context
# (neither cased nor case-ignorable), so a piece cut after one lowers as in the whole text.
_CONTEXT_BREAKS = (" ", "\n")
_SIGMA_CONTEXT = 64  # characters of context either side when no break is in a piece


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """One file of the text, as it was when listed: what tells whether it changed (a gs://
  object's generation, which every rewrite changes, or a local file's modification time)."""

  path: Any  # a pathlib.Path, or a gs:// URL (str)
  size: int
  mtime_ns: int = 0
  generation: str = ""

  @classmethod
  def of(cls, path: Any) -> "SourceFile":
    if storage.is_remote(path):
      info = storage.object_info(path)
      return cls(str(path), info["size"], generation=info["generation"])
    stat = path.stat()
    return cls(path, stat.st_size, stat.st_mtime_ns)

  @property
  def remote(self) -> bool:
    return storage.is_remote(self.path)

  def changed(self) -> bool:
    try:
      return SourceFile.of(self.path) != self
    except OSError:
      return True


def _list_objects(spec: str) -> list[SourceFile]:
  """The objects a gs:// --data names: an object, a glob pattern, or a prefix (every object
  under it whose relative name has no hidden part, in order of those names)."""
  fs = storage.filesystem()
  with storage.requests_to(spec, "read"):
    if any(c in spec for c in "*?["):
      names = sorted(n for n in fs.glob(storage.key(spec)) if fs.isfile(n))
    elif fs.isfile(storage.key(spec)):
      names = [storage.key(spec)]
    else:
      prefix = storage.key(spec) + "/"
      names = sorted(n for n in fs.find(prefix) if not any(
          part.startswith(".") for part in n[len(prefix):].split("/")))
    if not names:
      raise UserError(f"--data={spec}: no object in the bucket has that name, matches that "
                      "pattern or lies under that prefix. List it with `gcloud storage ls "
                      f"{spec}`, and pass an object, a prefix (a folder) or a quoted pattern.")
    return [SourceFile.of(storage.GCS_PREFIX + name) for name in names]


def list_sources(spec: str) -> list[SourceFile]:
  """The files --data names: a file; a folder (every non-hidden file under it, recursively,
  in order of their paths relative to it); or a glob pattern (matches sorted by path)."""
  if storage.is_remote(spec):
    return _list_objects(spec)
  path = Path(spec)
  if any(c in spec for c in "*?[") and not path.exists():
    matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not matches:
      raise UserError(f"--data={spec}: the pattern matches no file. Check it (quote it so the "
                      "shell leaves it to jaxchar), or pass a file or a folder.")
    return [SourceFile.of(p.resolve()) for p in matches]
  if not path.exists():
    raise UserError(f"--data={spec}: no such file. Pass the path of a UTF-8 text file, a folder "
                    "of them, or a glob pattern such as 'texts/*.txt'.")
  if path.is_dir():
    files = sorted((p for p in path.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(path).parts)),
                   key=lambda p: p.relative_to(path).as_posix())
    if not files:
      raise UserError(f"--data={spec} is a folder with no files in it; put UTF-8 text files "
                      "in it, or pass the path of one.")
    return [SourceFile.of(p.resolve()) for p in files]
  return [SourceFile.of(path.resolve())]


def join_texts(texts: list[str]) -> str:
  """Several files' texts as one: each ends with a newline (added if missing), and a blank
  line separates them (so the split at a paragraph break can fall between files)."""
  return "\n".join(t if t.endswith("\n") else t + "\n" for t in texts) if len(texts) > 1 \
      else texts[0]


def _not_utf8(source: SourceFile, error: UnicodeDecodeError, offset: int, lines: int,
              chunk: bytes, start_in_chunk: int) -> UserError:
  line = lines + chunk[:max(start_in_chunk, 0)].count(b"\n") + 1
  bad = error.object[error.start:error.start + 1]
  return UserError(
      f"--data={source.path} is not valid UTF-8: byte {offset + start_in_chunk} (line {line}) "
      f"is {bad!r}. Convert it, e.g. `iconv -f latin1 -t utf-8`, and retry.")


def _decoded(source: SourceFile, chunk_bytes: int) -> Iterator[str]:
  """The file's text in pieces, newlines normalised; a piece never ends inside a '\\r\\n'."""
  decoder = codecs.getincrementaldecoder("utf-8")("strict")
  offset = lines = 0
  held = ""
  try:
    with storage.open_binary(source.path) as f:
      while True:
        chunk = f.read(chunk_bytes)
        final = not chunk
        try:
          text = held + decoder.decode(chunk, final=final)
        except UnicodeDecodeError as e:
          pending = len(e.object) - len(chunk)  # bytes held over from the previous chunk
          raise _not_utf8(source, e, offset, lines, chunk, e.start - pending) from None
        offset += len(chunk)
        lines += chunk.count(b"\n")
        held = ""
        if text.endswith("\r") and not final:
          text, held = text[:-1], "\r"
        if text:
          yield text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text
        if final:
          break
  except UserError:
    raise
  except Exception as e:
    if source.remote:
      raise storage.bucket_error(source.path, "read", e) from None
    if not isinstance(e, OSError):
      raise
    raise UserError(f"--data={source.path} cannot be read ({e.strerror}); check its "
                    "permissions.") from None
  if offset != source.size or source.changed():
    raise UserError(f"--data={source.path} changed while it was being read ({source.size:,} "
                    f"bytes when listed, {offset:,} read); nothing was cached. Rerun once it is "
                    "complete (e.g. when the copy or download writing it has finished).")


def _lower_in_context(before: str, text: str, after: str) -> str:
  """`text` lowercased as it would be between `before` and `after` (lowering keeps the
  length of each character whatever its context, so the slice is exact)."""
  if not before and not after:
    return text.lower()
  start = len(before.lower())
  return (before + text + after).lower()[start:start + len(text.lower())]


def _lowered(pieces: Iterator[str]) -> Iterator[str]:
  """`pieces` lowercased exactly as their concatenation would be: each is cut after its last
  context break and the rest carried into the next; a piece without one is lowered with the
  characters either side as context (exact unless more than _SIGMA_CONTEXT case-ignorable
  characters stand next to a capital sigma, in a piece of megabytes without a space)."""
  carry = before = ""
  for piece in pieces:
    text = carry + piece
    cut = max(text.rfind(b) for b in _CONTEXT_BREAKS) + 1
    if cut > 0:
      emit, carry, after, following = text[:cut], text[cut:], "", ""
    else:
      cut = max(len(text) - _SIGMA_CONTEXT, 0)
      emit, carry = text[:cut], text[cut:]
      after, following = carry, (before + emit)[-_SIGMA_CONTEXT:]
    if emit:
      yield _lower_in_context(before, emit, after)
      before = following
  if carry:
    yield _lower_in_context(before, carry, "")


def file_pieces(path: str | Path, chunk_bytes: int | None = None) -> Iterator[str]:
  """One file's text (newlines normalised) in pieces, each but the last ending at a space or
  newline when it holds one: lowering a piece then lowers as the whole text would."""
  carry = ""
  for piece in _decoded(SourceFile.of(Path(path)), chunk_bytes or CHUNK_BYTES):
    text = carry + piece
    cut = max(text.rfind(b) for b in _CONTEXT_BREAKS) + 1 or len(text)
    carry = text[cut:]
    if cut:
      yield text[:cut]
  if carry:
    yield carry


def stream_text(sources: list[SourceFile], lowercase: bool,
                chunk_bytes: int | None = None) -> Iterator[str]:
  """The joined text of `sources` (see join_texts) in pieces of about `chunk_bytes`
  (default CHUNK_BYTES), lowercased if asked."""
  chunk_bytes = chunk_bytes or CHUNK_BYTES
  for i, source in enumerate(sources):
    if i:
      yield "\n"
    last = ""
    pieces = _decoded(source, chunk_bytes)
    for piece in (_lowered(pieces) if lowercase else pieces):
      last = piece[-1:] or last
      yield piece
    if not last:
      raise UserError(f"--data={source.path} is empty; pass a file with some text to learn "
                      "from" + (", or remove it from the folder." if len(sources) > 1 else "."))
    if len(sources) > 1 and last != "\n":
      yield "\n"


def total_size(sources: list[SourceFile]) -> int:
  return sum(s.size for s in sources)
