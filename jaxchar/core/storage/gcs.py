"""The Cloud Storage clients, set up once per process: gcsfs (the file system orbax reaches
through etils.epath, and jaxchar's own listings, reads and uploads) and tensorstore (orbax's
arrays), both with per-attempt deadlines watched by `deadline`; and what their failures mean.

gcsfs's extended file system (zonal and hierarchical-namespace buckets) asks the Storage
Control gRPC API for each bucket's layout before its operations, and asks again after every
answer it cannot use: against an emulator, or without the permission, every call waits on
retries. jaxchar needs none of what it adds (object reads, writes, listings and deletes work the
same in every bucket type over the JSON API that tensorstore uses too), so it is off unless
GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT is set: gcsfs reads the variable when it is imported, and
fsspec then hands the same class to orbax.
"""

import functools
import math
import os
from typing import Any

from jaxchar.core.storage import deadline
from jaxchar.errors import UserError

PREFIX = "gs://"
EXTRA = "pip install -e '.[gcs]'"
LAYOUT_VARIABLE = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"

os.environ.setdefault(LAYOUT_VARIABLE, "false")  # before anything imports gcsfs


def configure(stall_s: float) -> None:
  """Applies --storage_timeout_s (UserError if it is not a number of seconds, at least 2):
  call before the first bucket request."""
  if not (math.isfinite(stall_s) and stall_s >= 2):
    raise UserError(f"--storage_timeout_s={stall_s:g} must be a number of seconds, at least 2, "
                    "e.g. --storage_timeout_s=120.")
  deadline.WATCH.stall_s = stall_s


@functools.cache
def filesystem() -> Any:
  """The gcsfs file system, shared with orbax (fsspec gives every GCSFileSystem() these
  defaults, and then the same instance). No listings cache: a trainer adds and deletes
  checkpoints while others read them, and every process of a run must see the same ones."""
  try:
    import aiohttp
    import fsspec
    import gcsfs
  except ImportError:
    raise UserError(f"gs:// paths need the Cloud Storage client, which is not installed: run "
                    f"`{EXTRA}` (or `.[tpu]`, which includes it), then rerun.") from None
  attempt_s = attempt_deadline_s()
  # tensorstore reads these once, at its first request: a transfer that moves no byte for
  # attempt_s fails (and is retried), one that progresses never does.
  os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS", str(round(attempt_s)))
  os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES", "1")
  for protocol in gcsfs.GCSFileSystem.protocol:
    defaults = fsspec.config.conf.setdefault(protocol, {})
    defaults["use_listings_cache"] = False
    defaults["requests_timeout"] = aiohttp.ClientTimeout(sock_connect=attempt_s,
                                                         sock_read=attempt_s)
    defaults["session_kwargs"] = {"trace_configs": [deadline.aiohttp_trace()]}
    if emulated():
      # An emulator takes no credentials; looking for them off Google Cloud can wait on the
      # metadata server's backoff (15 s, twice a run, was seen).
      defaults["token"] = "anon"
  deadline.WATCH.start()
  return gcsfs.GCSFileSystem()


def attempt_deadline_s() -> float:
  """How long one attempt of a request may move no byte: half the run's bound."""
  return deadline.WATCH.stall_s / 2


def emulated() -> bool:
  return bool(os.environ.get("STORAGE_EMULATOR_HOST"))


def key(path: Any) -> str:
  """'bucket/name' of a gs:// path, as gcsfs takes it."""
  return str(path)[len(PREFIX):].rstrip("/")


def bucket_name(path: Any) -> str:
  return key(path).split("/", 1)[0]


def _bucket_missing(path: Any) -> bool:
  try:
    return not filesystem().exists(bucket_name(path))
  except Exception:  # noqa: BLE001 - unknown: say what the request said instead
    return False


def describe_failure(path: Any, error: BaseException) -> str:
  """What a failed request on `path` means, in a user's words."""
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
    fix = (f"create it (`gcloud storage buckets create gs://{bucket_name(path)} "
           "--location=...`) or correct the path")
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
