"""The sampling controls, checked in one place for every caller: `jaxchar.sample`'s flags, the
trainer's per-epoch samples and the server's request fields share these checks and messages,
each naming a control as its caller spells it (`--top_p` on a command line, `top_p` in JSON)."""

import dataclasses
import math
from collections.abc import Callable

from jaxchar.errors import UserError

SAMPLE_MODES = ("window", "stateful")  # the generators' names, the reference's first
UNKNOWN_POLICIES = ("error", "skip")  # prime characters the model never saw
MAX_SEED = 2**31 - 1


def flag_name(control: str) -> str:
  """A control as a command line spells it."""
  return f"--{control}"


@dataclasses.dataclass(frozen=True)
class Controls:
  """How to sample: one or more temperatures, length, count, filters, stops, mode, seed."""

  temperatures: tuple[float, ...] = (0.5,)
  length: int = 400
  num_samples: int = 1
  top_k: int = 0
  top_p: float = 1.0
  stops: tuple[str, ...] = ()
  mode: str = SAMPLE_MODES[0]
  unknown: str = UNKNOWN_POLICIES[0]
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Bounds:
  """What the model and the caller allow (None: no bound), and the option that sets each."""

  vocab_size: int | None = None
  max_length: int | None = None
  max_samples: int | None = None
  max_stops: int | None = None
  max_stop_chars: int | None = None
  limit_flags: dict = dataclasses.field(default_factory=dict)  # bound -> the flag setting it


def check_temperatures(temperatures: tuple[float, ...], name: str) -> None:
  """UserError unless there is at least one temperature and all are positive."""
  if not temperatures:
    raise UserError(f"{name} is empty; give one value or a list, e.g. {name}=0.2,0.5,1.0.")
  for t in temperatures:
    if not (math.isfinite(t) and t > 0):
      raise UserError(f"{name}={t:g} must be a positive number (e.g. 0.5): logits are divided "
                      "by it, so 0 or less has no meaning.")


def _range(name: str, value: int, low: int, high: int | None, bound: str, bounds: Bounds,
           unit: str = "") -> None:
  if value >= low and (high is None or value <= high):
    return
  if high is None:
    raise UserError(f"{name}={value} must be at least {low}{unit}.")
  source = f" ({bounds.limit_flags[bound]})" if bound in bounds.limit_flags else ""
  raise UserError(f"{name}={value} must be from {low} to {high:,}{source}.")


def check_controls(controls: Controls, bounds: Bounds = Bounds(),
                   name: Callable[[str], str] = flag_name) -> None:
  """UserError naming the first control outside what `bounds` allow, and what is allowed."""
  check_temperatures(controls.temperatures, name("temperature"))
  _range(name("length"), controls.length, 1, bounds.max_length, "max_length", bounds,
         " character")
  _range(name("num_samples"), controls.num_samples, 1, bounds.max_samples, "max_samples", bounds)
  top_k, vocab = controls.top_k, bounds.vocab_size
  if top_k < 0 or (vocab is not None and top_k > vocab):
    size = f", {vocab}" if vocab is not None else ""
    raise UserError(f"{name('top_k')}={top_k} must be from 0 (off) to the model's vocabulary "
                    f"size{size}.")
  if not (math.isfinite(controls.top_p) and 0 < controls.top_p <= 1):
    raise UserError(f"{name('top_p')}={controls.top_p} must be above 0 and at most 1: the share "
                    "of probability the most likely characters must reach (e.g. 0.9; 1 = off).")
  check_stops(controls.stops, bounds, name("stop"))
  for control, allowed in (("mode", SAMPLE_MODES), ("unknown", UNKNOWN_POLICIES)):
    if getattr(controls, control) not in allowed:
      raise UserError(f"{name(control)}={getattr(controls, control)!r} must be one of "
                      f"{', '.join(allowed)}.")
  if not 0 <= controls.seed <= MAX_SEED:
    raise UserError(f"{name('seed')}={controls.seed} must be from 0 to {MAX_SEED}.")


def check_stops(stops: tuple[str, ...], bounds: Bounds, name: str) -> None:
  """UserError for an empty stop string, or more or longer ones than `bounds` allow."""
  if any(not stop for stop in stops):
    raise UserError(f"{name} has an empty string, which would end every sample at once; give "
                    "the text a sample should end after, e.g. '\\n\\n' for a blank line.")
  if bounds.max_stops is not None and len(stops) > bounds.max_stops:
    raise UserError(f"{name} has {len(stops)} strings; at most {bounds.max_stops} are allowed.")
  if bounds.max_stop_chars is not None and any(len(s) > bounds.max_stop_chars for s in stops):
    raise UserError(f"a {name} string has over {bounds.max_stop_chars} characters.")
