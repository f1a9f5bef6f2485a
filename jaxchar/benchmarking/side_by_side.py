"""Benchmarks, measured side by side in one run: `python -m jaxchar.bench [--json=out.json]`.

Each configuration runs in a process of its own, set up as the program it stands for is: the
straightforward baseline as a plain JAX program (one device, the C library's default malloc),
the trainer as `jaxchar.train` runs (`--cpu_devices` rule, `host.keep_freed_memory`). The
configurations take turns, `--repeats` times, and the median of each is reported, so a slow
patch of a shared machine hits all of them. Speed is never asserted by tests.
"""

import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jaxchar
from jaxchar.options import option
from jaxchar.training.config import Config

HIDDEN, MAXLEN, BATCH = Config.hidden, Config.maxlen, Config.batch_size  # the reference's
CHUNK = 10  # steps dispatched before waiting for the last, as the trainer's loop does
LARGE_VOCAB, VAL_WINDOWS = 6000, 100_000
READ_STEPS = 20  # training batches the memory probe reads from a cold id cache
# name: (what it measures, how its process is set up). The trainer rows use --cpu_devices=0.
ROLES = {
    "baseline": "straightforward Flax step, 1 device, default malloc",
    "baseline_malloc": "the same with jaxchar's malloc setting",
    "trainer": "jaxchar's pmapped step (fused LSTM), one device per core",
    "trainer_flax": "the same with --lstm_impl=flax",
    "trainer_1dev": "jaxchar's step (fused), 1 device",
    "large_vocab": f"trainer (fused) at {LARGE_VOCAB:,} symbols; validating {VAL_WINDOWS:,} windows",
}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """What `python -m jaxchar.bench` measures."""

  json: str | None = option(None, "Also write the results to this JSON file.")
  seconds: float = option(5.0, "Approximate timing budget per measurement.")
  repeats: int = option(3, "Turns each training configuration takes (median reported).")
  train_batch: int = option(BATCH, "Global training batch size.")
  memory_mb: int = option(100, "Size of the generated corpus for the memory probe; 0 skips it.")
  large_vocab_flax: bool = option(True, f"Also time --lstm_impl=flax at {LARGE_VOCAB:,} symbols "
                                  "once (slow: the one-hot path).")
  role: str | None = option(None, "Internal: measure one configuration and print its JSON.")
  memory_probe: str | None = option(None, "Internal: train a few steps on this file and print "
                                    "the peak RSS and the id cache's reads per step.")
  probe_cache_dir: str | None = option(None, "The memory probe's id cache folder (default: "
                                       "beside its temporary run); one already holding the "
                                       "text's cache skips encoding it.")



def _spec(vocab: int, impl: str):
  """The benchmark's model: the reference's shape over `vocab` symbols, LSTM `impl`."""
  from jaxchar.core.spec import ModelSpec
  return ModelSpec.of(Config(lstm_impl=impl), vocab)


def timed(fn, budget_s: float) -> float:
  """Seconds per call of fn() (which blocks), after one warm-up call."""
  fn()
  calls, start = 0, time.perf_counter()
  while True:
    fn()
    calls += 1
    if time.perf_counter() - start >= budget_s:
      return (time.perf_counter() - start) / calls


def baseline_rate(batch: int, vocab: int, budget_s: float) -> dict:
  """The straightforward step: one-hot input, OptimizedLSTMCell in nn.RNN, jit, one device."""
  import jax
  from jaxchar.training import steps
  model = _spec(vocab, "flax").model()
  state = steps.create_train_state(jax.random.PRNGKey(0), model, MAXLEN, steps.make_optimizer(0.01))

  @jax.jit
  def step(state, inputs, targets):
    def loss_fn(params):
      return steps.cross_entropy(model.apply({"params": params}, inputs), targets).mean()
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  inputs = jax.random.randint(jax.random.PRNGKey(1), (batch, MAXLEN), 0, vocab)
  targets = jax.random.randint(jax.random.PRNGKey(2), (batch,), 0, vocab)
  holder = [state]

  def run():
    for _ in range(CHUNK):
      holder[0], loss = step(holder[0], inputs, targets)
    loss.block_until_ready()
  return {"windows_per_s": CHUNK * batch / timed(run, budget_s), "devices": 1}


def _trainer_setup(vocab: int, impl: str):
  """Replicated state, a corpus of random ids and the loop's pmapped steps."""
  import jax
  import numpy as np
  from jaxchar.core import data
  from jaxchar.training import steps
  ids = np.random.default_rng(0).integers(0, vocab, 400_000).astype(data.ids_dtype(vocab))
  model = _spec(vocab, impl).model()
  corpus = data.Corpus(data.Vocab("".join(map(chr, range(vocab)))), ids, None, len(ids), MAXLEN,
                       3, "")
  state = steps.create_train_state(jax.random.PRNGKey(0), model,
                                   MAXLEN, steps.make_optimizer(0.01))
  return steps.replicate(state), corpus, steps.pmapped_steps(MAXLEN)


def trainer_rate(batch: int, vocab: int, impl: str, budget_s: float) -> dict:
  """The trainer's own pmapped step over all local devices, each batch's windows read from
  the corpus on the host as the loop reads them."""
  import jax
  import numpy as np
  from jaxchar.core import data
  p_state, corpus, (p_train_step, _) = _trainer_setup(vocab, impl)
  devices = jax.local_device_count()
  holder, i = [p_state], [0]

  def run(steps: int = CHUNK):
    for _ in range(steps):
      i[0] = (i[0] + 1) % (corpus.num_train_windows // batch)
      starts = data.train_batch_starts(corpus, i[0], batch, 0, 1).reshape(devices, -1)
      holder[0], metrics = p_train_step(holder[0], *data.device_batch(corpus, starts),
                                        np.float32(1))
    metrics["loss"].block_until_ready()
  compile_start = time.perf_counter()
  run(1)
  first_step_s = time.perf_counter() - compile_start
  return {"windows_per_s": CHUNK * batch / timed(run, budget_s),
          "devices": jax.local_device_count(), "first_step_s": first_step_s}


def validation_seconds(vocab: int, windows: int) -> float:
  """Seconds for the trainer's validation pass over `windows` windows (compiled beforehand)."""
  import jax
  import numpy as np
  from jaxchar.training import validation
  from jaxchar.training.startup import global_eval_batch
  p_state, corpus, (_, p_eval_step) = _trainer_setup(vocab, "fused")
  starts = np.arange(corpus.num_chars - MAXLEN - 1)
  batch = global_eval_batch(Config.eval_batch_size, jax.device_count())
  subset = validation.ValidationSet
  validation.evaluate(p_eval_step, p_state, corpus, subset(starts[:batch]), batch)  # compiles
  start = time.perf_counter()
  validation.evaluate(p_eval_step, p_state, corpus, subset(starts[:windows]), batch)
  return time.perf_counter() - start


def sampling_rates(budget_s: float) -> dict:
  """Characters per second for 400 characters per row, one device (as the sampler runs)."""
  import jax
  import jax.numpy as jnp
  from jaxchar.sampling import generate
  from jaxchar.training import steps
  model = _spec(65, "fused").model()
  params = steps.create_train_state(jax.random.PRNGKey(0), model, MAXLEN,
                                    steps.make_optimizer(0.01)).params
  out = {}
  for mode, fn in {**generate.GENERATORS, **generate.REFERENCE_GENERATORS}.items():
    for rows in (1, 4, 64):
      context = jnp.zeros((rows, MAXLEN), jnp.int32)
      temps = jnp.linspace(0.2, 1.2, rows)
      seconds = timed(lambda: fn(model, params, context, temps, jax.random.PRNGKey(0),
                                 400).block_until_ready(), budget_s)
      out[f"{mode}_batch{rows}"] = rows * 400 / seconds
  return out


def run_role(role: str, batch: int, budget_s: float) -> dict:
  """Sets this process up as `role`'s program (before JAX's backend starts), then measures."""
  from jaxchar import host
  if role != "baseline":
    host.keep_freed_memory()
  if role in ("trainer", "trainer_flax", "large_vocab", "large_vocab_flax"):
    host.use_cpu_devices(0, batch)
  import jax
  if role.startswith("baseline"):
    out = baseline_rate(batch, 65, budget_s)
  elif role == "trainer_1dev":
    out = trainer_rate(batch, 65, "fused", budget_s)
  elif role in ("trainer", "trainer_flax"):
    out = trainer_rate(batch, 65, "flax" if role == "trainer_flax" else "fused", budget_s)
  elif role == "large_vocab_flax":
    out = trainer_rate(batch, LARGE_VOCAB, "flax", budget_s)
  elif role == "large_vocab":
    out = trainer_rate(batch, LARGE_VOCAB, "fused", budget_s)
    out["validation_s"] = validation_seconds(LARGE_VOCAB, VAL_WINDOWS)
  elif role == "sampling":
    out = sampling_rates(budget_s)
  else:
    raise ValueError(f"unknown role {role}")
  return {**out, "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind)}


def measure(role: str, config: BenchConfig) -> dict:
  """Runs `role` in a fresh process of this module and returns its JSON."""
  result = subprocess.run(
      [sys.executable, "-m", "jaxchar.bench", f"--role={role}", f"--seconds={config.seconds}",
       f"--train_batch={config.train_batch}"], capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f"benchmark role {role} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.split("RESULT=")[1])


def write_generated_corpus(path: Path, megabytes: int) -> None:
  """About `megabytes` MB of word-like text with paragraph breaks, written in chunks."""
  import numpy as np
  rng = np.random.default_rng(0)
  words = np.array(["moe", "homer", "beer", "duff", "tavern", "springfield", "the", "a", "is",
                    "barney:", "lenny:", "carl:", "what", "you", "d'oh!", "\n", "\n\n"])
  with open(path, "w", encoding="utf-8") as f:
    for _ in range(megabytes):
      f.write(" ".join(rng.choice(words, size=200_000)) + " ")  # ~1 MB a chunk


def memory_probe(path: str, cache_dir: str | None) -> None:
  """Prints the JSON of memory.probe's figures for `path` (run as a subprocess, so they are
  the trainer's alone)."""
  from jaxchar.benchmarking import memory
  print("MEMORY=" + json.dumps(memory.probe(path, cache_dir, READ_STEPS)))


def run_memory_probe(megabytes: int) -> dict:
  """The training subprocess's memory figures on a generated text of `megabytes` MB: the
  text's size and peak RSS (MB), peak RssAnon / RssFile, reads per step from its id cache."""
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "generated.txt"
    write_generated_corpus(path, megabytes)
    result = subprocess.run([sys.executable, "-m", "jaxchar.bench", f"--memory_probe={path}"],
                            capture_output=True, text=True, check=True)
    return {"corpus_mb": path.stat().st_size / 1e6,
            **json.loads(result.stdout.split("MEMORY=")[1].splitlines()[0])}


def run_benchmarks(config: BenchConfig) -> dict:
  """Every role, `config.repeats` interleaved turns, then sampling and the memory probe."""
  from jaxchar import host
  runs = {role: [] for role in ROLES}
  for turn in range(config.repeats):
    for role in ROLES:
      runs[role].append(measure(role, config))
      print(f"turn {turn + 1}/{config.repeats} {role}: "
            f"{runs[role][-1]['windows_per_s']:,.0f} windows/s", file=sys.stderr, flush=True)
  results = {"jaxchar": jaxchar.__version__, "date": time.strftime("%Y-%m-%d"),
             "machine": platform.processor() or platform.machine(), "cores": host.num_cores(),
             "batch_size": config.train_batch, "repeats": config.repeats, "runs": runs,
             "median": {role: statistics.median(r["windows_per_s"] for r in rs)
                        for role, rs in runs.items()}}
  results["validation_s"] = statistics.median(r["validation_s"] for r in runs["large_vocab"])
  results["backend"], results["device"] = runs["trainer"][0]["backend"], runs["trainer"][0]["device"]
  results["devices"] = runs["trainer"][0]["devices"]
  if config.large_vocab_flax:
    results["large_vocab_flax"] = measure("large_vocab_flax", config)["windows_per_s"]
  results["sampling_chars_per_s"] = measure("sampling", config)
  if config.memory_mb:
    results["memory_probe"] = run_memory_probe(config.memory_mb)
  return results


def format_table(r: dict) -> str:
  m = r["median"]
  lines = [f"jaxchar {r['jaxchar']}, {r['backend']} ({r['device']}), {r['cores']} cores, "
           f"{r['date']}; median of {r['repeats']} interleaved turns",
           f"training, hidden {HIDDEN}, window {MAXLEN}, batch {r['batch_size']}, float32",
           "| configuration | windows/s | vs baseline |", "|---|---|---|"]
  for role, what in ROLES.items():
    devices = r["runs"][role][0]["devices"]
    lines.append(f"| {role}: {what} ({devices} device{'s' * (devices > 1)}) | {m[role]:,.0f} | "
                 f"{m[role] / m['baseline']:.2f}x |")
  lines += ["", f"large vocabulary ({LARGE_VOCAB:,} symbols, reference objective): training "
            f"{m['large_vocab']:,.0f} windows/s = {m['large_vocab'] / m['trainer']:.2f}x the "
            f"65-symbol trainer; validating {VAL_WINDOWS:,} windows {r['validation_s']:.1f} s"]
  if "large_vocab_flax" in r:
    lines.append(f"  --lstm_impl=flax at {LARGE_VOCAB:,} symbols: {r['large_vocab_flax']:,.0f} "
                 "windows/s")
  lines += ["", "sampling, 400 characters per row, 1 device (characters/s, all rows together)",
            "| mode | batch 1 | batch 4 | batch 64 |", "|---|---|---|---|"]
  s = r["sampling_chars_per_s"]
  for mode in sorted({k.rsplit("_batch", 1)[0] for k in s if "_batch" in k}):
    lines.append(f"| {mode} | {s[f'{mode}_batch1']:,.0f} | {s[f'{mode}_batch4']:,.0f} | "
                 f"{s[f'{mode}_batch64']:,.0f} |")
  if "memory_probe" in r:
    p = r["memory_probe"]
    lines += ["", f"memory: training on a generated {p['corpus_mb']:.0f} MB corpus peaked at "
              f"{p['peak_rss_mb']:,.0f} MB RSS"]
    from jaxchar.benchmarking import memory
    lines += memory.table_lines(p)
  return "\n".join(lines)

