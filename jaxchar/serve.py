"""Serves a trained model over HTTP: `python -m jaxchar.serve --workdir=ckpt/moe_best`.

Restores the checkpoint once (the best by validation loss, as `jaxchar.sample` does), compiles
the default request's shapes, prints the URL, then serves the web page and the API (see
README, "Serving"). Needs the extra: pip install -e '.[serve]'.
"""

import socket
import time

from absl import app, flags

from jaxchar import host, logs
from jaxchar.batcher import Batcher
from jaxchar.errors import UserError, exits_on_user_error
from jaxchar.sampler import load_sampler
from jaxchar.serve_requests import DEFAULTS, Limits

flags.DEFINE_string("workdir", "ckpt/moe", "The training run's folder (the trainer's --workdir).")
flags.DEFINE_integer("step", None, "Checkpoint step to serve. Default: the best by validation "
                     "loss (the latest if none has one); chosen once, at start-up.")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on. The default serves this machine "
                    "only; 0.0.0.0 serves every network it is on (no authentication!).")
flags.DEFINE_integer("port", 8080, "Port to listen on.")
flags.DEFINE_integer("max_batch", 64, "Most rows (samples of all waiting requests) generated in "
                     "one call; also the most samples one request may ask for.")
flags.DEFINE_integer("max_length", 5000, "Most characters one sample may ask for.")
flags.DEFINE_integer("max_prime", 2000, "Most characters a prime may have.")
flags.DEFINE_float("batch_wait_ms", 5.0, "How long the batcher waits for more requests to join "
                   "a generation call once one is waiting.")
FLAGS = flags.FLAGS


def _check_flags() -> None:
  for name in ("max_batch", "max_length", "max_prime"):
    if getattr(FLAGS, name) < 1:
      raise UserError(f"--{name}={getattr(FLAGS, name)} must be at least 1.")
  if not 0 < FLAGS.port < 65536:
    raise UserError(f"--port={FLAGS.port} must be from 1 to 65535 (e.g. 8080).")
  if FLAGS.batch_wait_ms < 0:
    raise UserError(f"--batch_wait_ms={FLAGS.batch_wait_ms} must be >= 0.")


def _check_port() -> None:
  """A clear error now rather than uvicorn's log line after start-up."""
  family = socket.AF_INET6 if ":" in FLAGS.host else socket.AF_INET
  with socket.socket(family, socket.SOCK_STREAM) as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      probe.bind((FLAGS.host, FLAGS.port))
    except OSError as e:
      raise UserError(f"cannot listen on {FLAGS.host}:{FLAGS.port} ({e.strerror or e}); another "
                      "program may be using the port: pick another with --port, or check "
                      "--host.") from None


def _imports():
  try:
    import uvicorn
    from jaxchar import serve_app
  except ImportError as e:
    raise UserError(f"serving needs FastAPI and uvicorn ({e}); install them with "
                    "`pip install -e '.[serve]'` and retry.") from None
  return uvicorn, serve_app


@exits_on_user_error
def main(argv: list[str]) -> None:
  logs.quiet_library_logs()
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --help).")
  _check_flags()
  _check_port()
  uvicorn, serve_app = _imports()
  host.keep_freed_memory()

  start = time.perf_counter()
  sampler = load_sampler(FLAGS.workdir, FLAGS.step)
  batcher = Batcher(sampler, FLAGS.max_batch, FLAGS.max_length, FLAGS.batch_wait_ms / 1000)
  batcher.warm_up("window", DEFAULTS["length"])
  batcher.warm_up("window", serve_app.STREAM_CHUNK)
  limits = Limits(FLAGS.max_length, FLAGS.max_prime, FLAGS.max_batch)
  application = serve_app.create_app(sampler, batcher, limits)
  val = sampler.meta.get("val_loss")
  shapes = len(batcher.length_buckets) * len(batcher.batch_buckets) * 2
  print(f"serving {FLAGS.workdir} checkpoint step {sampler.step}"
        + (f" (validation loss {val:.4f} nats)" if val is not None else "")
        + f"; ready in {time.perf_counter() - start:.1f} s (at most {shapes} generation shapes, "
        "the default request's compiled)", flush=True)
  if FLAGS.host in ("0.0.0.0", "::", ""):
    print(f"warning: --host={FLAGS.host} listens on every network this machine is on, with no "
          "authentication; anyone who can reach the port can use it.", flush=True)
  shown = f"[{FLAGS.host}]" if ":" in FLAGS.host else FLAGS.host
  print(f"open http://{shown}:{FLAGS.port}/ (API: POST /api/generate, GET /api/stream, "
        "GET /api/info); Ctrl-C stops", flush=True)
  try:
    uvicorn.run(application, host=FLAGS.host, port=FLAGS.port, log_level="warning",
                access_log=False)
  finally:
    batcher.close()


if __name__ == "__main__":
  app.run(main)
