"""SIGTERM/SIGINT during training: finish the step, save, exit; never a half-written checkpoint."""

import signal
import sys
import types

from jaxchar.core import storage


class StopRequests:
  """Records SIGTERM/SIGINT instead of dying mid-step; the loop polls `requested` each step."""

  def __init__(self):
    self.signal_name: str | None = None
    self.finishing = False  # training is done; the last checkpoint is being completed
    self._previous = {}

  def __enter__(self) -> "StopRequests":
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  @property
  def exit_code(self) -> int:
    """128 + the signal number, as a shell reports a signal; SIGTERM's when another process
    of a multi-process run received it."""
    return 128 + signal.Signals[self.signal_name or "SIGTERM"].value

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    name = signal.Signals(signum).name
    if self.requested:  # a second Ctrl-C while saving: keep saving, say so
      print(f"\n{name} again: still saving the checkpoint, please wait.", file=sys.stderr,
            flush=True)
      return
    self.signal_name = name
    storage.stopping(name)  # a bucket request pending now is not waited on for long
    doing = ("the run's training steps are done; it ends its last epoch, saves its last "
             "checkpoint and exits." if self.finishing else
             "saving a checkpoint at the end of this step, then exiting.")
    print(f"\n{name} received: {doing}", file=sys.stderr, flush=True)
