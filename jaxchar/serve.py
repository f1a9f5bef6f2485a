"""Serves a trained model over HTTP: `python -m jaxchar.serve --workdir=ckpt/moe_best`.

Restores the checkpoint once (the best by validation loss, as `jaxchar.sample` does), compiles
the default request's shapes, prints the URL, then serves the web page and the API (see
jaxchar/serving/README.md). Needs the extra: pip install -e '.[serve]'.
"""

from absl import flags

from jaxchar import host, options
from jaxchar.cli import entry_point, run
from jaxchar.core import compilation_cache, storage
from jaxchar.errors import UserError
from jaxchar.serving.config import ServeConfig

options.define_flags(ServeConfig)
FLAGS = flags.FLAGS


def _server():
  """The server module, or a clear error when FastAPI or uvicorn is missing."""
  try:
    from jaxchar.serving import server
  except ImportError as e:
    raise UserError(f"serving needs FastAPI and uvicorn ({e}); install them with "
                    "`pip install -e '.[serve]'` and retry.") from None
  return server


@entry_point
def main() -> None:
  config = options.from_flags(ServeConfig, FLAGS).validate()
  storage.configure(config.storage_timeout_s)
  server = _server()
  server.check_port(config.host, config.port)
  host.keep_freed_memory()
  compilation_cache.use(config.compilation_cache)
  server.serve(config)


if __name__ == "__main__":
  run(main)
