"""Characters per second of an exported page in headless Chromium, both modes:
`python -m jaxchar.bench_page --workdir=ckpt/moe` (jaxchar/benchmarking/page.py)."""

from absl import flags

from jaxchar import options
from jaxchar.benchmarking.page import BrowserBenchConfig, run_page_bench
from jaxchar.cli import entry_point, run

options.define_flags(BrowserBenchConfig)
FLAGS = flags.FLAGS


@entry_point
def main() -> None:
  run_page_bench(options.from_flags(BrowserBenchConfig, FLAGS))


if __name__ == "__main__":
  run(main)
