"""Starting and stopping the server: the port checked, the checkpoint restored once, the batch
shapes compiled, the URL printed, then uvicorn until SIGTERM or Ctrl-C, which stops taking
requests and gives the ones in flight --shutdown_timeout_s to finish. If the generation worker
ever fails, the server says so on /healthz and in its log, answers 503, and exits with code 1
for its supervisor to restart it."""

import contextlib
import signal
import socket
import sys
import time

import uvicorn
from tqdm import tqdm

from jaxchar.core.terminal import print_shown
from jaxchar.errors import UserError
from jaxchar.sampling.controls import SAMPLE_MODES
from jaxchar.sampling.sampler import load_sampler
from jaxchar.scoring import scorer
from jaxchar.serving import app as app_lib
from jaxchar.serving import guards
from jaxchar.serving.access_log import AccessLog
from jaxchar.serving.batcher import Batcher
from jaxchar.serving.config import ServeConfig
from jaxchar.serving.request_checks import Limits


def check_port(host: str, port: int) -> None:
  """A clear error now rather than uvicorn's log line after start-up."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  with socket.socket(family, socket.SOCK_STREAM) as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      probe.bind((host, port))
    except OSError as e:
      raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); another program "
                      "may be using the port: pick another with --port, or check --host.") from None


class _CompileProgress:
  """Programs compiled so far: a tqdm bar on a terminal, else a line every 10 s and at the
  end."""

  def __init__(self, total: int, start: float):
    self.total, self.done, self.start = total, 0, start
    self.last_line = time.perf_counter()
    self.bar = (tqdm(total=total, desc="compiling", unit="program", file=sys.stdout,
                     leave=False) if sys.stdout.isatty() else None)

  def add(self, programs: int) -> None:
    self.done += programs
    if self.bar is not None:
      self.bar.update(programs)
    elif time.perf_counter() - self.last_line >= 10 or self.done == self.total:
      self.last_line = time.perf_counter()
      _say(f"compiled {self.done}/{self.total} programs "
           f"({time.perf_counter() - self.start:.0f} s since start)")

  def __enter__(self) -> "_CompileProgress":
    return self

  def __exit__(self, *exc) -> None:
    if self.bar is not None:
      self.bar.close()


class _Server(uvicorn.Server):
  """uvicorn's server, telling the batcher when a signal asks it to stop."""

  def __init__(self, config: uvicorn.Config, batcher: Batcher, grace_s: float):
    super().__init__(config)
    self.batcher, self.grace_s = batcher, grace_s

  @contextlib.contextmanager
  def capture_signals(self):
    """uvicorn's signal handlers, without raising the signal again once stopped: a graceful
    stop exits with code 0 (and Ctrl-C prints no KeyboardInterrupt traceback)."""
    handlers = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT,
                                                                       signal.SIGTERM)}
    try:
      yield
    finally:
      for sig, handler in handlers.items():
        signal.signal(sig, handler)

  def handle_exit(self, sig: int, frame) -> None:
    if not self.should_exit:
      name = signal.Signals(sig).name
      _say(f"{name}: stopping; requests in flight have {self.grace_s:g} s to finish "
           "(again to quit at once)")
      self.batcher.stop(self.grace_s)
    super().handle_exit(sig, frame)


def _say(text: str) -> None:
  print_shown(text)  # a closed stdout must not keep a signal from stopping the server


def serve(config: ServeConfig) -> None:
  """Restores the model, warms the batcher up and serves until stopped, saying each start-up
  step as it begins (compiling takes a while)."""
  start = time.perf_counter()
  _say(f"restoring the model from {config.workdir}")
  sampler = load_sampler(config.workdir, config.step)
  batcher = Batcher(sampler, config.max_batch, config.batch_wait_ms / 1000, config.max_queue)
  limits = Limits(config.max_length, config.max_prime, config.max_batch,
                  config.request_timeout_s, config.client_timeout_s, config.max_score)
  hosts = guards.allowed_hosts(config.host, config.port, config.allow_origin)
  application = app_lib.create_app(sampler, batcher, limits, hosts, config.allow_origin)
  generation = len(batcher.batch_buckets) * 2 * len(SAMPLE_MODES)
  _say(f"compiling {generation + 2} programs: generation for {len(batcher.batch_buckets)} batch "
       f"sizes (up to --max_batch={config.max_batch}) x {'/'.join(SAMPLE_MODES)} x "
       "start/advance, and scoring"
       + ("" if config.compilation_cache else " (--compilation_cache=DIR keeps them for the "
          "next start)"))
  with _CompileProgress(generation + 2, start) as progress:
    for mode in SAMPLE_MODES:
      batcher.warm_up(mode, progress.add)
    for from_start in (False, True):  # compiles scoring at start-up too
      app_lib.score_text(sampler, scorer.prepare(sampler.vocab.chars * sampler.maxlen,
                                                 sampler.vocab, False), from_start)
      progress.add(1)
  if config.access_log:
    application = AccessLog(application)
  uvicorn_config = uvicorn.Config(
      application, host=config.host, port=config.port,
      http=guards.timed_protocol(config.client_timeout_s), log_level="warning", access_log=False, lifespan="off",
      timeout_graceful_shutdown=config.shutdown_timeout_s + 0.5)  # then uvicorn cancels
  server = _Server(uvicorn_config, batcher, config.shutdown_timeout_s)

  def worker_failed(error: BaseException) -> None:
    print(f"error: the generation worker failed ({type(error).__name__}: {error}); the server "
          "answers 503 and exits with code 1 to be restarted.", file=sys.stderr, flush=True)
    server.should_exit = True

  batcher.on_failure = worker_failed
  val = sampler.meta.get("val_loss")
  _say(f"serving {config.workdir} checkpoint step {sampler.step}"
       + (f" (validation loss {val:.4f} nats)" if val is not None else "")
       + f"; ready in {time.perf_counter() - start:.1f} s"
       + ("; one line per request follows (--access_log)" if config.access_log else ""))
  if config.host in guards.WILDCARD_HOSTS:
    _say(f"warning: --host={config.host} listens on every network this machine is on, with no "
         "authentication; anyone who can reach the port can use it.")
  address = f"[{config.host}]" if ":" in config.host else config.host
  _say(f"open http://{address}:{config.port}/ (API: POST /api/generate, GET /api/stream, "
       "POST /api/score, GET /api/info); Ctrl-C stops")
  try:
    server.run()
  finally:
    batcher.close(grace_s=0)
  if batcher.failure is not None:
    sys.exit(1)
