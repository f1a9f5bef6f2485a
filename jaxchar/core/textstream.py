"""The training text as a stream: which files --data names, and their text decoded, with
newlines normalised and optionally lowercased, in pieces of bounded size. Joined and lowered
piece by piece, it is exactly the text `join_texts` gives from the whole files."""

import codecs
import dataclasses
from collections.abc import Iterator
from pathlib import Path

from jaxchar.core import storage
from jaxchar.errors import UserError

CHUNK_BYTES = 1 << 23  # bytes read per piece
# Lowercasing depends on context only for a final sigma; these characters end that context
# (neither cased nor case-ignorable), so a piece cut after one lowers as in the whole text.
_CONTEXT_BREAKS = (" ", "\n")
_SIGMA_CONTEXT = 64  # characters of context either side when no break is in a piece


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """One file of the text, as it was when listed: its size, and what tells whether it changed
  (a local file's modification time, a bucket object's generation)."""

  path: storage.Location
  size: int
  version: str

  @classmethod
  def of(cls, path: storage.Location) -> "SourceFile":
    with path.reading("read"):
      found = path.info()
    return cls(path, found.size, found.version)

  def changed(self) -> bool:
    try:
      return SourceFile.of(self.path) != self
    except (OSError, UserError):
      return True


def list_sources(spec: str) -> list[SourceFile]:
  """The files --data names: a file; a folder (every non-hidden file under it, recursively,
  in order of their paths relative to it); or a glob pattern (matches sorted by path). In a
  bucket, a prefix is its folder."""
  path = storage.location(spec)
  with path.reading("read"):
    if any(c in spec for c in "*?[") and not path.exists():
      files = path.glob()
      if not files:
        raise UserError(f"--data={spec}: the pattern matches no file. Check it (quote it so the "
                        "shell leaves it to jaxchar), or pass a file or a folder.")
    elif path.is_dir():
      files = path.files_under()
      if not files:
        raise UserError(f"--data={spec} is a folder with no files in it; put UTF-8 text files "
                        "in it, or pass the path of one.")
    elif path.exists():
      files = [path.absolute()]
    else:
      raise UserError(f"--data={spec}: no such file. Pass the path of a UTF-8 text file, a "
                      "folder of them (in a bucket: a prefix), or a glob pattern such as "
                      "'texts/*.txt'.")
    return [SourceFile.of(f) for f in files]


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
    with source.path.reading("read"), source.path.open_binary() as f:
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
  except OSError as e:
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
  for piece in _decoded(SourceFile.of(storage.location(path)), chunk_bytes or CHUNK_BYTES):
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
