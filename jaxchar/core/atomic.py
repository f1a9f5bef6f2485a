"""Writing a local file whole or not at all, the one way the project does it: into a temporary
file in its folder, renamed over it once complete, with the permissions a plain open() gives."""

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from jaxchar.errors import writing


@contextlib.contextmanager
def replaced(path: str | Path) -> Iterator[Path]:
  """Yields a temporary path beside `path` to write; on success it becomes `path` (made
  durable first), on any failure it is removed and `path` is left as it was."""
  path = Path(path)
  handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(handle, 0o666 & ~umask)  # mkstemp's 0600 would hide a page from a web server
    os.close(handle)
    yield Path(temporary)
    with open(temporary, "rb") as written:
      os.fsync(written.fileno())
    os.replace(temporary, path)
  except BaseException:
    Path(temporary).unlink(missing_ok=True)
    raise


def write_bytes(path: str | Path, data: bytes) -> None:
  """`data` as the whole of `path`."""
  with replaced(path) as temporary:
    temporary.write_bytes(data)


def write_text(path: str | Path, parts: Iterable[str], what: str) -> None:
  """`parts` joined into `path`; a failed write (UserError naming `what`) leaves no file."""
  path = Path(path)
  with writing(what, path.parent), replaced(path) as temporary:
    with open(temporary, "w", encoding="utf-8") as out:
      out.writelines(parts)
