"""Checks a run for a TPU or GPU before paying for one: `python -m jaxchar.compile_check
--topology=v5e-8 --flagfile=launch/tpu.flags` compiles every program the run would execute for
that topology (no TPU needed, only libtpu; h100-N needs JAX's CUDA plugin, no GPU) and says
whether each fits in the chips' memory. Exits 2, naming the largest global batch that fits, when
the run does not fit."""

import time

import jax
from absl import flags

from jaxchar import options
from jaxchar.aot import topologies
from jaxchar.aot.check import CheckConfig, corpus_shape, format_report, run_check, verdict
from jaxchar.aot.fit_table import fit_table
from jaxchar.cli import entry_point, run
from jaxchar.errors import UserError
from jaxchar.training.config import Config, Launch

options.define_flags(Config)
options.define_flags(Launch)  # accepted so that training flagfiles work; not used
options.define_flags(CheckConfig)
FLAGS = flags.FLAGS


@entry_point
def main() -> None:
  config = options.from_flags(Config, FLAGS).validate()
  check = options.from_flags(CheckConfig, FLAGS)
  if not check.topology:
    raise UserError("give the TPU topology to check for, e.g. --topology=v5e-8 (or v4-8, v5p-8, "
                    "v6e-8, or JAX's form v5e:2x4).")
  names = check.topology.split(",") if check.fit_table else [check.topology]
  topologies.describe_host_to_libtpu(topologies.jax_topology_name(names[0]))
  jax.config.update("jax_platforms", "cpu")  # the host's own backend; the TPU is compile-only
  # A compile-only TPU or GPU cannot load cached executables: with JAX_COMPILATION_CACHE_DIR
  # set, JAX would warn once per program.
  jax.config.update("jax_enable_compilation_cache", False)
  start = time.perf_counter()
  if check.fit_table:
    vocab, corpus_chars, _ = corpus_shape(config, check)
    print(fit_table(config, vocab, corpus_chars, [topologies.resolve(n) for n in names]))
    return
  topology = topologies.resolve(check.topology)
  report = run_check(config, check, topology)
  print(format_report(report))
  problem = verdict(report)
  if problem:
    raise UserError(problem)
  print(f"fits: every program compiled for {topology.name} and fits in its HBM "
        f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
  run(main)
