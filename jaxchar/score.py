"""Scores a text under a trained model: `python -m jaxchar.score --workdir=ckpt/moe --data=FILE`.

Mean nats and bits per character and perplexity, by default over the characters with a full
window before them (the validation metric: a run's own validation text gives its validation
loss); needs no training flags. The file is read and scored in pieces: any size, bounded memory.
"""

from absl import flags

from jaxchar import host, options
from jaxchar.cli import entry_point, run
from jaxchar.core import compilation_cache, storage
from jaxchar.scoring.config import ScoreConfig
from jaxchar.scoring.report import run_scoring

options.define_flags(ScoreConfig)
FLAGS = flags.FLAGS


def config_from_flags() -> ScoreConfig:
  """The frozen, validated ScoreConfig described by the parsed flags."""
  return options.from_flags(ScoreConfig, FLAGS).validate()


@entry_point
def main() -> None:
  config = config_from_flags()
  storage.configure(config.storage_timeout_s)
  compilation_cache.use(config.compilation_cache)
  # No host.keep_freed_memory(): scoring's per-call temporaries are small, and a heap that
  # keeps every freed page grew RSS about 1 MB per piece scored (BENCHMARKS.md).
  host.use_cpu_devices(0, config.batch_size)  # scoring batches split over every core
  run_scoring(config)


if __name__ == "__main__":
  run(main)
