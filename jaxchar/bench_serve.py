"""Benchmark of `jaxchar.serve` under concurrent clients:
`python -m jaxchar.bench_serve --workdir=ckpt/moe_best` (jaxchar/benchmarking/serving.py)."""

from absl import flags

from jaxchar import host, logs, options
from jaxchar.benchmarking.serving import ServeBenchConfig, run_serve_bench
from jaxchar.cli import run

options.define_flags(ServeBenchConfig)
FLAGS = flags.FLAGS


def main(argv) -> None:
  del argv
  logs.quiet_library_logs()
  host.skip_absent_tpu()
  run_serve_bench(options.from_flags(ServeBenchConfig, FLAGS))


if __name__ == "__main__":
  run(main)
