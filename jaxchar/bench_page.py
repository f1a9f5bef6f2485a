"""Characters per second of an exported page in headless Chromium, both modes:
`python -m jaxchar.bench_page --workdir=ckpt/moe` (jaxchar/benchmarking/page.py)."""

from absl import flags

from jaxchar import options
from jaxchar.benchmarking.page import BrowserBenchConfig, run_page_bench
from jaxchar.cli import entry_point, run
from jaxchar.core import storage

options.define_flags(BrowserBenchConfig)
FLAGS = flags.FLAGS


@entry_point
def main() -> None:
  config = options.from_flags(BrowserBenchConfig, FLAGS)
  storage.configure(config.storage_timeout_s)
  run_page_bench(config)


if __name__ == "__main__":
  run(main)
