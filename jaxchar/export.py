"""Exports a trained model to run in a browser with no server:
`python -m jaxchar.export --workdir=ckpt/moe --out=model.html`.

The page holds the weights, vocabulary and a JavaScript forward pass and restored; it needs no
network. `--format=json` writes the model as JSON and the JavaScript as a module instead.
"""

from pathlib import Path

from absl import flags

from jaxchar import host, options
from jaxchar.cli import entry_point, run
from jaxchar.core import storage
from jaxchar.exporting import files
from jaxchar.exporting.config import ExportConfig
from jaxchar.core.restore import checkpoint_header, restore

options.define_flags(ExportConfig)
FLAGS = flags.FLAGS


def config_from_flags() -> ExportConfig:
  """The frozen, validated ExportConfig described by the parsed flags."""
  return options.from_flags(ExportConfig, FLAGS).validate()


@entry_point
def main() -> None:
  config = config_from_flags()
  storage.configure(config.storage_timeout_s)
  host.keep_freed_memory()
  restored = restore(config.workdir, config.step)
  written = files.export(restored, Path(config.out), config.format, config.float16)
  print(f"{checkpoint_header(restored)} in {config.workdir}")
  for path in written:
    print(f"wrote {path} ({path.stat().st_size / 2**20:,.2f} MB)")
  if config.format == "html":
    print(f"open it in a browser (file://{Path(written[0]).resolve()}); it needs no server "
          "and no network")


if __name__ == "__main__":
  run(main)
