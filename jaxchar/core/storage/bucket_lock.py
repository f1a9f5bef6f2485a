"""One trainer per gs:// workdir: a lock object created only if absent, kept fresh by a
heartbeat.

Object storage has no file locks, and a spot VM that is deleted releases nothing, so the lock
is an object `<workdir>/train.lock` written with `if_generation_match=0` (one writer wins). Its
holder rewrites it every HEARTBEAT_S, each rewrite conditional on its own last generation; a
lock not rewritten for STALE_AFTER_S belongs to a run that is gone (preempted, killed), and the
next trainer takes it over: it deletes that generation only, then creates its own, so of two
runs taking over at once one wins. A lock whose holder was a process of this host that has
ended is stale at once. A holder whose lock was taken over (it was silent for longer than
STALE_AFTER_S) learns it at its next heartbeat and stops at its next save.

The requests go through google-cloud-storage, whose public API states these preconditions;
each has a read deadline and a bounded retry, and tells the storage deadline what it heard.
"""

import datetime
import functools
import os
import re
import socket
import threading
import time
from typing import Any

from jaxchar.core.storage import gcs
from jaxchar.core.storage.deadline import WATCH
from jaxchar.errors import UserError

LOCK_FILE = "train.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0
RELEASE_WAIT_S = 5.0  # a release the network does not let through leaves a lock to go stale


@functools.cache
def _bucket(name: str) -> Any:
  from google.cloud import storage as client_lib
  return client_lib.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT")).bucket(name)


def _call(request, *args, **kwargs) -> Any:
  """`request` with a read deadline and retries within the storage bound; tells the storage
  deadline whether the bucket answered."""
  from google.api_core import exceptions, retry
  import requests
  attempt_s = gcs.attempt_deadline_s()
  try:
    result = request(*args, timeout=(attempt_s, attempt_s),
                     retry=retry.Retry(deadline=2 * attempt_s), **kwargs)
  except (requests.Timeout, requests.ConnectionError):
    WATCH.stalled()
    raise
  except exceptions.NotFound as e:
    WATCH.answered()  # an answer, if a refusal
    raise FileNotFoundError(str(e)) from None
  except exceptions.GoogleAPICallError:
    WATCH.answered()
    raise
  WATCH.answered()
  return result


def _blob(workdir: Any) -> Any:
  bucket, _, prefix = gcs.key(workdir).partition("/")
  return _bucket(bucket).blob(f"{prefix}/{LOCK_FILE}" if prefix else LOCK_FILE)


def _create(workdir: Any, data: bytes, if_generation: int) -> int:
  """Writes the lock only if its generation is `if_generation` (0: only if absent); the new
  generation. FileExistsError when the condition fails."""
  from google.api_core import exceptions
  blob = _blob(workdir)
  try:
    _call(blob.upload_from_string, data, content_type="text/plain",
          if_generation_match=if_generation)
  except exceptions.PreconditionFailed:
    raise FileExistsError(str(workdir)) from None
  return int(blob.generation)


def _delete(workdir: Any, generation: int) -> bool:
  """Deletes the lock only at `generation`; False if it is gone or was rewritten since."""
  from google.api_core import exceptions
  try:
    _call(_blob(workdir).delete, if_generation_match=generation)
  except (exceptions.PreconditionFailed, FileNotFoundError):
    return False
  return True


def _read(workdir: Any) -> tuple[str, int, float] | None:
  """(holder's description, generation, seconds since it was last written), None if absent."""
  from google.api_core import exceptions
  bucket, name = _blob(workdir).bucket, _blob(workdir).name
  blob = _call(bucket.get_blob, name)
  if blob is None:
    return None
  try:
    text = _call(blob.download_as_bytes, if_generation_match=blob.generation)
  except (exceptions.PreconditionFailed, FileNotFoundError):
    return None  # rewritten or released meanwhile
  age = (datetime.datetime.now(datetime.timezone.utc) - blob.updated).total_seconds()
  return (text.decode("utf-8", "replace").strip() or "another process", int(blob.generation),
          max(age, 0.0))


def _holder_gone(text: str) -> bool:
  """Whether the lock's holder was a process of this host that has ended (a run stopped by a
  network failure could not delete its lock): then it is stale at once."""
  found = re.match(r"pid (\d+) on (\S+),", text)
  if not found or found.group(2) != socket.gethostname():
    return False
  try:
    os.kill(int(found.group(1)), 0)
  except ProcessLookupError:
    return True
  except OSError:  # alive, another user's
    return False
  return False


def holder(workdir: Any) -> str | None:
  """Who holds the lock of a gs:// workdir (with when it was last heard of); None if no one
  does, or its holder has been silent past STALE_AFTER_S."""
  with workdir.reading("read the lock of"), workdir.waiting("reading the lock of"):
    found = _read(workdir)
  if found is None or found[2] > STALE_AFTER_S or _holder_gone(found[0]):
    return None
  return f"{found[0]}; last heartbeat {found[2]:.0f} s ago"


class ObjectLock:
  """Exclusive lock on <gs://workdir>/train.lock; raises UserError naming the holder."""

  def __init__(self, workdir: Any, description: str):
    self.workdir = workdir
    self.description = description
    self.generation: int | None = None
    self.took_over: str | None = None  # the stale holder this run replaced, to say so
    self.lost: str | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> "ObjectLock":
    with self.workdir.reading("lock"), self.workdir.waiting("taking the lock of"):
      while self.generation is None:
        try:
          self.generation = _create(self.workdir, self._payload(), 0)
        except FileExistsError:
          self._take_over_if_stale()
    self._thread = threading.Thread(target=self._beat, name="jaxchar-lock", daemon=True)
    self._thread.start()
    return self

  def _payload(self) -> bytes:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"{self.description}; heartbeat {now}\n".encode()

  def _take_over_if_stale(self) -> None:
    found = _read(self.workdir)
    if found is None:
      return  # released meanwhile: try again
    text, generation, age = found
    if text.startswith(self.description + ";"):  # ours: a retried create whose first got in
      self.generation = generation
      return
    if age <= STALE_AFTER_S and not _holder_gone(text):
      raise UserError(
          f"{self.workdir} is in use by another training run ({text}; last heartbeat "
          f"{age:.0f} s ago); two trainers on one --workdir would overwrite each other's "
          "checkpoints and records. Wait for it to finish or stop it (Ctrl-C, or kill -TERM "
          "on its host: it saves a checkpoint), or give this run another --workdir. A run "
          f"whose machine is gone (a preempted VM) is taken over once its lock is "
          f"{STALE_AFTER_S:.0f} s old.")
    if _delete(self.workdir, generation):
      self.took_over = f"{text}; silent for {age:.0f} s"

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        self.generation = _create(self.workdir, self._payload(), self.generation)
      except FileExistsError:
        self.lost = "another trainer took over its lock"
        return
      except Exception:  # noqa: BLE001 - a passing network failure: the next beat retries
        continue

  def check(self) -> None:
    """UserError if another trainer took the lock over: this run must not write on."""
    if self.lost:
      raise UserError(
          f"{self.workdir}: {self.lost} (this run was silent for over {STALE_AFTER_S:.0f} s, "
          "so it looked gone). This run stops without saving, so that the two do not "
          "overwrite each other; the other run goes on from the latest checkpoint.")

  def release(self) -> None:
    self._stop.set()
    deadline = time.monotonic() + RELEASE_WAIT_S  # an unreachable bucket is not waited for
    if self._thread is not None:
      self._thread.join(RELEASE_WAIT_S)
      self._thread = None
    if self.generation is not None and not self.lost:
      deleter = threading.Thread(target=self._delete_quietly, args=(self.generation,),
                                 daemon=True)
      deleter.start()
      deleter.join(max(deadline - time.monotonic(), 0))
    self.generation = None

  def _delete_quietly(self, generation: int) -> None:
    try:
      _delete(self.workdir, generation)
    except Exception:  # noqa: BLE001 - unreachable now: the lock goes stale instead
      pass

  def discard(self) -> None:
    """Releases the lock (an object store has no folders to remove)."""
    self.release()
