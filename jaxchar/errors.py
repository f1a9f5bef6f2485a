"""User-facing errors: one clear paragraph, a non-zero exit, no traceback."""

import contextlib
import errno
import functools
import os
import re
import sys
import textwrap
import threading
import time
from typing import Callable, NoReturn

from jaxchar.core.terminal import shown

EXIT_USER_ERROR = 2


class UserError(Exception):
  """A problem with the user's input or environment; the message says what and how to fix it."""

  # Set for a failed bucket request: orbax's background threads of a save it broke can wait
  # forever for signals that will not come, and would keep the process from exiting.
  may_strand_threads = False


STRANDED_WAIT_S = 5.0


def paragraph(message: str) -> str:
  """`message` as the one wrapped `error:` paragraph every error is shown as."""
  text = " ".join(shown(message).split())  # a file name or text may hold escapes
  # "error: " as the indent, not a word: a first word longer than the line (a long path) then
  # stays beside it instead of leaving "error:" alone on the first line.
  return textwrap.fill(text, width=100, initial_indent="error: ", break_long_words=False,
                       break_on_hyphens=False)


def fail(message: str) -> NoReturn:
  """Prints `message` as one wrapped paragraph on stderr and exits with EXIT_USER_ERROR."""
  print(paragraph(message), file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def exits_on_user_error(main: Callable[..., None]) -> Callable[..., None]:
  """Wraps an entry point so that a UserError becomes a clean exit instead of a traceback."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except UserError as e:
      if e.may_strand_threads:
        _exit_past_stranded_threads(str(e))
      fail(str(e))

  return wrapped


def _exit_past_stranded_threads(message: str) -> None:
  """Gives other non-daemon threads STRANDED_WAIT_S to end; if one does not, prints the error
  and leaves without waiting for it (exit code EXIT_USER_ERROR)."""
  deadline = time.monotonic() + STRANDED_WAIT_S
  for thread in threading.enumerate():
    if thread is not threading.main_thread() and not thread.daemon:
      try:
        thread.join(max(deadline - time.monotonic(), 0))
      except BaseException:  # noqa: BLE001 - orbax's threads re-raise their failure on join
        pass
  if any(t.is_alive() and not t.daemon and t is not threading.main_thread()
         for t in threading.enumerate()):
    try:
      fail(message)
    except SystemExit:
      sys.stdout.flush()
      os._exit(EXIT_USER_ERROR)


def os_error_in(error: BaseException) -> OSError | None:
  """The OSError behind `error`: itself, one it was raised from, or one that tensorstore (under
  orbax) reports inside a ValueError as `... No space left on device [os_error_code='28']`."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, OSError):
      return error
    if code := re.search(r"os_error_code='(\d+)'", str(error)):
      return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def write_failed(what: str, path, error: OSError) -> UserError:
  """The error for a failed write: what could not be written, why, and what to free or change."""
  if error.errno in (errno.ENOSPC, errno.EDQUOT):
    fix = f"free space on the disk that holds {path} (see `df -h {path}`)"
  elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    fix = f"make {path} writable (it is read-only or not yours), or use another --workdir"
  else:
    fix = "check that disk and folder, or use another --workdir"
  return UserError(
      f"could not write {what} to {path} ({error.strerror or error}). To go on, {fix}, then "
      "rerun the same command; a training run resumes from its latest checkpoint saved before "
      "this failure, which is left intact.")


@contextlib.contextmanager
def writing(what: str, path):
  """Turns a failed write inside the block (an OSError, possibly wrapped, as orbax's background
  saves re-raise them) into write_failed's UserError; other errors pass through."""
  try:
    yield
  except Exception as e:
    if (os_error := os_error_in(e)) is None:
      raise
    raise write_failed(what, path, os_error) from None
