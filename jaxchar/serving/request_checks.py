"""What a client may ask the server for, checked: one clear message per bad field, saying what
is allowed (the server answers it as HTTP 400 with {"error": ...})."""

import dataclasses
import math

from jaxchar.errors import UserError
from jaxchar.sampling.config import SAMPLE_MODES, UNKNOWN_POLICIES, SampleConfig
from jaxchar.sampling.sampler import Sampler

MAX_BODY_BYTES = 64 * 1024


class BadRequest(Exception):
  """A request the server refuses; `status` is the HTTP status, the message says why."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass(frozen=True)
class Limits:
  max_length: int
  max_prime: int
  max_samples: int


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
  """A checked request; `prime` as the model sees it (lowercased, unknown characters handled)."""

  prime: str
  temperature: float
  length: int
  top_k: int
  mode: str
  seed: int
  num_samples: int
  unknown: str


_SAMPLE = SampleConfig()
# The defaults of `python -m jaxchar.sample`, from its definitions.
DEFAULTS = {"prime": _SAMPLE.prime, "temperature": _SAMPLE.temperatures[0],
            "length": _SAMPLE.length, "top_k": _SAMPLE.top_k, "mode": _SAMPLE.mode,
            "seed": _SAMPLE.seed, "num_samples": _SAMPLE.num_samples, "unknown": _SAMPLE.unknown}


def _number(fields: dict, name: str, kind: type):
  value = fields.get(name, DEFAULTS[name])
  if isinstance(value, str):  # query parameters arrive as text
    try:
      value = kind(value)
    except ValueError:
      raise BadRequest(f"{name} must be a number, got {value!r}.") from None
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise BadRequest(f"{name} must be a number, got {value!r}.")
  if kind is int and value != int(value):
    raise BadRequest(f"{name} must be a whole number, got {value!r}.")
  if isinstance(value, float) and not math.isfinite(value):
    raise BadRequest(f"{name} must be a finite number, got {value!r}.")
  return kind(value)


def parse(fields: dict, sampler: Sampler, limits: Limits) -> GenerationRequest:
  """Checks a request's fields (a JSON object or query parameters) against the model and limits."""
  if not isinstance(fields, dict):
    raise BadRequest("the body must be a JSON object, e.g. {\"prime\": \"moe: \"}.")
  unknown_fields = sorted(set(fields) - set(DEFAULTS))
  if unknown_fields:
    raise BadRequest(f"unknown field(s) {', '.join(unknown_fields)}; the fields are "
                     f"{', '.join(DEFAULTS)}.")
  prime = fields.get("prime", DEFAULTS["prime"])
  if not isinstance(prime, str):
    raise BadRequest(f"prime must be a string, got {prime!r}.")
  if len(prime) > limits.max_prime:
    raise BadRequest(f"prime has {len(prime):,} characters; at most {limits.max_prime:,} are "
                     "allowed (--max_prime), and only the last window of it is context anyway.")
  temperature = _number(fields, "temperature", float)
  if temperature <= 0:
    raise BadRequest(f"temperature must be above 0 (e.g. 0.5), got {temperature}.")
  length = _number(fields, "length", int)
  if not 1 <= length <= limits.max_length:
    raise BadRequest(f"length must be from 1 to {limits.max_length:,} (--max_length), got "
                     f"{length}.")
  top_k = _number(fields, "top_k", int)
  if not 0 <= top_k <= sampler.vocab.size:
    raise BadRequest(f"top_k must be from 0 (off) to the vocabulary size, "
                     f"{sampler.vocab.size}, got {top_k}.")
  num_samples = _number(fields, "num_samples", int)
  if not 1 <= num_samples <= limits.max_samples:
    raise BadRequest(f"num_samples must be from 1 to {limits.max_samples} (--max_batch), got "
                     f"{num_samples}.")
  seed = _number(fields, "seed", int)
  if not 0 <= seed < 2**31:
    raise BadRequest(f"seed must be from 0 to {2**31 - 1}, got {seed}.")
  mode = fields.get("mode", DEFAULTS["mode"])
  if mode not in SAMPLE_MODES:
    raise BadRequest(f"mode must be one of {', '.join(SAMPLE_MODES)}, got {mode!r}.")
  unknown = fields.get("unknown", DEFAULTS["unknown"])
  if unknown not in UNKNOWN_POLICIES:
    raise BadRequest(f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, got {unknown!r}.")
  try:
    prime = sampler.clean_prime(prime, unknown)
  except UserError as e:
    raise BadRequest(str(e).replace("--unknown=skip", '"unknown": "skip"')) from None
  return GenerationRequest(prime, temperature, length, top_k, mode, seed, num_samples, unknown)
