"""Each program compiles once: the train and eval steps once per run, and a second identical
sampling or scoring call compiles nothing. Counted from JAX's own compile log."""

import collections
import contextlib
import dataclasses
import logging

import jax
import pytest

from helpers import FORMAT1_RUN, run_module, tiny_config
from jaxchar import train
from jaxchar.core import restore
from jaxchar.sampling import sampler as sampler_lib
from jaxchar.scoring import scorer
from jaxchar.training import init_from


@contextlib.contextmanager
def compiles():
  """Counts XLA compiles inside by program and argument shapes (not shardings: a change of
  sharding alone compiles a program again, which is what these tests catch)."""
  counts = collections.Counter()

  class Recorder(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
      message = record.getMessage()
      if message.startswith("Compiling "):
        counts[message.split(". Argument mapping")[0]] += 1

  recorder, logger = Recorder(), logging.getLogger("jax")
  logger.addHandler(recorder)
  with jax.log_compiles(True):
    try:
      yield counts
    finally:
      logger.removeHandler(recorder)


def pmapped(counts: collections.Counter) -> list[int]:
  """How often each pmapped program (JAX names them all `_fun`) compiled, by argument shapes."""
  return [n for program, n in counts.items() if program.startswith("Compiling jit(_fun) ")]


def test_a_run_compiles_its_train_and_eval_steps_once(tiny_file, tmp_path):
  config = tiny_config(tiny_file, epochs=2)
  with compiles() as counts:
    train.train_and_evaluate(config, tmp_path / "run")
  assert pmapped(counts) == [1, 1], counts  # the train step, the eval step
  tuned = dataclasses.replace(config, epochs=1, init_from=str(tmp_path / "run"))
  with compiles() as counts:  # validates the starting point before its first step
    train.train_and_evaluate(tuned, tmp_path / "tuned", init_from.load_base(tuned.init_from))
  assert pmapped(counts) == [1, 1], counts


def test_sampling_and_scoring_again_compile_nothing(tiny_run):
  sampler = sampler_lib.load_sampler(tiny_run)
  restored = restore.restore(tiny_run)
  prepared = scorer.prepare("moe pours a beer for homer. " * 4, restored.vocab,
                            restored.lowercase)
  for mode in ("window", "stateful"):
    with compiles() as first:
      sampler.sample("moe", [0.5, 1.0], 20, mode=mode)
    with compiles() as again:
      sampler.sample("homer", [0.5, 1.0], 20, mode=mode, seed=3)
    assert first and not again, (mode, again)
  with compiles() as first:
    scorer.score(restored, prepared)
  with compiles() as again:
    scorer.score(restored, prepared)
  assert pmapped(first) == [1] and not again, again


@pytest.mark.parametrize("entry, args", [
    ("jaxchar.sample", ["--length=20"]),
    ("jaxchar.score", [f"--data={FORMAT1_RUN.parent / 'README.md'}"]),
])
def test_the_readers_keep_their_programs_in_the_compilation_cache_they_are_given(
    entry, args, tmp_path):
  """--compilation_cache, as the trainer's: a restarted sampler, scorer or server loads its
  programs instead of compiling them (the server's 18 took 12.2 s of its start here)."""
  folder = tmp_path / "cache"
  result = run_module(entry, f"--workdir={FORMAT1_RUN}", f"--compilation_cache={folder}", *args)
  assert result.returncode == 0, result.stderr
  kept = [p.name for p in folder.iterdir()] if folder.exists() else []
  assert any(name.startswith("jit_") for name in kept), kept
