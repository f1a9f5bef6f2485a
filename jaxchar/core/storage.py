"""Where a run's files live: a local path, or a Google Cloud Storage one (`gs://bucket/path`).

The one seam every path the project reads or writes goes through. Local paths are plain
`pathlib.Path`s and behave exactly as before; `gs://` paths are `etils.epath` paths backed by
gcsfs, the file system orbax's own GCS support uses, so checkpoints, records and texts share one
client (which follows STORAGE_EMULATOR_HOST, as tensorstore follows TENSORSTORE_GCS_HTTP_URL).
"""

import contextlib
import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Union

from jaxchar.errors import UserError

GCS_PREFIX = "gs://"
EXTRA = "pip install -e '.[gcs]'"

Location = Union[Path, Any]  # a pathlib.Path, or an epath.Path for gs://


def is_remote(path: Any) -> bool:
  """Whether `path` names an object store location (gs://) rather than a local path."""
  return str(path).startswith(GCS_PREFIX)


def location(path: Any) -> Location:
  """`path` as a path object: pathlib for local paths, epath for gs://."""
  if is_remote(path):
    filesystem()  # the clear error when gcsfs is missing, before anything is tried
    from etils import epath
    return epath.Path(str(path))
  return Path(path)


def absolute(path: Any) -> Location:
  """`path` made absolute (a gs:// path is already)."""
  return location(path) if is_remote(path) else Path(path).resolve()


@functools.cache
def filesystem() -> Any:
  """The gcsfs file system (one per process), and orbax's (through epath), without listings
  caches: a trainer adds and deletes checkpoints while others read them, and every process of
  a run must see the same ones (a cached listing hid a checkpoint from a process that had
  listed its folder while it was being written)."""
  try:
    import fsspec
    import gcsfs
  except ImportError:
    raise UserError(f"gs:// paths need the Cloud Storage client, which is not installed: run "
                    f"`{EXTRA}` (or `.[tpu]`, which includes it), then rerun.") from None
  for protocol in gcsfs.GCSFileSystem.protocol:  # the defaults of every later instance
    defaults = fsspec.config.conf.setdefault(protocol, {})
    defaults["use_listings_cache"] = False
    if os.environ.get("STORAGE_EMULATOR_HOST"):
      # An emulator takes no credentials; looking for them off Google Cloud can wait on the
      # metadata server's backoff (15 s, twice a run, was seen).
      defaults["token"] = "anon"
  return gcsfs.GCSFileSystem()


def key(path: Any) -> str:
  """'bucket/name' of a gs:// path, as gcsfs takes it."""
  return str(path)[len(GCS_PREFIX):].rstrip("/")


def bucket(path: Any) -> str:
  return key(path).split("/", 1)[0]


def _bucket_missing(path: Any) -> bool:
  try:
    return not filesystem().exists(bucket(path))
  except Exception:  # noqa: BLE001 - unknown: say what the request said instead
    return False


def describe_failure(path: Any, error: BaseException) -> str:
  """What a failed storage request on `path` means, in a user's words."""
  text = " ".join(str(error).split())
  if isinstance(error, FileNotFoundError) and _bucket_missing(path):
    return "the bucket does not exist"
  if "Forbidden" in text or "403" in text or "PERMISSION_DENIED" in text:
    return "permission denied"
  if isinstance(error, ConnectionError) or "Cannot connect" in text or "UNAVAILABLE" in text:
    return f"Cloud Storage could not be reached ({text[:160]})"
  return f"{type(error).__name__}: {text[:200]}"


def bucket_error(path: Any, what: str, error: BaseException) -> UserError:
  """The one-paragraph error for a failed request on a gs:// path, with the fix."""
  cause = describe_failure(path, error)
  if cause == "the bucket does not exist":
    fix = (f"create it (`gcloud storage buckets create gs://{bucket(path)} --location=...`) or "
           "correct the path")
  elif cause == "permission denied":
    fix = ("give this machine's account access to the bucket (roles/storage.objectAdmin), or "
           "log in with `gcloud auth application-default login`")
  else:
    fix = "check the network and the bucket"
  error = UserError(f"could not {what} {path}: {cause}. To go on, {fix}, then rerun the same "
                    "command: a training run resumes from its latest checkpoint, which is left "
                    "intact.")
  error.may_strand_threads = True
  return error


@contextlib.contextmanager
def requests_to(path: Any, what: str) -> Iterator[None]:
  """Turns a failed request on a gs:// path inside the block into bucket_error's UserError
  (UserErrors pass through; local paths are untouched)."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001 - gcsfs, aiohttp and google-auth raise many types
    if not is_remote(path):
      raise
    raise bucket_error(path, what, e) from None


def exists(path: Any) -> bool:
  """Whether a file or folder (on GCS: an object, or any object under the prefix) is there."""
  if not is_remote(path):
    return Path(path).exists()
  with requests_to(path, "read"):
    return filesystem().exists(key(path))


def is_dir(path: Any) -> bool:
  if not is_remote(path):
    return Path(path).is_dir()
  with requests_to(path, "read"):
    return filesystem().isdir(key(path))


def names_in(path: Any) -> list[str]:
  """The names of the files and folders directly in `path`; [] if it is not there."""
  if not is_remote(path):
    try:
      return [p.name for p in Path(path).iterdir()]
    except (FileNotFoundError, NotADirectoryError):
      return []
  with requests_to(path, "list"):
    try:
      return [entry.rstrip("/").rsplit("/", 1)[-1]
              for entry in filesystem().ls(key(path), detail=False)]
    except FileNotFoundError:
      return []


def object_info(path: Any) -> dict:
  """Size and generation of one gs:// object (FileNotFoundError if absent)."""
  info = filesystem().info(key(path))
  if info.get("type") != "file":
    raise IsADirectoryError(str(path))
  return {"size": int(info["size"]), "generation": str(info.get("generation", "")),
          "updated": info.get("updated", "")}


def open_binary(path: Any) -> BinaryIO:
  """`path` opened for reading bytes (a gs:// object is streamed in blocks)."""
  if is_remote(path):
    return filesystem().open(key(path), "rb", block_size=1 << 23)
  return open(path, "rb")


def read_text(path: Any) -> str:
  with open_binary(path) as f:
    return f.read().decode("utf-8")


def write_bytes(path: Any, data: bytes) -> None:
  """One object (or file) written whole: a gs:// upload replaces the object atomically."""
  if is_remote(path):
    filesystem().pipe_file(key(path), data)
  else:
    Path(path).write_bytes(data)


def move(source: Any, target: Any) -> None:
  """Moves a file or folder (on GCS: copies every object under it, then deletes them)."""
  if is_remote(source):
    filesystem().mv(key(source), key(target), recursive=True)
  else:
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))


def download(source: Any, target: Path) -> None:
  """A gs:// folder's objects copied into the local folder `target` (made)."""
  fs = filesystem()
  files = fs.find(key(source))
  if not files:
    raise FileNotFoundError(str(source))
  for name in files:
    local = Path(target) / os.path.relpath(name, key(source))
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
      fs.get_file(name, str(local))
    except Exception as e:
      if getattr(e, "status", None) == 404:  # gcsfs's downloads raise aiohttp's own error
        raise FileNotFoundError(f"{GCS_PREFIX}{name} was deleted while it was read") from None
      raise


def upload(source: Path, target: Any) -> None:
  """A local file copied to `target` (a gs:// object) whole."""
  filesystem().put_file(str(source), key(target))


@contextlib.contextmanager
def writing(what: str, path: Any) -> Iterator[None]:
  """A failed write inside the block as one clear UserError: errors.writing's (a full or
  read-only disk) for local paths, bucket_error's for gs:// ones."""
  from jaxchar.errors import writing as writing_locally
  if is_remote(path):
    with requests_to(path, f"write {what} to"):
      yield
  else:
    with writing_locally(what, path):
      yield


def download_file(source: Any, target: Path) -> None:
  """One gs:// object copied to the local file `target`."""
  filesystem().get_file(key(source), str(target))
