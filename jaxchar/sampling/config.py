"""What `python -m jaxchar.sample` takes, each option defined once; the temperature checks that
the trainer's per-epoch samples share. Everything else comes from the checkpoint."""

import dataclasses
import math
import re
from pathlib import Path

from jaxchar.errors import UserError
from jaxchar.options import check_choices, option

SAMPLE_MODES = ("window", "stateful")  # the generators' names, the reference's first
UNKNOWN_POLICIES = ("error", "skip")  # prime characters the model never saw


def parse_temperatures(values: list[str] | str, flag: str = "temperatures") -> tuple[float, ...]:
  """Parses '0.2,0.5' or ['0.2', '0.5'] into floats, raising UserError on a bad entry."""
  if isinstance(values, str):
    values = [v for v in values.split(",") if v.strip()]
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise UserError(
        f"--{flag}={','.join(values)} is not a comma-separated list of numbers; "
        f"pass e.g. --{flag}=0.2,0.5,1.0,1.2.") from None


def check_temperatures(temperatures: tuple[float, ...], flag: str) -> None:
  """Raises UserError unless there is at least one temperature and all are positive."""
  if not temperatures:
    raise UserError(f"--{flag} is empty; give one value or a list, e.g. --{flag}=0.2,0.5,1.0.")
  for t in temperatures:
    if not (math.isfinite(t) and t > 0):
      raise UserError(f"temperature {t} in --{flag} must be a positive number (e.g. 0.5): "
                      "logits are divided by it, so 0 or less has no meaning.")


def _parse_sample_temperatures(values: list[str]) -> tuple[float, ...]:
  return parse_temperatures(values, "temperature")


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape_stop(text: str) -> str:
  """A stop string as typed: \\n, \\t and \\\\ stand for a line break, a tab and a backslash."""
  return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def _parse_stops(values: list[str]) -> tuple[str, ...]:
  return tuple(unescape_stop(v) for v in values)


def check_top_p(top_p: float, name: str = "--top_p") -> None:
  """UserError unless 0 < top_p <= 1."""
  if not (math.isfinite(top_p) and 0 < top_p <= 1):
    raise UserError(f"{name}={top_p} must be above 0 and at most 1: the share of probability "
                    "the most likely characters must reach (e.g. 0.9; 1 = off).")


def check_stops(stops: tuple[str, ...], name: str = "--stop") -> None:
  """UserError for an empty stop string."""
  if any(not stop for stop in stops):
    raise UserError(f"{name} has an empty string, which would end every sample at once; give "
                    "the text a sample should end after, e.g. --stop='\\n\\n' for a blank line.")


MODE_HELP = ("window: rerun the LSTM over the last maxlen characters for each new one, as in "
             "training (default); stateful: carry the LSTM state, one step per character "
             "(faster, sees further back).")


@dataclasses.dataclass(frozen=True)
class CheckpointChoice:
  """Which trained model to restore: shared by the sampler and the server."""

  workdir: str = option("ckpt/moe", "The training run's folder (the trainer's --workdir).")
  step: int | None = option(None, "Checkpoint step to use. Default: the checkpoint with the "
                            "best (lowest) validation loss; the latest if none has one.")


@dataclasses.dataclass(frozen=True)
class SampleConfig(CheckpointChoice):
  """What `python -m jaxchar.sample` needs; everything else comes from the checkpoint."""

  prime: str = option("", "Text to continue; lowercased if the model was trained lowercased. "
                      "Empty = start from a line break. Only its last maxlen characters are "
                      "used as context.")
  prime_file: str | None = option(None, "Read the prime from this UTF-8 file instead.")
  temperatures: tuple[float, ...] = option((0.5,), "One temperature or a comma-separated list.",
                                           flag="temperature", parse=_parse_sample_temperatures)
  length: int = option(400, "Characters to generate per sample.")
  num_samples: int = option(1, "Samples per temperature.")
  seed: int = option(0, "Sampling seed.")
  top_k: int = option(0, "Draw only from the k most likely characters; 0 = off.")
  top_p: float = option(1.0, "Draw only from the most likely characters whose probabilities "
                        "together reach this share (nucleus sampling), after --top_k; 1 = off.")
  stops: tuple[str, ...] = option((), "End a sample right after this text (repeatable: after "
                                  "the first of them it writes); \\n, \\t and \\\\ stand "
                                  "for a line break, a tab and a backslash.", flag="stop",
                                  parse=_parse_stops, repeatable=True)
  unknown: str = option("error", "Prime characters the model never saw: stop with an error "
                        "listing them, or skip (drop) them.", choices=UNKNOWN_POLICIES)
  mode: str = option("window", MODE_HELP, choices=SAMPLE_MODES)

  def with_prime_file(self) -> "SampleConfig":
    """This config with `prime` read from `prime_file`, if one is given."""
    if self.prime_file is None:
      return self
    try:
      prime = Path(self.prime_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(f"--prime_file={self.prime_file} cannot be read as UTF-8 text ({e}); "
                      "check the path, or pass the prime with --prime.") from None
    return dataclasses.replace(self, prime=prime, prime_file=None)

  def validate(self) -> "SampleConfig":
    """Raises UserError for values that are wrong whatever the checkpoint; returns self."""
    check_temperatures(self.temperatures, "temperature")
    if self.length < 1:
      raise UserError(f"--length={self.length} must be at least 1 character.")
    if self.num_samples < 1:
      raise UserError(f"--num_samples={self.num_samples} must be at least 1.")
    if self.top_k < 0:
      raise UserError(f"--top_k={self.top_k} must be >= 0 (0 = off).")
    check_top_p(self.top_p)
    check_stops(self.stops)
    check_choices(self)
    return self
