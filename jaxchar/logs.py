"""What the entry points print: their own lines, not the libraries' INFO logs or noise."""

import logging
import sys

from absl import flags
from absl import logging as absl_logging


def quiet_library_logs() -> None:
  """Shows third-party logs (orbax, jax, absl) from WARNING up, unless --verbosity was given.

  absl's app.run turns INFO on for every library (orbax writes about 45 INFO lines per
  checkpoint save); `--verbosity=0` (INFO) or `--verbosity=1` (DEBUG) bring them back.
  """
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
    absl_logging.get_absl_handler().addFilter(_without_traceback)
    # gcsfs logs each retry and its give-up with a traceback, and notes on every bucket that it
    # is not zonal; jaxchar reports a failed request itself, as one paragraph.
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
  _hide_closed_event_loop_errors()


def _without_traceback(record: logging.LogRecord) -> bool:
  """Keeps a library's warning or error to its one line: the failure it reports reaches
  jaxchar too, which then explains it (e.g. orbax's traceback for a full disk)."""
  record.exc_info, record.exc_text = None, None
  return True


def _hide_closed_event_loop_errors() -> None:
  """Drops 'Event loop is closed' errors that tensorstore's callbacks raise after orbax gave up
  on a damaged checkpoint (a traceback each, printed after the error was already handled).
  Installed once per process, however often an entry point runs in it (tests)."""
  if getattr(sys.unraisablehook, "hides_closed_event_loop", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable) -> None:
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    previous(unraisable)

  hook.hides_closed_event_loop = True
  sys.unraisablehook = hook
