"""Starting the server: the port checked, the checkpoint restored once, the default request's
shapes compiled, the URL printed, then uvicorn until Ctrl-C."""

import socket
import time

import uvicorn

from jaxchar.errors import UserError
from jaxchar.sampling.sampler import load_sampler
from jaxchar.serving import app as app_lib
from jaxchar.serving.batcher import Batcher
from jaxchar.serving.config import ServeConfig
from jaxchar.serving.request_checks import DEFAULTS, Limits


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


def serve(config: ServeConfig) -> None:
  """Restores the model, warms the batcher up and serves until stopped."""
  start = time.perf_counter()
  sampler = load_sampler(config.workdir, config.step)
  batcher = Batcher(sampler, config.max_batch, config.max_length, config.batch_wait_ms / 1000)
  batcher.warm_up("window", DEFAULTS["length"])
  batcher.warm_up("window", app_lib.STREAM_CHUNK)
  limits = Limits(config.max_length, config.max_prime, config.max_batch)
  application = app_lib.create_app(sampler, batcher, limits)
  val = sampler.meta.get("val_loss")
  shapes = len(batcher.length_buckets) * len(batcher.batch_buckets) * 2
  print(f"serving {config.workdir} checkpoint step {sampler.step}"
        + (f" (validation loss {val:.4f} nats)" if val is not None else "")
        + f"; ready in {time.perf_counter() - start:.1f} s (at most {shapes} generation shapes, "
        "the default request's compiled)", flush=True)
  if config.host in ("0.0.0.0", "::", ""):
    print(f"warning: --host={config.host} listens on every network this machine is on, with no "
          "authentication; anyone who can reach the port can use it.", flush=True)
  shown = f"[{config.host}]" if ":" in config.host else config.host
  print(f"open http://{shown}:{config.port}/ (API: POST /api/generate, GET /api/stream, "
        "GET /api/info); Ctrl-C stops", flush=True)
  try:
    uvicorn.run(application, host=config.host, port=config.port, log_level="warning",
                access_log=False)
  finally:
    batcher.close()
