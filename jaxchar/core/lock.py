"""One trainer per workdir: an OS file lock held for the whole run, which the sampler also
reads to tell a folder whose trainer has not saved yet from one nobody trains in.

`fcntl.flock` locks belong to the open file, so the OS releases them when the process ends in
any way (kill -9 included): a lock file left by a dead run never blocks the next one.
"""

import datetime
import fcntl
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from jaxchar.core import object_lock, storage
from jaxchar.errors import UserError, writing

LOCK_FILE = "train.lock"


def description() -> str:
  """Who takes a lock: this process, its host, when and with which command."""
  started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  return (f"pid {os.getpid()} on {socket.gethostname()}, started {started}: "
          f"python -m jaxchar.train {' '.join(sys.argv[1:])}")


def for_workdir(workdir: Any) -> "WorkdirLock | object_lock.ObjectLock":
  """The lock of a run's folder: an OS file lock locally, a lock object on gs://."""
  if storage.is_remote(workdir):
    return object_lock.ObjectLock(workdir, description())
  return WorkdirLock(workdir)


class WorkdirLock:
  """Exclusive lock on <workdir>/train.lock; raises UserError naming the holder when taken."""

  def __init__(self, workdir: Path):
    self.path = Path(workdir) / LOCK_FILE
    self._file = None
    self._created: list[Path] = []  # the lock file and folders acquire() made, newest first

  def acquire(self) -> "WorkdirLock":
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
    file.write(description() + "\n")
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

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def holder(workdir: Any) -> str | None:
  """Who holds <workdir>/train.lock now (the trainer's pid, host, start and command), None when
  no one does. Writes nothing: the file is opened for reading and a shared lock tried and
  released at once."""
  if storage.is_remote(workdir):
    return object_lock.holder(workdir)
  try:
    file = open(Path(workdir) / LOCK_FILE, encoding="utf-8")
  except OSError:
    return None
  with file:
    try:
      fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return file.read().strip() or "another process"
    fcntl.flock(file, fcntl.LOCK_UN)
  return None
