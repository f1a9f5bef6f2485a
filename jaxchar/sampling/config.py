"""What `python -m jaxchar.sample` takes, each option defined once (checked by
`controls.check_controls`). Everything else comes from the checkpoint."""

import dataclasses
import re
from pathlib import Path

from jaxchar.choices import CheckpointChoice, CompilationCacheChoice
from jaxchar.errors import UserError
from jaxchar.options import option
from jaxchar.sampling.controls import SAMPLE_MODES, UNKNOWN_POLICIES, Controls, check_controls


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


def _parse_sample_temperatures(values: list[str]) -> tuple[float, ...]:
  return parse_temperatures(values, "temperature")


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape_stop(text: str) -> str:
  """A stop string as typed: \\n, \\t and \\\\ stand for a line break, a tab and a backslash."""
  return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def _parse_stops(values: list[str]) -> tuple[str, ...]:
  return tuple(unescape_stop(v) for v in values)


MODE_HELP = ("window: rerun the LSTM over the last maxlen characters for each new one, as in "
             "training (default); stateful: carry the LSTM state, one step per character "
             "(faster, sees further back).")


@dataclasses.dataclass(frozen=True)
class SampleConfig(CheckpointChoice, CompilationCacheChoice):
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

  def controls(self) -> Controls:
    """How to sample, as the checks and the sampler take it."""
    return Controls(self.temperatures, self.length, self.num_samples, self.top_k, self.top_p,
                    self.stops, self.mode, self.unknown, self.seed)

  def validate(self) -> "SampleConfig":
    """Raises UserError for values that are wrong whatever the checkpoint; returns self."""
    check_controls(self.controls())
    return self
