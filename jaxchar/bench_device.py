"""The device benchmark, for a GPU or TPU machine where JAX already is:
`python -m jaxchar.bench_device --json=out.json` (or `launch/bench_device.sh out.json`).

In one process, within --budget_s (cells left when it runs out are listed as skipped): the
trainer's own pmapped step over every local device at four global batches, for the fused and the
Flax cell in float32 and bfloat16, then at lax.scan unrolls 2, 4 and 8; validation throughput;
sampling (window and stateful modes) at three row counts; each program's compile time; the
device's name and memory. Writes the JSON and the Markdown table for BENCHMARKS.md. Needs no
network and no tensorboardX. --profile=cpu runs the same suite at tiny sizes, for tests.
"""

import json
from pathlib import Path

from absl import flags

from jaxchar import logs, options
from jaxchar.benchmarking.device_suite import PROFILES, DeviceBenchConfig, format_table, run_suite
from jaxchar.cli import entry_point, run
from jaxchar.errors import UserError

options.define_flags(DeviceBenchConfig)
FLAGS = flags.FLAGS


@entry_point
def main() -> None:
  logs.quiet_library_logs()
  config = options.from_flags(DeviceBenchConfig, FLAGS)
  if config.profile not in PROFILES:
    raise UserError(f"--profile={config.profile} is not a profile; use device or cpu.")
  results = run_suite(config)
  table = format_table(results)
  print(table)
  if config.json:
    Path(config.json).write_text(json.dumps(results, indent=2))
    Path(config.json).with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
  run(main)
