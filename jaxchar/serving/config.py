"""What `python -m jaxchar.serve` takes, each option defined once."""

import dataclasses
import re

from jaxchar.choices import CheckpointChoice, CompilationCacheChoice
from jaxchar.errors import UserError
from jaxchar.options import option


@dataclasses.dataclass(frozen=True)
class ServeConfig(CheckpointChoice, CompilationCacheChoice):
  """The server's model (chosen once, at start-up), address and limits."""

  host: str = option("127.0.0.1", "Address to listen on. The default serves this machine only; "
                     "0.0.0.0 serves every network it is on (no authentication!).")
  port: int = option(8080, "Port to listen on.")
  max_batch: int = option(64, "Most rows (samples of all waiting requests) generated in one "
                          "call; also the most samples one request may ask for.")
  max_length: int = option(5000, "Most characters one sample may ask for.")
  max_prime: int = option(2000, "Most characters a prime may have.")
  max_score: int = option(20_000, "Most characters of a text POST /api/score (the page's "
                          "score box) takes; `python -m jaxchar.score` has no limit.")
  batch_wait_ms: float = option(5.0, "How long the batcher waits for more requests to join a "
                                "generation call once one is waiting.")
  max_queue: int = option(256, "Most requests in progress (waiting or generating); beyond "
                          "it the server answers 503 with Retry-After.")
  request_timeout_s: float = option(120.0, "Most seconds a request may take from arrival; "
                                    "then it is answered 504 (a stream ends with an error).")
  client_timeout_s: float = option(10.0, "Most seconds a client may take to send a request's "
                                   "headers, and then its body; then the server answers 408.")
  shutdown_timeout_s: float = option(5.0, "On SIGTERM or Ctrl-C: seconds in-flight requests "
                                     "may take to finish before they are answered 503.")
  access_log: bool = option(False, "Print one line per request: time, client, method, path, "
                            "status and seconds (never the body or query).")
  allow_origin: tuple[str, ...] = option((), "Other web sites (e.g. https://example.com) whose "
                                         "pages may use the server, comma-separated; '*' for "
                                         "any. It also answers those sites' host names.")

  def validate(self) -> "ServeConfig":
    """Raises UserError for a bad value; returns self."""
    for name in ("max_batch", "max_length", "max_prime", "max_queue", "max_score"):
      if getattr(self, name) < 1:
        raise UserError(f"--{name}={getattr(self, name)} must be at least 1.")
    if not 0 < self.port < 65536:
      raise UserError(f"--port={self.port} must be from 1 to 65535 (e.g. 8080).")
    if self.batch_wait_ms < 0:
      raise UserError(f"--batch_wait_ms={self.batch_wait_ms} must be >= 0.")
    for name in ("request_timeout_s", "client_timeout_s", "shutdown_timeout_s"):
      if not getattr(self, name) > 0:
        raise UserError(f"--{name}={getattr(self, name)} must be above 0 (seconds).")
    for origin in self.allow_origin:
      if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
        raise UserError(f"--allow_origin={origin} is not an origin: give a scheme and host, "
                        "optionally a port, and no path, e.g. https://example.com or "
                        "http://myhost:8080 (or '*' for any).")
    return self
