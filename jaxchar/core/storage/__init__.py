"""Where a run's files live: a local folder, or a Cloud Storage one (`gs://bucket/path`).

The one seam every path the project reads or writes goes through: `location(path)` gives a
`Location`, whose methods do the right thing for either (pathlib, atomic renames, hard-link
snapshots and fcntl locks on a disk; gcsfs requests under a deadline, generation-checked lock
objects and whole-object uploads in a bucket). Nothing outside this package asks which.
"""

import datetime
import os
import socket
from pathlib import Path
from typing import Any

from jaxchar.core.storage.deadline import STALL_S, WATCH
from jaxchar.core.storage.gcs import PREFIX, configure
from jaxchar.core.storage.location import FileInfo, Location, Lock, Mirror

__all__ = ["STALL_S", "FileInfo", "Location", "Lock", "Mirror", "configure", "holder_description",
           "location", "stopping"]


def _is_remote(path: Any) -> bool:
  return str(path).startswith(PREFIX)


def location(path: Any) -> Location:
  """`path` (a str, a pathlib.Path or a Location) as a Location."""
  if isinstance(path, Location):
    return path
  if _is_remote(path):
    from jaxchar.core.storage.bucket import BucketPath
    return BucketPath(str(path))
  from jaxchar.core.storage.local import LocalPath
  return LocalPath(Path(path))


def is_local(path: Any) -> bool:
  """Whether `path` names a folder on this machine (an option that must be one checks it)."""
  return not _is_remote(path)


def stopping(signal_name: str) -> None:
  """SIGTERM or Ctrl-C came: a bucket request pending from now on is waited for briefly."""
  WATCH.stopping(signal_name)


def holder_description(command: str) -> str:
  """Who takes a lock: this process, its host, when, and `command` (what it runs)."""
  started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  return f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}"
