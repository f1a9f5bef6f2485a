"""The path type every run path goes through: a file or folder on this machine or in a bucket.

Callers never ask which: each operation is a method, written once for a local disk
(`local.LocalPath`) and once for Cloud Storage (`bucket.BucketPath`)."""

import abc
import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol


@dataclasses.dataclass(frozen=True)
class FileInfo:
  """What identifies a file's contents as listed: its size, and what any rewrite changes (a
  local file's modification time in ns, a bucket object's generation)."""

  size: int
  version: str


class Lock(Protocol):
  """A trainer's exclusive hold on its workdir."""

  took_over: str | None  # the silent holder this lock replaced, to say so

  def acquire(self) -> "Lock": ...
  def check(self) -> None: ...
  def release(self) -> None: ...
  def discard(self) -> None: ...


class Mirror(abc.ABC):
  """A run's records as files of a local folder (`folder`): the location's own folder on a disk;
  on a bucket, a private copy whose changed files `publish` uploads whole."""

  folder: Path

  @abc.abstractmethod
  def fetch(self, name: str) -> None:
    """The location's file `name`, made present in `folder` (if the location has it)."""

  @abc.abstractmethod
  def publish(self) -> None:
    """Makes `folder`'s files the location's (each changed one whole)."""

  @abc.abstractmethod
  def discard(self) -> None:
    """Removes what the mirror made (never the location's own files)."""


class Location(abc.ABC):
  """A file or folder: `str()` is the path as the user writes it."""

  def __init__(self, text: str):
    self._text = text

  def __str__(self) -> str:
    return self._text

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self._text!r})"

  def __eq__(self, other: Any) -> bool:
    return type(other) is type(self) and str(other) == str(self)

  def __hash__(self) -> int:
    return hash(self._text)

  @abc.abstractmethod
  def __truediv__(self, name: str) -> "Location": ...

  @property
  @abc.abstractmethod
  def name(self) -> str: ...

  @property
  def orbax(self) -> Any:
    """This path as orbax takes it (an etils.epath.Path)."""
    from etils import epath
    return epath.Path(str(self))

  @abc.abstractmethod
  def absolute(self) -> "Location": ...

  # Reading.
  @abc.abstractmethod
  def exists(self) -> bool: ...

  @abc.abstractmethod
  def is_dir(self) -> bool: ...

  @abc.abstractmethod
  def names(self) -> list[str]:
    """The names of the files and folders directly in this folder; [] if it is not there."""

  @abc.abstractmethod
  def info(self) -> FileInfo:
    """Size and version of this file (FileNotFoundError if absent, IsADirectoryError for a
    folder)."""

  @abc.abstractmethod
  def fingerprint(self) -> dict:
    """What identifies this file's contents, for a cache of them (JSON)."""

  @abc.abstractmethod
  def open_binary(self) -> BinaryIO: ...

  def read_text(self) -> str:
    with self.open_binary() as f:
      return f.read().decode("utf-8")

  @abc.abstractmethod
  def files_under(self) -> list["Location"]:
    """Every file under this folder whose relative path has no hidden part, in order of those
    paths."""

  @abc.abstractmethod
  def glob(self) -> list["Location"]:
    """The files this path, a glob pattern, matches, in order."""

  # Writing.
  @abc.abstractmethod
  def write_bytes(self, data: bytes) -> None:
    """This file written whole or not at all."""

  @abc.abstractmethod
  def move_to(self, target: "Location") -> None:
    """Moves this file or folder to `target` (of the same kind)."""

  # A run's folder.
  @abc.abstractmethod
  def lock(self, description: str) -> Lock:
    """The (not yet acquired) lock a trainer holds on this workdir."""

  @abc.abstractmethod
  def lock_holder(self) -> str | None:
    """Who holds this workdir's lock now; None when no one does. Writes nothing."""

  @abc.abstractmethod
  def pinned(self, into: Path, names: tuple[str, ...]) -> "Location":
    """This folder's subfolders `names`, copied into `into` as a reader needs them whatever a
    live trainer deletes meanwhile: hard links on a disk, a download from a bucket (of those
    alone). One that is not there (or was deleted as it was read) is left out of the copy."""

  @abc.abstractmethod
  def mirror(self) -> Mirror:
    """A local folder of this folder's records (see Mirror)."""

  @abc.abstractmethod
  def local_sibling(self, name: str) -> Path:
    """A local folder named `name` beside this one (for a bucket's: beside ckpt/'s runs)."""

  # Failures.
  @abc.abstractmethod
  def reading(self, what: str) -> contextlib.AbstractContextManager[None]:
    """A failed request in the block as one clear UserError (`what`: e.g. 'read', 'list the
    checkpoints in'); local files' errors pass through."""

  @abc.abstractmethod
  def writing(self, what: str) -> contextlib.AbstractContextManager[None]:
    """A failed write in the block as one clear UserError naming `what` was written (a full or
    read-only disk, a bucket's refusal)."""

  @abc.abstractmethod
  def waiting(self, what: str) -> contextlib.AbstractContextManager[None]:
    """Marks the block as waiting on this location (`what`: e.g. 'saving the checkpoint at
    step 90 to'), which a bucket that stops answering names in its error."""

  @abc.abstractmethod
  def begin_waiting(self, what: str) -> Any:
    """`waiting` for work that goes on in the background; `end_waiting(token)` ends it."""

  @abc.abstractmethod
  def end_waiting(self, token: Any) -> None: ...


@contextlib.contextmanager
def nothing() -> Iterator[None]:
  yield
