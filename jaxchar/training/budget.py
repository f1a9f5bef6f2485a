"""--time_budget: a run that trains for a stated wall time and no longer. Its cosine schedule
follows the clock instead of a step count, and training stops early enough that the run's end
(validation, samples, the checkpoint) still fits in the budget."""

import math
import re

from jaxchar.errors import UserError

_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m(?:in)?)?(?:(\d+(?:\.\d*)?)s?)?")
# An epoch end's cost is re-estimated from the last one: kept with this much to spare.
END_MARGIN = 1.25
# Before the first epoch end, samples and the checkpoint are guessed at this many seconds.
FIRST_END_EXTRA_S = 5.0


def parse_duration(text: str) -> float | None:
  """Seconds of '10m', '90s', '1h30m', '2.5m', '45' (seconds); None for ''. UserError if bad."""
  text = text.strip().lower().replace(" ", "")
  if not text:
    return None
  match = _DURATION.fullmatch(text)
  if not match or not any(match.groups()):
    raise UserError(f"--time_budget={text} is not a duration; write it as 10m, 90s, 1h30m or "
                    "2.5m (hours h, minutes m, seconds s; a bare number is seconds).")
  hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
  total = hours * 3600 + minutes * 60 + seconds
  if total <= 0:
    raise UserError(f"--time_budget={text} must be longer than 0, e.g. --time_budget=10m.")
  return total


def describe(seconds: float) -> str:
  """'10m', '2m30s', '90s' -> a budget as the user would write it."""
  minutes, secs = divmod(round(seconds), 60)
  if not minutes:
    return f"{secs}s"
  return f"{minutes}m{secs}s" if secs else f"{minutes}m"


class Budget:
  """The run's wall-clock budget in seconds of `elapsed_s` (the run's training time over all
  its sessions, compiling, validation and saving included)."""

  def __init__(self, seconds: float, cosine: bool):
    self.seconds, self.cosine = seconds, cosine
    self.end_s = FIRST_END_EXTRA_S  # what one epoch end is expected to cost
    self.window_s = 0.0  # seconds to validate one window, once timed
    self.clock_s = 0.0  # the elapsed time training last read (the same in every process)

  def lr_factor(self, elapsed_s: float) -> float:
    """The share of the peak learning rate at `elapsed_s`: cosine decay to 0 at the budget's
    end, or 1 without a cosine schedule."""
    if not self.cosine:
      return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, elapsed_s / self.seconds)))

  def expect_end(self, validation_s: float) -> None:
    """Before the first epoch end: a validation is expected to take `validation_s`."""
    self.end_s = END_MARGIN * validation_s + FIRST_END_EXTRA_S

  def ended_epoch(self, seconds: float) -> None:
    """An epoch end (validation, samples, checkpoint) took `seconds`."""
    self.end_s = END_MARGIN * seconds + 1.0

  def spent(self, elapsed_s: float) -> bool:
    """Whether training must stop now for the run's end to fit in the budget."""
    return elapsed_s + self.end_s >= self.seconds

  def left(self, elapsed_s: float) -> float:
    return max(0.0, self.seconds - elapsed_s)
