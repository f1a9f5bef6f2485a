"""Paths in a Cloud Storage bucket (gs://bucket/name): gcsfs requests, each marked as waiting
on the bucket (a bucket that stops answering ends the run within --storage_timeout_s), and
their failures as one clear error."""

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from jaxchar.core.storage import gcs
from jaxchar.core.storage.deadline import WATCH
from jaxchar.core.storage.gcs import PREFIX, filesystem, key
from jaxchar.core.storage.location import FileInfo, Location, Mirror
from jaxchar.errors import UserError

_GERUNDS = {"read": "reading", "list": "listing"}
BLOCK_BYTES = 1 << 23  # a streamed object is read in blocks of this size
# Beside ckpt/'s local runs: the local folders of a run in a bucket (its text's id cache).
LOCAL_HOME = Path("ckpt")


class BucketPath(Location):
  """An object or prefix (a "folder") in a bucket."""

  def __init__(self, url: str):
    super().__init__(url.rstrip("/") if url.rstrip("/") != PREFIX.rstrip("/") else url)
    filesystem()  # the clear error when gcsfs is missing, before anything is tried

  def __truediv__(self, name: str) -> "BucketPath":
    return BucketPath(f"{self}/{name}")

  @property
  def name(self) -> str:
    return key(self).rsplit("/", 1)[-1]

  @property
  def key(self) -> str:
    return key(self)

  def absolute(self) -> "BucketPath":
    return self

  def _request(self, verb: str, call, *args, **kwargs) -> Any:
    with self.reading(verb), self.waiting(_GERUNDS[verb]):
      return call(*args, **kwargs)

  def exists(self) -> bool:
    return self._request("read", filesystem().exists, self.key)

  def is_dir(self) -> bool:
    return self._request("read", filesystem().isdir, self.key)

  def names(self) -> list[str]:
    def listing() -> list[str]:
      try:
        return [entry.rstrip("/").rsplit("/", 1)[-1]
                for entry in filesystem().ls(self.key, detail=False)]
      except FileNotFoundError:
        return []
    return self._request("list", listing)

  def info(self) -> FileInfo:
    found = self._object_info()
    return FileInfo(int(found["size"]), str(found.get("generation", "")))

  def _object_info(self) -> dict:
    with self.waiting("reading"):
      found = filesystem().info(self.key)
    if found.get("type") != "file":
      raise IsADirectoryError(str(self))
    return found

  def updated_s_ago(self) -> float:
    """Seconds since this object was last written (by the bucket's clock)."""
    import datetime
    updated = str(self._object_info().get("updated", "")).replace("Z", "+00:00")
    now = datetime.datetime.now(datetime.timezone.utc)
    return max((now - datetime.datetime.fromisoformat(updated)).total_seconds(), 0.0)

  def fingerprint(self) -> dict:
    found = self.info()
    return {"path": str(self), "size": found.size, "generation": found.version}

  def open_binary(self) -> BinaryIO:
    return _Watched(filesystem().open(self.key, "rb", block_size=BLOCK_BYTES), self)

  def read_bytes(self) -> bytes:
    return self._request("read", filesystem().cat_file, self.key)

  def files_under(self) -> list["BucketPath"]:
    prefix = self.key + "/"
    names = self._request("list", filesystem().find, prefix)
    return [BucketPath(PREFIX + n) for n in sorted(names) if not any(
        part.startswith(".") for part in n[len(prefix):].split("/"))]

  def glob(self) -> list["BucketPath"]:
    fs = filesystem()
    with self.reading("list"), self.waiting("listing"):
      names = sorted(n for n in fs.glob(self.key) if fs.isfile(n))
    return [BucketPath(PREFIX + n) for n in names]

  def is_file(self) -> bool:
    return self._request("read", filesystem().isfile, self.key)

  def write_bytes(self, data: bytes) -> None:
    with self.waiting("writing"):  # one upload replaces the object whole
      filesystem().pipe_file(self.key, data)

  def upload(self, source: Path) -> None:
    with self.waiting("writing"):
      filesystem().put_file(str(source), self.key)

  def download(self, target: Path) -> None:
    with self.waiting("reading"):
      filesystem().get_file(self.key, str(target))

  def move_to(self, target: Location) -> None:
    with self.waiting("moving"):  # every object under it copied, then deleted
      filesystem().mv(self.key, key(target), recursive=True)

  def lock(self, description: str):
    from jaxchar.core.storage.bucket_lock import ObjectLock
    return ObjectLock(self, description)

  def lock_holder(self) -> str | None:
    from jaxchar.core.storage.bucket_lock import holder
    return holder(self)

  def pinned(self, into: Path, names: tuple[str, ...]) -> Location:
    from jaxchar.core.storage.local import LocalPath
    target = Path(into) / self.name
    with self.waiting("reading"):
      for name in names:
        try:
          filesystem().get(f"{self.key}/{name}/", str(target / name) + "/", recursive=True)
        except Exception as e:  # noqa: BLE001 - gcsfs's downloads raise aiohttp's own 404
          if not (isinstance(e, FileNotFoundError) or getattr(e, "status", None) == 404):
            raise
          shutil.rmtree(target / name, ignore_errors=True)  # absent, or deleted as it was read
    return LocalPath(target)

  def mirror(self) -> "BucketMirror":
    return BucketMirror(self)

  def local_sibling(self, name: str) -> Path:
    return (LOCAL_HOME / name).absolute()

  @contextlib.contextmanager
  def reading(self, what: str) -> Iterator[None]:
    try:
      yield
    except UserError:
      raise
    except Exception as e:  # noqa: BLE001 - gcsfs, aiohttp and google-auth raise many types
      raise gcs.bucket_error(self, what, e) from None

  @contextlib.contextmanager
  def writing(self, what: str) -> Iterator[None]:
    with self.reading(f"write {what} to"):
      yield

  @contextlib.contextmanager
  def waiting(self, what: str) -> Iterator[None]:
    token = WATCH.begin(what, str(self))
    try:
      yield
    finally:
      WATCH.end(token)

  def begin_waiting(self, what: str) -> Any:
    return WATCH.begin(what, str(self))

  def end_waiting(self, token: Any) -> None:
    WATCH.end(token)


class _Watched:
  """A gcsfs file whose reads are marked as waiting on the bucket."""

  def __init__(self, file: Any, path: BucketPath):
    self._file, self._path = file, path

  def read(self, size: int = -1) -> bytes:
    with self._path.waiting("reading"):
      return self._file.read(size)

  def __enter__(self) -> "_Watched":
    return self

  def __exit__(self, *exc) -> None:
    self._file.close()

  def close(self) -> None:
    self._file.close()


class BucketMirror(Mirror):
  """A bucket run's records, written into a private local folder: each changed file is
  uploaded whole (one object write, never a partial line) when published."""

  def __init__(self, location: BucketPath):
    self.location = location
    self.folder = Path(tempfile.mkdtemp(prefix="jaxchar-records-"))
    self._uploaded: dict[Path, tuple[int, int]] = {}

  def fetch(self, name: str) -> None:
    source = self.location / name
    if source.exists():
      source.download(self.folder / name)

  def publish(self) -> None:
    for path in sorted(p for p in self.folder.rglob("*")
                       if p.is_file() and not p.name.startswith(".")):  # no temporary file
      stat = path.stat()
      if self._uploaded.get(path) != (stat.st_size, stat.st_mtime_ns):
        (self.location / path.relative_to(self.folder).as_posix()).upload(path)
        self._uploaded[path] = (stat.st_size, stat.st_mtime_ns)

  def discard(self) -> None:
    shutil.rmtree(self.folder, ignore_errors=True)

