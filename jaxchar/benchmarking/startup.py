"""Start-up: the seconds from launching an entry point to its first useful output, split into
its parts. Each command runs as a user types it, in a fresh process; a probe wrapped around the
entry point marks when the imports end, when the checkpoint is restored, when the train state is
built and when the first and second training steps have run (the process then exits)."""

import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jaxchar.choices import DEFAULT_WORKDIR
from jaxchar.options import option

# Runs in the measured process: `python -c PROBE ENTRY ARGS...`. Marks are seconds since the
# parent launched the process (its clock, passed in JAXCHAR_LAUNCHED_AT).
PROBE = r"""
import importlib, importlib.util, os, sys, time
launched = float(os.environ["JAXCHAR_LAUNCHED_AT"])

def mark(name):
  print(f"STARTUP {name} {time.time() - launched:.3f}", file=sys.stderr, flush=True)

entry_name = sys.argv[1]
sys.argv = [importlib.util.find_spec(entry_name).origin] + sys.argv[2:]
mark("interpreter")
entry = importlib.import_module(entry_name)
mark("imported")
from jaxchar.core import checkpoint
restore_params = checkpoint.restore_params

def marked_restore(*args, **kwargs):
  params = restore_params(*args, **kwargs)
  mark("restored")
  return params

checkpoint.restore_params = marked_restore
if entry_name == "jaxchar.train":
  import jax
  from jaxchar.training import startup, steps
  load_corpus, create_train_state, pmapped_steps = (startup.open_text, steps.create_train_state,
                                                    steps.pmapped_steps)

  def marked_load(*args, **kwargs):
    out = load_corpus(*args, **kwargs)
    mark("text read")
    return out

  def marked_state(*args, **kwargs):
    out = create_train_state(*args, **kwargs)
    mark("state built")
    return out

  def marked_steps(*args, **kwargs):
    p_train, p_eval = pmapped_steps(*args, **kwargs)

    calls = []

    def first_steps(*step_args):
      if not calls:
        mark("loop started")
      out = p_train(*step_args)
      jax.block_until_ready(out)
      calls.append(1)
      if len(calls) == 2:  # a step that compiled again would show here
        mark("second step")
        os._exit(0)
      mark("first step")
      return out
    return first_steps, p_eval

  startup.open_text, steps.create_train_state, steps.pmapped_steps = (
      marked_load, marked_state, marked_steps)
from jaxchar.cli import run as run_entry
run_entry(entry.main)
"""


@dataclasses.dataclass(frozen=True)
class StartupBenchConfig:
  """What `python -m jaxchar.bench_startup` measures."""

  workdir: str = option(DEFAULT_WORKDIR, "A trained run to sample from and serve.")
  flagfile: str = option("launch/moe.flags", "The training run whose first step is timed (in a "
                         "temporary workdir).")
  repeats: int = option(3, "Turns each command takes (median reported).")
  json: str | None = option(None, "Also write the results to this JSON file.")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(entry: str, args: list[str], until: str | None = None) -> dict:
  """Runs `python -m entry args` under the probe; the marks (seconds since launch), with
  "output" when its first stdout line containing `until` (any line if None) appeared."""
  env = {**os.environ, "JAXCHAR_LAUNCHED_AT": repr(time.time())}
  launched = time.time()
  process = subprocess.Popen([sys.executable, "-c", PROBE, entry, *args], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  marks = {}
  for line in process.stdout:
    if until is None or until in line:
      marks["output"] = time.time() - launched
      break
  if entry == "jaxchar.serve":
    process.terminate()
  _, err = process.communicate(timeout=600)
  marks.update({name: float(t) for name, t in
                (line.removeprefix("STARTUP ").rsplit(" ", 1) for line in err.splitlines()
                 if line.startswith("STARTUP "))})
  if "output" not in marks and "first step" not in marks:
    raise RuntimeError(f"{entry} {' '.join(args)} failed:\n{err[-3000:]}")
  return {"wall_s": time.time() - launched, **marks}


def commands(config: StartupBenchConfig, tmp: Path, turn: int) -> dict:
  """name: (entry, args, output to wait for) of each measured command, this turn's workdirs."""
  train = ["--flagfile=" + config.flagfile, "--epochs=1"]
  serve_cache = f"--compilation_cache={tmp}/serve_cache{turn}"

  def serve(*flags: str) -> tuple:
    return ("jaxchar.serve", [f"--workdir={config.workdir}", f"--port={_free_port()}", *flags],
            "ready in")

  return {
      "train, fresh compilation cache": (
          "jaxchar.train", train + [f"--workdir={tmp}/fresh{turn}",
                                    f"--compilation_cache={tmp}/cache{turn}"], None),
      "train, cached": (
          "jaxchar.train", train + [f"--workdir={tmp}/cached{turn}",
                                    f"--compilation_cache={tmp}/cache{turn}"], None),
      "sample": ("jaxchar.sample", [f"--workdir={config.workdir}"], None),
      "serve": serve(),
      "serve, fresh compilation cache": serve(serve_cache),  # fills it
      "serve, cached": serve(serve_cache),
  }


def run_startup(config: StartupBenchConfig) -> dict:
  """Every command `config.repeats` times, interleaved; each mark's median."""
  runs: dict[str, list[dict]] = {}
  with tempfile.TemporaryDirectory() as tmp:
    for turn in range(config.repeats):
      for name, (entry, args, until) in commands(config, Path(tmp), turn).items():
        runs.setdefault(name, []).append(launch(entry, args, until))
        print(f"turn {turn + 1}/{config.repeats} {name}: {runs[name][-1]}", file=sys.stderr,
              flush=True)
  medians = {name: {mark: statistics.median(r[mark] for r in rs) for mark in rs[0]}
             for name, rs in runs.items()}
  return {"date": time.strftime("%Y-%m-%d"), "repeats": config.repeats, "runs": runs,
          "median": medians}


def format_table(results: dict) -> str:
  """Each command's marks as seconds since launch, and the time between them."""
  lines = [f"start-up, median of {results['repeats']} interleaved turns, {results['date']} "
           "(seconds since launch; in brackets, since the previous mark)",
           "| command | marks | to the first step, sampled text or `ready` |", "|---|---|---|"]
  for name, marks in results["median"].items():
    ordered = sorted((t, m) for m, t in marks.items() if m not in ("wall_s", "output"))
    shown, previous = [], 0.0
    for t, m in ordered:
      shown.append(f"{m} {t:.2f} (+{t - previous:.2f})")
      previous = t
    end = marks.get("first step", marks.get("output"))  # a trainer's first output is earlier
    lines.append(f"| {name} | {'; '.join(shown)} | {end:.2f} |")
  return "\n".join(lines)


def write_json(results: dict, path: str) -> None:
  Path(path).write_text(json.dumps(results, indent=2))
