"""Writing a file whole or not at all: through a temporary file in its folder, renamed over it,
with the permissions a plain open() would give it."""

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from jaxchar.errors import writing


def write_text(path: str | Path, parts: Iterable[str], what: str) -> None:
  """`parts` joined into `path`; a failed write (UserError naming `what`) leaves no file."""
  path = Path(path)
  with writing(what, path.parent):
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
      umask = os.umask(0)
      os.umask(umask)
      os.fchmod(handle, 0o666 & ~umask)  # mkstemp's 0600 would hide a page from a web server
      with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.writelines(parts)
      os.replace(temporary, path)
    except BaseException:
      if os.path.exists(temporary):
        os.unlink(temporary)
      raise
