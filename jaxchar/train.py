"""Trains a character-level LSTM: `python -m jaxchar.train --flagfile=launch/moe.flags`."""

import jax
from absl import flags

from jaxchar import host, options
from jaxchar.cli import entry_point, run
from jaxchar.core import compilation_cache, storage
from jaxchar.core.spec import SHAPE
from jaxchar.errors import UserError
from jaxchar.training import distributed, init_from
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
  compilation_cache.use(launch.compilation_cache)
  distributed.initialize(launch.distributed, launch.coordinator_address, launch.num_processes,
                         launch.process_id, launch.distributed_timeout_s,
                         launch.heartbeat_timeout_s)


def base_from_flags(config: Config) -> tuple[Config, init_from.Base | None]:
  """The run --init_from names (None without it), and the config with its model shape."""
  if not config.init_from:
    return config, None
  base = init_from.load_base(config.init_from)
  given = {name for name in SHAPE if FLAGS[name].present}
  return init_from.adopt_shape(config, base, given), base


@entry_point
def main() -> None:
  config, launch = config_from_flags(), launch_from_flags()
  storage.configure(launch.storage_timeout_s)
  _set_up_host(config, launch)
  config, base = base_from_flags(config)  # reads a checkpoint: after the devices are set up
  try:
    train_and_evaluate(config, launch.workdir, base, launch.cache_dir)
  except Exception as e:  # noqa: BLE001 - only re-labelled when a peer process is gone
    if jax.process_count() > 1 and not isinstance(e, UserError):
      distributed.exit_on_peer_failure(e, launch.heartbeat_timeout_s)
    raise


if __name__ == "__main__":
  run(main)
