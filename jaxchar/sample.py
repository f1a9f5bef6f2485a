"""Samples from a trained checkpoint: `python -m jaxchar.sample --workdir=ckpt/moe --prime=...`.

Needs no training flags: vocabulary, model shape and window length come from the checkpoint.
"""

from absl import flags

from jaxchar import host, options
from jaxchar.cli import entry_point, run
from jaxchar.core import compilation_cache, storage
from jaxchar.sampling.config import SampleConfig
from jaxchar.sampling.sampler import run_sampling

options.define_flags(SampleConfig)
FLAGS = flags.FLAGS


def config_from_flags() -> SampleConfig:
  """The frozen, validated SampleConfig described by the parsed flags (prime file read)."""
  return options.from_flags(SampleConfig, FLAGS).with_prime_file().validate()


@entry_point
def main() -> None:
  # One device, unlike the trainer: sampling is one sequential jitted loop, which more CPU
  # devices would not share.
  config = config_from_flags()
  storage.configure(config.storage_timeout_s)
  compilation_cache.use(config.compilation_cache)
  host.keep_freed_memory()
  print(run_sampling(config))


if __name__ == "__main__":
  run(main)
