"""--time_budget, all of it: a run that trains for a stated wall time and no longer. Its cosine
learning-rate factor follows the clock instead of a step count; training stops early enough
that the run's end (validation, samples, the checkpoint) still fits; its validation is sized
to what the budget affords. The loop reads the clock and keeps the estimates; this module
decides."""

import dataclasses
import math
import re

from jaxchar.errors import UserError

_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m(?:in)?)?(?:(\d+(?:\.\d*)?)s?)?")
# An epoch end's cost is re-estimated from the last one: kept with this much to spare.
END_MARGIN = 1.25
# Before the first epoch end, samples and the checkpoint are guessed at this many seconds.
FIRST_END_EXTRA_S = 5.0
# A budgeted run validates on as many windows as cost this share of an epoch's training time
# (at least MIN_VAL_WINDOWS, at most --val_windows).
VAL_SHARE = 0.1
MIN_VAL_WINDOWS = 2_000


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


@dataclasses.dataclass(frozen=True)
class Budget:
  """The run's wall-clock budget in seconds of its elapsed training time (over all its
  sessions, compiling, validation and saving included)."""

  seconds: float
  cosine: bool

  def lr_factor(self, elapsed_s: float) -> float:
    """The share of the peak learning rate at `elapsed_s`: cosine decay to 0 at the budget's
    end, or 1 without a cosine schedule."""
    if not self.cosine:
      return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, elapsed_s / self.seconds)))

  def spent(self, elapsed_s: float, end_s: float) -> bool:
    """Whether training must stop now for the run's end (expected to take `end_s`) to fit."""
    return elapsed_s + end_s >= self.seconds

  def left(self, elapsed_s: float) -> float:
    return max(0.0, self.seconds - elapsed_s)


def first_end_s(validation_s: float) -> float:
  """What the first epoch end is expected to cost, when a validation takes `validation_s`."""
  return END_MARGIN * validation_s + FIRST_END_EXTRA_S


def next_end_s(last_end_s: float) -> float:
  """What the next epoch end is expected to cost, after one took `last_end_s`."""
  return END_MARGIN * last_end_s + 1.0


def affordable_windows(seconds: float, window_s: float, available: int) -> int:
  """Validation windows costing VAL_SHARE of `seconds` at `window_s` each (MIN_VAL_WINDOWS at
  least, `available` at most)."""
  affordable = int(VAL_SHARE * seconds / max(window_s, 1e-12))
  return min(available, max(MIN_VAL_WINDOWS, affordable))
