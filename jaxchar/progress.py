"""Per-epoch progress: a tqdm bar on a terminal, plain periodic lines otherwise (logs, CI)."""

import sys
import time
from typing import TextIO

from tqdm import tqdm

PLAIN_EVERY_SECONDS = 30.0


class EpochProgress:
  """Shows steps done, running loss, windows/s and ETA for one epoch on `stream` (stderr)."""

  def __init__(self, epoch: int, epochs: int, total_steps: int, batch_size: int,
               stream: TextIO | None = None, interactive: bool | None = None,
               first_step: int = 0, enabled: bool = True):
    self.stream = stream or sys.stderr
    self.interactive = self.stream.isatty() if interactive is None else interactive
    self.desc = f"epoch {epoch}/{epochs}"
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.first_step = first_step  # steps already done before this run (a resumed epoch)
    self.start = time.perf_counter()
    self.last_line = self.start
    self.enabled = enabled  # False on processes other than 0
    self.bar = (tqdm(total=total_steps, initial=first_step, desc=self.desc, unit="step",
                     file=self.stream, dynamic_ncols=True, leave=False)
                if self.interactive and enabled else None)

  def update(self, steps_done: int, running_loss: float) -> None:
    """`steps_done` counts from the start of the epoch."""
    now = time.perf_counter()
    rate = (steps_done - self.first_step) * self.batch_size / max(now - self.start, 1e-9)
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{running_loss:.4f}", seq_s=f"{rate:,.0f}", refresh=False)
      self.bar.update(steps_done - self.bar.n)
    elif self.enabled and (now - self.last_line >= PLAIN_EVERY_SECONDS
                          or steps_done == self.total_steps):
      self.last_line = now
      eta = (self.total_steps - steps_done) * self.batch_size / max(rate, 1e-9)
      print(f"{self.desc} step {steps_done}/{self.total_steps} | loss {running_loss:.4f} | "
            f"{rate:,.0f} seq/s | eta {eta:.0f} s", file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()

  def __enter__(self) -> "EpochProgress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class ValidationProgress:
  """Validation batches done: a tqdm bar on a terminal, a plain line every 30 s otherwise."""

  def __init__(self, total_batches: int, windows: int, stream: TextIO | None = None,
               interactive: bool | None = None, enabled: bool = True):
    self.stream = stream or sys.stderr
    self.interactive = self.stream.isatty() if interactive is None else interactive
    self.total_batches = total_batches
    self.windows = windows
    self.enabled = enabled
    self.start = self.last_line = time.perf_counter()
    self.bar = (tqdm(total=total_batches, desc=f"validating {windows:,} windows", unit="batch",
                     file=self.stream, dynamic_ncols=True, leave=False)
                if self.interactive and enabled else None)

  def update(self, batches_done: int) -> None:
    now = time.perf_counter()
    if self.bar is not None:
      self.bar.update(batches_done - self.bar.n)
    elif self.enabled and now - self.last_line >= PLAIN_EVERY_SECONDS:
      self.last_line = now
      eta = (self.total_batches - batches_done) * (now - self.start) / max(batches_done, 1)
      print(f"validating: batch {batches_done}/{self.total_batches} of {self.windows:,} windows "
            f"| eta {eta:.0f} s", file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()

  def __enter__(self) -> "ValidationProgress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
