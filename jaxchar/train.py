"""Trains a character-level LSTM: `python -m jaxchar.train --flagfile=launch/moe.flags`."""

import jax
from absl import app, flags

from jaxchar import host, options
from jaxchar.cli import entry_point
from jaxchar.errors import UserError
from jaxchar.training import distributed
from jaxchar.training.config import Config, Launch
from jaxchar.training.loop import train_and_evaluate

options.define_flags(Config)
options.define_flags(Launch)
FLAGS = flags.FLAGS


def config_from_flags() -> Config:
  """The frozen, validated Config described by the parsed flags."""
  return options.from_flags(Config, FLAGS).validate()


def launch_from_flags() -> Launch:
  """The validated Launch described by the parsed flags."""
  return options.from_flags(Launch, FLAGS).validate()


def _set_up_host(config: Config, launch: Launch) -> None:
  """CPU devices, malloc, compilation cache and jax.distributed: before any device is used."""
  host.keep_freed_memory()
  if launch.cpu_devices or not distributed.requested(launch.distributed,
                                                     launch.coordinator_address):
    host.use_cpu_devices(launch.cpu_devices, config.batch_size)  # multi-process: the user's
  if launch.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", launch.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  distributed.initialize(launch.distributed, launch.coordinator_address, launch.num_processes,
                         launch.process_id, launch.distributed_timeout_s)


@entry_point
def main() -> None:
  config, launch = config_from_flags(), launch_from_flags()
  _set_up_host(config, launch)
  try:
    train_and_evaluate(config, launch.workdir)
  except Exception as e:  # noqa: BLE001 - only re-labelled when a peer process is gone
    if jax.process_count() > 1 and not isinstance(e, UserError):
      distributed.exit_on_peer_failure(e)
    raise


if __name__ == "__main__":
  app.run(main)
