"""Obtaining and reading the corpus: mirror or download, checksum, UTF-8 checks."""

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from jaxchar.core import atomic
from jaxchar.errors import UserError

MOES_FILENAME = "moes_tavern_lines.txt"
MOES_SHA256 = "810e7e761a85af3c21e04ce14b4de327e0528377aec03c0397ff442970497efb"
MOES_URL = ("https://raw.githubusercontent.com/udacity/deep-learning/master/"
            "tv-script-generation/data/simpsons/moes_tavern_lines.txt")
MIRROR_ENV = "JAXCHAR_DATA_MIRROR"


def sha256_of(path: Path) -> str:
  """Hex sha256 of a file's bytes."""
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_sha(path: Path, source: str, fix: str) -> None:
  actual = sha256_of(path)
  if actual != MOES_SHA256:
    raise UserError(
        f"the corpus from {source} has sha256 {actual}, not the expected {MOES_SHA256}; it is not "
        f"the Moe's Tavern text this project trains on, so it was not used. {fix} To train on "
        "your own text instead, pass --data=path/to/file.txt.")


def fetch_moes(dest: Path, say: Callable[[str], None] = print) -> Path:
  """Copies the Moe's corpus from $JAXCHAR_DATA_MIRROR or downloads it, verifying its sha256;
  `say` tells the user which, first."""
  dest = Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  mirror = os.environ.get(MIRROR_ENV)
  with atomic.replaced(dest) as partial:  # data/ never holds a half-written or unchecked corpus
    if mirror:
      source = Path(mirror) / MOES_FILENAME
      if not source.is_file():
        raise UserError(
            f"{MIRROR_ENV}={mirror} holds no {MOES_FILENAME}; point it at the folder that does "
            f"(e.g. ../shared/data) or unset it to download from {MOES_URL}.")
      say(f"copying the corpus from {source} ({MIRROR_ENV}) to {dest}, checking its sha256")
      shutil.copyfile(source, partial)
      source_name = str(source)
    else:
      source_name = MOES_URL
      say(f"downloading the corpus from {MOES_URL} to {dest}, checking its sha256")
      try:
        with urllib.request.urlopen(MOES_URL, timeout=60) as response, open(partial, "wb") as f:
          shutil.copyfileobj(response, f)
      except (urllib.error.URLError, OSError) as e:
        raise UserError(
            f"could not download the corpus from {MOES_URL} ({e}); check the network, or set "
            f"{MIRROR_ENV} to a folder holding {MOES_FILENAME}, or pass --data=your.txt.") from None
    _check_sha(partial, source_name, f"Point {MIRROR_ENV} at a folder holding the right "
               f"{MOES_FILENAME}, or unset it to download the public copy.")
  return dest


def ensure_moes(path: Path, say: Callable[[str], None] = print) -> None:
  """The default Moe's corpus at `path`: fetched (saying so) when missing, else its checksum
  verified."""
  if not path.exists():
    fetch_moes(path, say)
  else:
    _check_sha(path, str(path), "Delete that file and rerun to fetch a checked copy.")


def read_text(path: str | Path, default_path: str | Path | None = None,
              say: Callable[[str], None] = print) -> str:
  """Reads a UTF-8 corpus; the default Moe's path is fetched (saying so) and verified when
  missing."""
  path = Path(path)
  if default_path is not None and path == Path(default_path):
    ensure_moes(path, say)
  if not path.exists():
    raise UserError(f"--data={path}: no such file. Pass the path of a UTF-8 text file.")
  if path.is_dir():
    raise UserError(f"--data={path} is a directory; pass the path of a UTF-8 text file inside it.")
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise UserError(f"--data={path} cannot be read ({e.strerror}); check its permissions.") from None
  if not raw:
    raise UserError(f"--data={path} is empty; pass a file with some text to learn from.")
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise UserError(
        f"--data={path} is not valid UTF-8: byte {e.start} (line {line}) is "
        f"{raw[e.start:e.start + 1]!r}. Convert it, e.g. `iconv -f latin1 -t utf-8`, and retry."
    ) from None
  # Universal newlines, as Python's text mode (and so the reference notebook) reads files.
  return text.replace("\r\n", "\n").replace("\r", "\n")
