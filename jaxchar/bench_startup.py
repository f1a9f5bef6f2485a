"""Start-up benchmark: `python -m jaxchar.bench_startup --workdir=ckpt/moe`. The seconds from
launch to the first training step of `--flagfile` (with a fresh and a filled compilation cache),
to the first sampled text of `jaxchar.sample` and to `ready` of `jaxchar.serve` on `--workdir`,
split into import, text, state, restore and compile (jaxchar/benchmarking/startup.py)."""

from absl import flags

from jaxchar import options
from jaxchar.benchmarking.startup import StartupBenchConfig, format_table, run_startup, write_json
from jaxchar.cli import entry_point, run

options.define_flags(StartupBenchConfig)
FLAGS = flags.FLAGS


@entry_point
def main() -> None:
  config = options.from_flags(StartupBenchConfig, FLAGS)
  results = run_startup(config)
  print(format_table(results))
  if config.json:
    write_json(results, config.json)


if __name__ == "__main__":
  run(main)
