"""One trainer per gs:// workdir: a lock object created only if absent, kept fresh by a
heartbeat.

Object storage has no file locks, and a spot VM that is deleted releases nothing, so the lock
is an object `<workdir>/train.lock` written with `ifGenerationMatch=0` (one writer wins). Its
holder rewrites it every HEARTBEAT_S (each rewrite conditional on its own last generation);
a lock not rewritten for STALE_AFTER_S belongs to a run that is gone (preempted, killed), and
the next trainer takes it over: it deletes that generation only, then creates its own, so of
two runs taking over at once one wins. A lock whose holder was a process of this host that has
ended is stale at once. A holder whose lock was taken over (it was silent for
longer than STALE_AFTER_S) learns it at its next heartbeat and stops at its next save.
"""

import datetime
import json
import os
import re
import socket
import threading
import time
from typing import Any
from urllib.parse import quote

from jaxchar.core import storage
from jaxchar.errors import UserError

HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0
RELEASE_WAIT_S = 5.0  # a release the network does not let through leaves a lock to go stale


def _upload(path: str, data: bytes, if_generation: str) -> str:
  """Writes `path` only if its generation is `if_generation` ('0': only if absent); the new
  generation. FileExistsError when the condition fails."""
  fs = storage.filesystem()
  bucket, name = storage.key(path).split("/", 1)
  # A multipart upload, as gcsfs makes its own (the one form emulators check conditions on).
  body = (f'--==0==\nContent-Type: application/json; charset=UTF-8\n\n{json.dumps({"name": name})}'
          "\n--==0==\nContent-Type: text/plain\n\n").encode() + data + b"\n--==0==--"
  resource = fs.call("POST", f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
                     uploadType="multipart", ifGenerationMatch=if_generation, data=body,
                     headers={"Content-Type": 'multipart/related; boundary="==0=="'},
                     json_out=True)
  return str(resource["generation"])


def _delete(path: str, generation: str) -> bool:
  """Deletes `path` only at `generation`; False if it is gone or was rewritten since."""
  fs = storage.filesystem()
  bucket, name = storage.key(path).split("/", 1)
  try:
    fs.call("DELETE", "b/{}/o/{}", bucket, name, ifGenerationMatch=generation)
  except (FileNotFoundError, FileExistsError):
    return False
  return True


def _read(path: str) -> tuple[str, str, float] | None:
  """(holder's description, generation, seconds since it was last written), None if absent."""
  fs = storage.filesystem()
  try:
    info = storage.object_info(path)
    text = fs.cat_file(storage.key(path)).decode("utf-8", "replace").strip()
  except FileNotFoundError:
    return None
  updated = datetime.datetime.fromisoformat(str(info["updated"]).replace("Z", "+00:00"))
  age = (datetime.datetime.now(datetime.timezone.utc) - updated).total_seconds()
  return text or "another process", info["generation"], max(age, 0.0)


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
  with storage.requests_to(workdir, "read the lock of"):
    found = _read(f"{workdir}/train.lock")
  if found is None or found[2] > STALE_AFTER_S or _holder_gone(found[0]):
    return None
  return f"{found[0]}; last heartbeat {found[2]:.0f} s ago"


class ObjectLock:
  """Exclusive lock on <gs://workdir>/train.lock; raises UserError naming the holder."""

  def __init__(self, workdir: Any, description: str):
    self.workdir = str(workdir).rstrip("/")
    self.path = f"{self.workdir}/train.lock"
    self.description = description
    self.generation: str | None = None
    self.took_over: str | None = None  # the stale holder this run replaced, to say so
    self.lost: str | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> "ObjectLock":
    with storage.requests_to(self.workdir, "lock"):
      while self.generation is None:
        try:
          self.generation = _upload(self.path, self._payload(), "0")
        except FileExistsError:
          self._take_over_if_stale()
    self._thread = threading.Thread(target=self._beat, name="jaxchar-lock", daemon=True)
    self._thread.start()
    return self

  def _payload(self) -> bytes:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"{self.description}; heartbeat {now}\n".encode()

  def _take_over_if_stale(self) -> None:
    found = _read(self.path)
    if found is None:
      return  # released meanwhile: try again
    text, generation, age = found
    if age <= STALE_AFTER_S and not _holder_gone(text):
      raise UserError(
          f"{self.workdir} is in use by another training run ({text}; last heartbeat "
          f"{age:.0f} s ago); two trainers on one --workdir would overwrite each other's "
          "checkpoints and records. Wait for it to finish or stop it (Ctrl-C, or kill -TERM "
          "on its host: it saves a checkpoint), or give this run another --workdir. A run "
          f"whose machine is gone (a preempted VM) is taken over once its lock is "
          f"{STALE_AFTER_S:.0f} s old.")
    if _delete(self.path, generation):
      self.took_over = f"{text}; silent for {age:.0f} s"

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        self.generation = _upload(self.path, self._payload(), self.generation)
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
    deadline = time.monotonic() + RELEASE_WAIT_S  # gcsfs retries for about 30 s when the
    if self._thread is not None:                  # bucket is unreachable: not waited for
      self._thread.join(RELEASE_WAIT_S)
      self._thread = None
    if self.generation is not None and not self.lost:
      deleter = threading.Thread(target=self._delete_quietly, args=(self.generation,),
                                 daemon=True)
      deleter.start()
      deleter.join(max(deadline - time.monotonic(), 0))
    self.generation = None

  def _delete_quietly(self, generation: str) -> None:
    try:
      _delete(self.path, generation)
    except Exception:  # noqa: BLE001 - unreachable now: the lock goes stale instead
      pass

  def discard(self) -> None:
    """Releases the lock (an object store has no folders to remove)."""
    self.release()

  def __enter__(self) -> "ObjectLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
