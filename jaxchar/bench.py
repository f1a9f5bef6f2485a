"""Benchmarks, measured side by side in one run: `python -m jaxchar.bench [--json=out.json]`.

Speed is never asserted by tests; this prints a table (and optional JSON) for BENCHMARKS.md.
"""

import functools
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import jax_utils

import jaxchar
from jaxchar import data, generate, loop, steps
from jaxchar.config import Config
from jaxchar.model import CharLSTM

VOCAB, HIDDEN, MAXLEN = 65, 128, 60
REFERENCE_TX = steps.make_optimizer(0.01)  # RMSprop(lr=0.01)

flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
flags.DEFINE_list("batch_sizes", ["128", "512"], "Global training batch sizes to measure.")
flags.DEFINE_float("seconds", 5.0, "Approximate timing budget per measurement.")
flags.DEFINE_integer("memory_mb", 100, "Size of the generated corpus for the memory probe; 0 "
                     "skips it.")
flags.DEFINE_string("memory_probe", None, "Internal: train a few steps on this file and print "
                    "the peak RSS.")
FLAGS = flags.FLAGS


def step_flops(batch: int) -> float:
  """Model FLOPs of one train step: 3x the forward matmuls (the one-hot input projection
  counted as a dense [vocab, 4*hidden] matmul, as the straightforward step computes it)."""
  per_window = MAXLEN * 2 * 4 * HIDDEN * (VOCAB + HIDDEN) + 2 * HIDDEN * VOCAB
  return 3.0 * batch * per_window


def timed(fn, budget_s: float) -> float:
  """Seconds per call of fn() (which blocks), after one warm-up call."""
  fn()
  calls, start = 0, time.perf_counter()
  while True:
    fn()
    calls += 1
    if time.perf_counter() - start >= budget_s:
      return (time.perf_counter() - start) / calls


def matmul_gflops(budget_s: float, n: int = 2048) -> float:
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / timed(lambda: f(a).block_until_ready(), budget_s) / 1e9


def baseline_rate(batch: int, budget_s: float) -> dict:
  """The straightforward step: one-hot input, OptimizedLSTMCell in nn.scan, jit, one device."""
  model = CharLSTM(VOCAB, HIDDEN)
  state = steps.create_train_state(jax.random.PRNGKey(0), model, MAXLEN, REFERENCE_TX)

  @jax.jit
  def step(state, inputs, targets):
    def loss_fn(params):
      return steps.cross_entropy(model.apply({"params": params}, inputs), targets).mean()
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  inputs = jax.random.randint(jax.random.PRNGKey(1), (batch, MAXLEN), 0, VOCAB)
  targets = jax.random.randint(jax.random.PRNGKey(2), (batch,), 0, VOCAB)
  holder = [state]

  def run():
    holder[0], loss = step(holder[0], inputs, targets)
    loss.block_until_ready()
  seconds = timed(run, budget_s)
  return {"windows_per_s": batch / seconds, "step_ms": seconds * 1e3,
          "gflops": step_flops(batch) / seconds / 1e9}


def trainer_rate(batch: int, budget_s: float) -> dict:
  """The trainer's own pmapped step over all local devices, batches gathered on device."""
  n = jax.local_device_count()
  ids = np.random.default_rng(0).integers(0, VOCAB, 200_000).astype(np.int32)
  starts = np.arange(0, len(ids) - MAXLEN - 1, 3, dtype=np.int32)
  state = steps.create_train_state(jax.random.PRNGKey(0), CharLSTM(VOCAB, HIDDEN), MAXLEN,
                                   REFERENCE_TX)
  p_state, p_ids = jax_utils.replicate(state), jax_utils.replicate(jnp.asarray(ids))
  p_train_step, _ = loop.pmapped_steps(MAXLEN)
  batches = data.train_batches(starts, data.epoch_order(len(starts), 0, 1), batch, n)
  compile_start = time.perf_counter()
  p_state, metrics = p_train_step(p_state, p_ids, batches[0])
  metrics["loss"].block_until_ready()
  compile_s = time.perf_counter() - compile_start
  holder, i = [p_state], [0]

  def run():
    i[0] = (i[0] + 1) % len(batches)
    holder[0], metrics = p_train_step(holder[0], p_ids, batches[i[0]])
    metrics["loss"].block_until_ready()
  seconds = timed(run, budget_s)
  return {"windows_per_s": batch / seconds, "step_ms": seconds * 1e3, "devices": n,
          "gflops": step_flops(batch) / seconds / 1e9, "first_step_s": compile_s}


def sampling_rates(budget_s: float) -> dict:
  """Characters per second for 400 characters per row."""
  model = CharLSTM(VOCAB, HIDDEN)
  params = steps.create_train_state(jax.random.PRNGKey(0), model, MAXLEN, REFERENCE_TX).params
  out = {}
  for mode, fn in {**generate.GENERATORS, **generate.REFERENCE_GENERATORS}.items():
    for rows in (1, 4, 64):
      context = jnp.zeros((rows, MAXLEN), jnp.int32)
      temps = jnp.linspace(0.2, 1.2, rows)
      seconds = timed(lambda: fn(model, params, context, temps, jax.random.PRNGKey(0),
                                 400).block_until_ready(), budget_s)
      out[f"{mode}_batch{rows}"] = rows * 400 / seconds
  apply = jax.jit(model.apply)
  window = np.zeros((1, MAXLEN), np.int32)

  def per_call_loop(chars: int = 100):
    nonlocal window
    for _ in range(chars):
      logits = apply({"params": params}, jnp.asarray(window))
      nxt = int(jax.random.categorical(jax.random.PRNGKey(0), logits[0]))
      window = np.concatenate([window[:, 1:], [[nxt]]], axis=1)
  out["one_jitted_call_per_char"] = 100 / timed(per_call_loop, budget_s)
  return out


def write_generated_corpus(path: Path, megabytes: int) -> None:
  """About `megabytes` MB of word-like text with paragraph breaks, written in chunks."""
  rng = np.random.default_rng(0)
  words = np.array(["moe", "homer", "beer", "duff", "tavern", "springfield", "the", "a", "is",
                    "barney:", "lenny:", "carl:", "what", "you", "d'oh!", "\n", "\n\n"])
  with open(path, "w", encoding="utf-8") as f:
    for _ in range(megabytes):
      f.write(" ".join(rng.choice(words, size=200_000)) + " ")  # ~1 MB a chunk


def memory_probe(path: str) -> None:
  """Trains a few steps on `path`; prints this process's peak RSS in MB (run as a subprocess,
  so the figure is the trainer's alone)."""
  with tempfile.TemporaryDirectory() as tmp:
    config = Config(data=path, epochs=1, steps_per_epoch=5, val_fraction=0.0002,
                    sample_len=0, eval_batch_size=4096)
    loop.train_and_evaluate(config, Path(tmp) / "run")
  print(f"PEAK_RSS_MB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


def run_memory_probe(megabytes: int) -> tuple[float, float]:
  """(corpus size in MB, the training subprocess's peak RSS in MB)."""
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "generated.txt"
    write_generated_corpus(path, megabytes)
    result = subprocess.run([sys.executable, "-m", "jaxchar.bench", f"--memory_probe={path}"],
                            capture_output=True, text=True, check=True)
    return path.stat().st_size / 1e6, float(result.stdout.split("PEAK_RSS_MB=")[1].split()[0])


def main(argv) -> None:
  del argv
  if FLAGS.memory_probe:
    memory_probe(FLAGS.memory_probe)
    return
  budget = FLAGS.seconds
  results = {"jaxchar": jaxchar.__version__, "jax": jax.__version__,
             "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
             "local_devices": jax.local_device_count(), "machine": platform.processor() or
             platform.machine(), "date": time.strftime("%Y-%m-%d"),
             "matmul_gflops": matmul_gflops(budget), "train": {}}
  for batch in map(int, FLAGS.batch_sizes):
    base, ours = baseline_rate(batch, budget), trainer_rate(batch, budget)
    results["train"][batch] = {"baseline": base, "trainer": ours,
                               "speedup": ours["windows_per_s"] / base["windows_per_s"]}
  results["sampling_chars_per_s"] = sampling_rates(budget)
  if FLAGS.memory_mb:
    corpus_mb, peak_mb = run_memory_probe(FLAGS.memory_mb)
    results["memory_probe"] = {"corpus_mb": corpus_mb, "peak_rss_mb": peak_mb}
  results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(format_table(results))
  if FLAGS.json:
    Path(FLAGS.json).write_text(json.dumps(results, indent=2))


def format_table(r: dict) -> str:
  lines = [f"jaxchar {r['jaxchar']}, jax {r['jax']}, {r['backend']} ({r['device']}) x "
           f"{r['local_devices']}, {r['date']}",
           f"dense float32 matmul 2048^3: {r['matmul_gflops']:.1f} GFLOP/s", "",
           "training (hidden 128, window 60, vocab 65, float32)",
           "| batch | baseline windows/s | trainer windows/s | speedup | trainer GFLOP/s "
           "(% of matmul) | first step s |", "|---|---|---|---|---|---|"]
  for batch, t in r["train"].items():
    lines.append(f"| {batch} | {t['baseline']['windows_per_s']:,.0f} | "
                 f"{t['trainer']['windows_per_s']:,.0f} | {t['speedup']:.2f}x | "
                 f"{t['trainer']['gflops']:.1f} ({100 * t['trainer']['gflops'] / r['matmul_gflops']:.0f}%) | "
                 f"{t['trainer']['first_step_s']:.1f} |")
  lines += ["", "sampling, 400 characters per row (characters/s, all rows together)",
            "| mode | batch 1 | batch 4 | batch 64 |", "|---|---|---|---|"]
  s = r["sampling_chars_per_s"]
  for mode in {**generate.GENERATORS, **generate.REFERENCE_GENERATORS}:
    lines.append(f"| {mode} | {s[f'{mode}_batch1']:,.0f} | {s[f'{mode}_batch4']:,.0f} | "
                 f"{s[f'{mode}_batch64']:,.0f} |")
  lines.append(f"| one jitted call per character | {s['one_jitted_call_per_char']:,.0f} | | |")
  if "memory_probe" in r:
    m = r["memory_probe"]
    lines += ["", f"memory: training on a generated {m['corpus_mb']:.0f} MB corpus peaked at "
              f"{m['peak_rss_mb']:,.0f} MB RSS"]
  lines.append(f"this benchmark process peaked at {r['peak_rss_mb']:,.0f} MB RSS")
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
