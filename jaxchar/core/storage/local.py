"""Paths on this machine's disks: pathlib, atomic renames, hard-link snapshots and an OS lock."""

import contextlib
import fcntl
import glob
import hashlib
import re
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from jaxchar.core import atomic
from jaxchar.core.storage.location import FileInfo, Location, Mirror, nothing
from jaxchar.errors import UserError, writing

LOCK_FILE = "train.lock"
# Blocks read to fingerprint a file (all of a smaller one): 128 KB at most, so checking the files
# of a folder of many stays quick.
_SAMPLES, _SAMPLE_BYTES = 32, 1 << 12


def sampled_digest(path: Path, size: int) -> str:
  """A hash of the file's size and of _SAMPLES evenly spread blocks (all of a small file)."""
  digest = hashlib.blake2b(str(size).encode(), digest_size=16)
  with open(path, "rb") as f:
    if size <= _SAMPLES * _SAMPLE_BYTES:
      digest.update(f.read())
    else:
      for offset in np.linspace(0, size - _SAMPLE_BYTES, _SAMPLES).astype(np.int64).tolist():
        f.seek(offset)
        digest.update(f.read(_SAMPLE_BYTES))
  return digest.hexdigest()


class LocalPath(Location):
  """A file or folder on a local (or mounted) disk."""

  def __init__(self, path: str | Path):
    super().__init__(str(path))
    self.path = Path(path)

  def __truediv__(self, name: str) -> "LocalPath":
    return LocalPath(self.path / name)

  def __fspath__(self) -> str:
    return str(self.path)

  @property
  def name(self) -> str:
    return self.path.name

  def absolute(self) -> "LocalPath":
    return LocalPath(self.path.resolve())

  def exists(self) -> bool:
    return self.path.exists()

  def is_dir(self) -> bool:
    return self.path.is_dir()

  def names(self) -> list[str]:
    try:
      return [p.name for p in self.path.iterdir()]
    except (FileNotFoundError, NotADirectoryError):
      return []

  def info(self) -> FileInfo:
    if self.path.is_dir():
      raise IsADirectoryError(str(self.path))
    stat = self.path.stat()
    return FileInfo(stat.st_size, str(stat.st_mtime_ns))

  def fingerprint(self) -> dict:
    stat = self.path.stat()
    return {"path": str(self.path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sample": sampled_digest(self.path, stat.st_size)}

  def open_binary(self) -> BinaryIO:
    return open(self.path, "rb")

  def files_under(self) -> list["LocalPath"]:
    files = sorted((p for p in self.path.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(self.path).parts)),
                   key=lambda p: p.relative_to(self.path).as_posix())
    return [LocalPath(p.resolve()) for p in files]

  def glob(self) -> list["LocalPath"]:
    matches = sorted(Path(p) for p in glob.glob(str(self.path), recursive=True)
                     if Path(p).is_file())
    return [LocalPath(p.resolve()) for p in matches]

  def write_bytes(self, data: bytes) -> None:
    atomic.write_bytes(self.path, data)

  def move_to(self, target: Location) -> None:
    destination = Path(target)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(self.path), str(destination))

  def lock(self, description: str) -> "FileLock":
    return FileLock(self.path, description)

  def lock_holder(self) -> str | None:
    try:
      file = open(self.path / LOCK_FILE, encoding="utf-8")
    except OSError:
      return None
    with file:
      try:
        fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
      except BlockingIOError:
        return file.read().strip() or "another process"
      fcntl.flock(file, fcntl.LOCK_UN)
    return None

  def pinned(self, into: Path, names: tuple[str, ...]) -> "LocalPath":
    target = Path(into) / self.path.name
    try:
      for name in names:
        if (self.path / name).is_dir():
          shutil.copytree(self.path / name, target / name, copy_function=_link_or_copy)
    except shutil.Error as e:  # some files vanished midway: the folder is being deleted
      raise FileNotFoundError(f"{self.path} changed while it was read ({str(e)[:200]})") from None
    return LocalPath(target)

  def mirror(self) -> "LocalMirror":
    return LocalMirror(self.path)

  def local_sibling(self, name: str) -> Path:
    return self.path.absolute().parent / name

  def reading(self, what: str) -> contextlib.AbstractContextManager[None]:
    return nothing()

  def writing(self, what: str) -> contextlib.AbstractContextManager[None]:
    return writing(what, self.path)

  def waiting(self, what: str) -> contextlib.AbstractContextManager[None]:
    return nothing()

  def begin_waiting(self, what: str) -> Any:
    return None

  def end_waiting(self, token: Any) -> None:
    pass


def _link_or_copy(source: str, target: str) -> None:
  try:
    Path(target).hardlink_to(source)
  except OSError:  # another file system, or links not allowed: a copy
    shutil.copy2(source, target)


class LocalMirror(Mirror):
  """A local run's records are written in its own folder: nothing to fetch or publish."""

  def __init__(self, folder: Path):
    self.folder = folder

  def fetch(self, name: str) -> None:
    pass

  def publish(self) -> None:
    pass

  def discard(self) -> None:
    pass


class FileLock:
  """Exclusive `fcntl.flock` on <workdir>/train.lock, held for the whole run: the OS releases
  it when the process ends in any way (kill -9 included), so a dead run's file never blocks
  the next one. Raises UserError naming the holder when taken."""

  def __init__(self, workdir: Path, description: str):
    self.path = Path(workdir) / LOCK_FILE
    self.description = description
    self.took_over = None  # an OS lock is never left behind to take over
    self._file = None
    self._created: list[Path] = []  # the lock file and folders acquire() made, newest first

  def acquire(self) -> "FileLock":
    self._created = [p for p in [self.path, *self.path.parents] if not p.exists()]
    with writing("the run's lock file", self.path.parent):
      self.path.parent.mkdir(parents=True, exist_ok=True)
      # Opened without truncating: the holder's description must survive a refused attempt.
      file = open(self.path, "a+", encoding="utf-8")
    try:
      fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      file.seek(0)
      holder = file.read().strip() or "another process"
      file.close()
      pid = re.match(r"pid (\d+)", holder)
      stop = f"kill -TERM {pid.group(1)}" if pid else "kill -TERM with its pid"
      raise UserError(
          f"{self.path.parent} is in use by another training run ({holder}); two trainers on "
          "one --workdir would overwrite each other's checkpoints and records. Wait for it to "
          f"finish or stop it (Ctrl-C in its terminal, or `{stop}`: it saves a checkpoint), or "
          "give this run another --workdir.") from None
    file.seek(0)
    file.truncate()
    file.write(self.description + "\n")
    file.flush()
    self._file = file
    return self

  def discard(self) -> None:
    """Releases the lock and removes what acquiring it created (the lock file, folders still
    empty): a run that stopped on bad input before writing leaves nothing behind."""
    self.release()
    for path in self._created:
      try:
        path.unlink() if path == self.path else path.rmdir()
      except OSError:
        break  # written to since (not empty): kept, and so are the folders above it
    self._created = []

  def check(self) -> None:
    """Nothing to check: the OS keeps a file lock for as long as the process lives."""

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
