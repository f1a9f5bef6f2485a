"""Progress of an epoch and of validation: a tqdm bar on a terminal, plain periodic lines
otherwise (logs, CI)."""

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

PLAIN_EVERY_SECONDS = 30.0


class _Progress:
  """A tqdm bar on an interactive `stream` (stderr), else plain lines at most every
  PLAIN_EVERY_SECONDS; nothing at all when not `enabled` (processes other than 0)."""

  def __init__(self, total: int, desc: str, unit: str, stream: TextIO | None,
               interactive: bool | None, enabled: bool, initial: int = 0):
    self.stream = stream or sys.stderr
    self.interactive = self.stream.isatty() if interactive is None else interactive
    self.total = total
    self.enabled = enabled
    self.start = self.last_line = time.perf_counter()
    self.bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                     dynamic_ncols=True, leave=False)
                if self.interactive and enabled else None)

  def _line_due(self, now: float, done: int) -> bool:
    """Whether a plain line is due (rate-limited; the last one always prints)."""
    if self.bar is not None or not self.enabled:
      return False
    if now - self.last_line >= PLAIN_EVERY_SECONDS or done == self.total:
      self.last_line = now
      return True
    return False

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def duration(seconds: float) -> str:
  """'44 s', '12 min', '1 h 05 min'."""
  if seconds < 100:
    return f"{seconds:.0f} s"
  if seconds < 3600:
    return f"{seconds / 60:.0f} min"
  return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class EpochProgress(_Progress):
  """Shows steps done, running loss, windows/s, the epoch's ETA (tqdm's) and the whole run's,
  which `run_eta(steps_done, seconds)` gives (None: not known yet), on `stream` (stderr)."""

  def __init__(self, desc: str, total_steps: int, batch_size: int,
               run_eta: Callable[[int, float], float | None], first_step: int = 0,
               enabled: bool = True, stream: TextIO | None = None,
               interactive: bool | None = None):
    self.desc, self.batch_size, self.run_eta = desc, batch_size, run_eta
    self.first_step = first_step  # steps already done before this run (a resumed epoch)
    super().__init__(total_steps, desc, "step", stream, interactive, enabled, first_step)

  def update(self, steps_done: int, running_loss: float) -> None:
    """`steps_done` counts from the start of the epoch."""
    now = time.perf_counter()
    rate = (steps_done - self.first_step) * self.batch_size / max(now - self.start, 1e-9)
    left = self.run_eta(steps_done, now - self.start)
    run_left = duration(left) if left is not None else "?"
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{running_loss:.4f}", seq_s=f"{rate:,.0f}", run_eta=run_left,
                           refresh=False)
      self.bar.update(steps_done - self.bar.n)
    elif self._line_due(now, steps_done):
      eta = (self.total - steps_done) * self.batch_size / max(rate, 1e-9)
      print(f"{self.desc} step {steps_done}/{self.total} | loss {running_loss:.4f} | "
            f"{rate:,.0f} seq/s | eta {duration(eta)} (epoch), {run_left} (run)",
            file=self.stream, flush=True)


class ValidationProgress(_Progress):
  """Validation batches done, with an ETA; `label` and `noun` name the work (scoring too)."""

  def __init__(self, total_batches: int, windows: int, stream: TextIO | None = None,
               interactive: bool | None = None, enabled: bool = True,
               label: str = "validating", noun: str = "windows"):
    self.windows = windows
    self.label, self.noun = label, noun
    super().__init__(total_batches, f"{label} {windows:,} {noun}", "batch", stream,
                     interactive, enabled)

  def update(self, batches_done: int) -> None:
    now = time.perf_counter()
    if self.bar is not None:
      self.bar.update(batches_done - self.bar.n)
    elif self._line_due(now, batches_done) and batches_done < self.total:
      eta = (self.total - batches_done) * (now - self.start) / max(batches_done, 1)
      print(f"{self.label}: batch {batches_done}/{self.total} of {self.windows:,} {self.noun} "
            f"| eta {eta:.0f} s", file=self.stream, flush=True)
