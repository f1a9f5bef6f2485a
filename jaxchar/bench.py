"""Benchmarks, measured side by side in one run: `python -m jaxchar.bench [--json=out.json]`
(jaxchar/benchmarking/side_by_side.py says how). Speed is never asserted by tests."""

import json
from pathlib import Path

from absl import flags

from jaxchar import logs, options
from jaxchar.benchmarking.side_by_side import (BenchConfig, format_table, memory_probe,
                                               run_benchmarks, run_role)
from jaxchar.cli import run

options.define_flags(BenchConfig)
FLAGS = flags.FLAGS


def main(argv) -> None:
  del argv
  logs.quiet_library_logs()
  config = options.from_flags(BenchConfig, FLAGS)
  if config.memory_probe:  # internal: the memory probe's own process
    return memory_probe(config.memory_probe, config.probe_cache_dir)
  if config.role:  # internal: one configuration's own process
    print("RESULT=" + json.dumps(run_role(config.role, config.train_batch, config.seconds)))
    return
  results = run_benchmarks(config)
  print(format_table(results))
  if config.json:
    Path(config.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  run(main)
