"""What a client may ask the server for, checked: one clear message per bad field, saying what
is allowed (the server answers it as HTTP 400 with {"error": ...})."""

import dataclasses
import json
import math
import re

from jaxchar.errors import UserError
from jaxchar.sampling.config import SampleConfig
from jaxchar.sampling.controls import Bounds, Controls, check_controls
from jaxchar.sampling.sampler import Sampler

MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 4  # a request is a flat object; more nesting is refused before parsing
MAX_DIGITS = 18  # integers longer than this are refused before Python converts them
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(rb"[\[\]{}]")


class BadRequest(Exception):
  """A request the server refuses; `status` is the HTTP status, the message says why."""

  def __init__(self, message: str, status: int = 400, headers: dict | None = None):
    super().__init__(message)
    self.status = status
    self.headers = headers


@dataclasses.dataclass(frozen=True)
class Limits:
  max_length: int
  max_prime: int
  max_batch: int  # also the most samples one request may ask for
  request_timeout_s: float = 120.0
  client_timeout_s: float = 10.0
  max_score: int = 20_000  # characters of a text POST /api/score takes

  @property
  def score_body_bytes(self) -> int:
    """A body that holds `max_score` characters however JSON escapes them (at worst 12 bytes
    each: a character outside the BMP as a surrogate pair of \\uXXXX escapes)."""
    return MAX_BODY_BYTES + 12 * self.max_score


def _json_depth(body: bytes) -> int:
  """How deeply `body`'s arrays and objects nest, strings aside (a linear scan)."""
  depth = deepest = 0
  for bracket in _BRACKETS.findall(_STRINGS.sub(b'""', body)):
    depth += 1 if bracket in b"[{" else -1
    deepest = max(deepest, depth)
  return deepest


def _bounded_int(text: str) -> int:
  if len(text.lstrip("-")) > MAX_DIGITS:
    raise BadRequest(f"a number in the body has {len(text.lstrip('-')):,} digits; every field "
                     f"takes at most {MAX_DIGITS}.")
  return int(text)


def _finite_float(text: str) -> float:
  value = float(text)
  if not math.isfinite(value):
    raise BadRequest(f"{text[:20]} is too large a number for any field.")
  return value


def _no_constant(name: str):
  raise BadRequest(f"{name} is not a number JSON allows; send a finite number.")


def parse_json(body: bytes) -> object:
  """The request body as JSON, refusing what could make the parser raise or work hard: deep
  nesting, huge integers, NaN, Infinity and overflowing floats."""
  if _json_depth(body) > MAX_JSON_DEPTH:
    raise BadRequest("the body nests arrays or objects too deeply; send one flat JSON object, "
                     "e.g. {\"prime\": \"moe: \", \"length\": 200}.")
  try:
    return json.loads(body or b"{}", parse_int=_bounded_int, parse_float=_finite_float,
                      parse_constant=_no_constant)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BadRequest(f"the body is not valid JSON ({e}); send e.g. "
                     "{\"prime\": \"moe: \", \"length\": 200}.") from None


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
  top_p: float = 1.0
  stops: tuple[str, ...] = ()


MAX_STOPS = 8  # stop strings per request
MAX_STOP_CHARS = 200
_SAMPLE = SampleConfig()
# The defaults of `python -m jaxchar.sample`, from its definitions.
DEFAULTS = {"prime": _SAMPLE.prime, "temperature": _SAMPLE.temperatures[0],
            "length": _SAMPLE.length, "top_k": _SAMPLE.top_k, "mode": _SAMPLE.mode,
            "seed": _SAMPLE.seed, "num_samples": _SAMPLE.num_samples, "unknown": _SAMPLE.unknown,
            "top_p": _SAMPLE.top_p, "stop": list(_SAMPLE.stops)}


def _number(fields: dict, name: str, kind: type):
  value = fields.get(name, DEFAULTS[name])
  if isinstance(value, str):  # query parameters arrive as text
    if len(value) > MAX_DIGITS + 8:
      raise BadRequest(f"{name} must be a number of at most {MAX_DIGITS} digits, got "
                       f"{len(value):,} characters.")
    try:
      value = kind(value)
    except ValueError:
      raise BadRequest(f"{name} must be a number, got {value!r}.") from None
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise BadRequest(f"{name} must be a number, got {value!r}.")
  if isinstance(value, float) and not math.isfinite(value):
    raise BadRequest(f"{name} must be a finite number, got {value!r}.")
  if kind is int and value != int(value):
    raise BadRequest(f"{name} must be a whole number, got {value!r}.")
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
  length = _number(fields, "length", int)
  top_k = _number(fields, "top_k", int)
  top_p = _number(fields, "top_p", float)
  stops = _stops(fields.get("stop", DEFAULTS["stop"]))
  num_samples = _number(fields, "num_samples", int)
  seed = _number(fields, "seed", int)
  mode, unknown = (fields.get(name, DEFAULTS[name]) for name in ("mode", "unknown"))
  bounds = Bounds(sampler.vocab.size, limits.max_length, limits.max_batch, MAX_STOPS,
                  MAX_STOP_CHARS, {"max_length": "--max_length", "max_samples": "--max_batch"})
  try:
    check_controls(Controls((temperature,), length, num_samples, top_k, top_p, stops, mode,
                            unknown, seed), bounds, name=str)
  except UserError as e:
    raise BadRequest(str(e)) from None
  try:
    prime = sampler.clean_prime(prime, unknown)
  except UserError as e:
    raise BadRequest(str(e).replace("--unknown=skip", '"unknown": "skip"')) from None
  return GenerationRequest(prime, temperature, length, top_k, mode, seed, num_samples, unknown,
                           top_p, stops)


def _stops(value) -> tuple[str, ...]:
  """The stop field: one string or a list of them (a query parameter: one string)."""
  stops = [value] if isinstance(value, str) else value
  if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
    raise BadRequest(f"stop must be a string or a list of strings, got {value!r}.")
  if len(stops) > MAX_STOPS:  # before looking at each one
    raise BadRequest(f"stop has {len(stops)} strings; at most {MAX_STOPS} are allowed.")
  return tuple(stops)


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
  """A checked POST /api/score: the text and whether its first characters count."""

  text: str
  from_start: bool


def parse_score(fields: object, limits: Limits) -> ScoreRequest:
  """Checks a score request's fields."""
  if not isinstance(fields, dict):
    raise BadRequest("the body must be a JSON object, e.g. {\"text\": \"moe: hi.\"}.")
  unknown_fields = sorted(set(fields) - {"text", "from_start"})
  if unknown_fields:
    raise BadRequest(f"unknown field(s) {', '.join(unknown_fields)}; the fields are text, "
                     "from_start.")
  text = fields.get("text")
  if not isinstance(text, str) or not text:
    raise BadRequest("text must be a non-empty string: the text to score.")
  if len(text) > limits.max_score:
    raise BadRequest(f"text has {len(text):,} characters; at most {limits.max_score:,} are "
                     "scored per request (--max_score); use `python -m jaxchar.score` for "
                     "longer texts.")
  from_start = fields.get("from_start", False)
  if not isinstance(from_start, bool):
    raise BadRequest(f"from_start must be true or false, got {from_start!r}.")
  return ScoreRequest(text, from_start)
