"""The device benchmark's suite (`python -m jaxchar.bench_device` runs it): what it measures at
each profile's sizes, each cell's measurement, and the Markdown table."""

import contextlib
import dataclasses
import os
import platform
import time

import jaxchar
from jaxchar.options import option

VOCAB, CHUNK = 65, 10  # the reference alphabet; steps dispatched before waiting for the last
@dataclasses.dataclass(frozen=True)
class Sizes:
  """What one profile measures."""

  hidden: int
  maxlen: int
  batches: tuple[int, ...]  # global training batches
  unroll_batch: int  # the global batch the unrolls are measured at
  unrolls: tuple[int, ...]  # lax.scan unrolls measured besides 1
  rows: tuple[int, ...]  # sampling rows
  sample_len: int
  val_windows: int
  corpus_chars: int
  seconds: float  # timing per cell, after its first (compiling) call


PROFILES = {
    "device": Sizes(128, 60, (128, 1024, 8192, 65536), 1024, (2, 4, 8), (1, 64, 1024), 400,
                    200_000, 2_000_000, 1.0),
    # Every kind of cell once (each is a compile of about a second here): for the test suite.
    "cpu": Sizes(8, 10, (8,), 8, (4,), (2,), 8, 256, 5_000, 0.02),
}


@dataclasses.dataclass(frozen=True)
class DeviceBenchConfig:
  """What `python -m jaxchar.bench_device` measures."""

  json: str | None = option(None, "Write the results to this JSON file (and the table beside "
                            "it, .md).")
  profile: str = option("device", "Sizes: device (the reference model, batches 128 to 65,536) "
                        "or cpu (the same suite at tiny sizes).")
  budget_s: float = option(270.0, "Stop starting new measurements after this many seconds.")




@contextlib.contextmanager
def scan_unroll(unroll: int):
  """Every lax.scan traced inside (the LSTM's loops over time, fused or Flax) unrolls `unroll`
  steps per loop iteration."""
  import jax
  original = jax.lax.scan

  def unrolled(*args, **kwargs):
    return original(*args, **{**kwargs, "unroll": unroll})  # over Flax's explicit unroll=1
  jax.lax.scan = unrolled if unroll > 1 else original
  try:
    yield
  finally:
    jax.lax.scan = original


def _model(sizes: Sizes, impl: str, dtype: str):
  from jaxchar.core.spec import ModelSpec
  from jaxchar.training.config import Config
  return ModelSpec.of(Config(hidden=sizes.hidden, maxlen=sizes.maxlen, dtype=dtype,
                             lstm_impl=impl), VOCAB).model()


def _corpus(sizes: Sizes):
  """A corpus of random ids (every window a training window), as the loop reads windows from
  its text: on the host, each batch's windows sent with the step."""
  import numpy as np
  from jaxchar.core import data
  ids = np.random.default_rng(0).integers(0, VOCAB, sizes.corpus_chars).astype(
      data.ids_dtype(VOCAB))
  return data.Corpus(data.Vocab("".join(map(chr, range(VOCAB)))), ids, None, len(ids),
                     sizes.maxlen, 1, "")


def train_cell(sizes: Sizes, corpus, batch: int, impl: str, dtype: str, unroll: int) -> dict:
  """The trainer's pmapped step (steps.pmapped_steps), windows gathered on the devices."""
  import jax
  from jaxchar.core import data
  import numpy as np
  from jaxchar.training import steps
  state = steps.create_train_state(jax.random.PRNGKey(0), _model(sizes, impl, dtype),
                                   sizes.maxlen, steps.make_optimizer(0.01))
  holder = [steps.replicate(state)]
  devices, num_batches = jax.local_device_count(), max(1, corpus.num_train_windows // batch)
  p_train_step, _ = steps.pmapped_steps(sizes.maxlen)

  def run(count: int = CHUNK) -> None:
    for i in range(count):
      starts = data.train_batch_starts(corpus, i % num_batches, batch, 0, 1)
      holder[0], metrics = p_train_step(
          holder[0], *data.device_batch(corpus, starts.reshape(devices, -1)), np.float32(1))
    metrics["loss"].block_until_ready()
  with scan_unroll(unroll):  # traced (and compiled) inside: later calls reuse it
    start = time.perf_counter()
    run(1)
    compile_s = time.perf_counter() - start
  calls, start = 0, time.perf_counter()
  while calls == 0 or time.perf_counter() - start < sizes.seconds:
    run()
    calls += 1
  return {"windows_per_s": calls * CHUNK * batch / (time.perf_counter() - start),
          "compile_s": compile_s}


def validation_cell(sizes: Sizes, corpus) -> dict:
  """The trainer's validation pass (validation.evaluate) at its default eval batch, fused,
  float32."""
  import jax
  import numpy as np
  from jaxchar.training import steps, validation
  from jaxchar.training.config import Config
  from jaxchar.training.startup import global_eval_batch
  starts = np.arange(corpus.num_chars - sizes.maxlen - 1)  # any window validates the same way
  state = steps.create_train_state(jax.random.PRNGKey(0), _model(sizes, "fused", "float32"),
                                   sizes.maxlen, steps.make_optimizer(0.01))
  p_state = steps.replicate(state)
  _, p_eval_step = steps.pmapped_steps(sizes.maxlen)
  batch = global_eval_batch(Config.eval_batch_size, jax.device_count())
  start = time.perf_counter()
  windows = validation.ValidationSet
  validation.evaluate(p_eval_step, p_state, corpus, windows(starts[:batch]), batch)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  validation.evaluate(p_eval_step, p_state, corpus, windows(starts[:sizes.val_windows]), batch)
  return {"windows_per_s": sizes.val_windows / (time.perf_counter() - start),
          "compile_s": compile_s, "eval_batch": batch}


def sampling_cell(sizes: Sizes, mode: str, rows: int) -> dict:
  """The sampler's generation call (one device), sample_len characters per row."""
  import jax
  import jax.numpy as jnp
  from jaxchar.sampling import generate
  from jaxchar.training import steps
  model = _model(sizes, "fused", "float32")
  params = steps.create_train_state(jax.random.PRNGKey(0), model, sizes.maxlen,
                                    steps.make_optimizer(0.01)).params
  context, temps = jnp.zeros((rows, sizes.maxlen), jnp.int32), jnp.linspace(0.2, 1.2, rows)
  fn = generate.GENERATORS[mode]

  def run():
    fn(model, params, context, temps, jax.random.PRNGKey(0), sizes.sample_len).block_until_ready()
  start = time.perf_counter()
  run()
  compile_s = time.perf_counter() - start
  calls, start = 0, time.perf_counter()
  while calls == 0 or time.perf_counter() - start < sizes.seconds:
    run()
    calls += 1
  return {"chars_per_s": calls * rows * sizes.sample_len / (time.perf_counter() - start),
          "compile_s": compile_s}


def device_info() -> dict:
  import jax
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  memory = stats.get("bytes_limit") or (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  return {"backend": jax.default_backend(), "device": device.device_kind,
          "local_devices": jax.local_device_count(), "memory_gib": memory / 2**30,
          "memory_is": "device" if stats.get("bytes_limit") else "host RAM",
          "jax": jax.__version__, "host": platform.node()}


def cells(sizes: Sizes) -> list[tuple[str, dict]]:
  """Every measurement in order: (kind, arguments)."""
  out = [("train", dict(batch=b, impl=i, dtype=d, unroll=1))
         for i in ("fused", "flax") for d in ("float32", "bfloat16") for b in sizes.batches]
  out += [("train", dict(batch=sizes.unroll_batch, impl=i, dtype=d, unroll=u))
          for i in ("fused", "flax") for d in ("float32", "bfloat16") for u in sizes.unrolls]
  out += [("validation", {})]
  out += [("sampling", dict(mode=m, rows=r)) for m in ("window", "stateful") for r in sizes.rows]
  return out


def run_suite(config: DeviceBenchConfig) -> dict:
  import jax
  sizes = PROFILES[config.profile]
  deadline = time.monotonic() + config.budget_s
  started = time.perf_counter()
  corpus = _corpus(sizes)
  results = []
  for kind, args in cells(sizes):
    entry = {"kind": kind, **args}
    if time.monotonic() > deadline:
      entry["skipped"] = f"time budget ({config.budget_s:.0f} s) spent"
    else:
      try:
        entry.update(train_cell(sizes, corpus, **args) if kind == "train" else
                     validation_cell(sizes, corpus) if kind == "validation" else
                     sampling_cell(sizes, **args))
      except jax.errors.JaxRuntimeError as error:  # out of memory at the largest batches
        entry["error"] = str(error).splitlines()[0][:200]
    print(_cell_line(entry), flush=True)
    results.append(entry)
  return {"jaxchar": jaxchar.__version__, "date": time.strftime("%Y-%m-%d"),
          "profile": config.profile, "sizes": dataclasses.asdict(sizes), **device_info(),
          "seconds": time.perf_counter() - started, "cells": results}


def _figure(entry: dict) -> str:
  if "skipped" in entry:
    return "skipped"
  if "error" in entry:
    return "error"
  rate = entry.get("windows_per_s", entry.get("chars_per_s"))
  return f"{rate:,.0f} ({entry['compile_s']:.1f} s)"


def _cell_line(entry: dict) -> str:
  what = ", ".join(f"{k} {v}" for k, v in entry.items()
                   if k not in ("windows_per_s", "chars_per_s", "compile_s", "eval_batch"))
  return f"{what}: {_figure(entry)}"


def format_table(r: dict) -> str:
  """The Markdown for BENCHMARKS.md: rate per second (first call's compile + run, s)."""
  s, train = r["sizes"], [c for c in r["cells"] if c["kind"] == "train"]
  lines = [f"jaxchar {r['jaxchar']}, jax {r['jax']}, {r['local_devices']} x {r['device']} "
           f"({r['backend']}, {r['memory_gib']:.1f} GiB {r['memory_is']}), {r['date']}, "
           f"profile {r['profile']}: LSTM({s['hidden']}), window {s['maxlen']}, {VOCAB} symbols; "
           f"suite {r['seconds']:.0f} s", "",
           "training, windows/s over all devices (compiling: the first step, s)",
           "| cell | dtype | " + " | ".join(f"batch {b:,}" for b in s["batches"]) + " |",
           "|---|---|" + "---|" * len(s["batches"])]
  for impl in ("fused", "flax"):
    for dtype in ("float32", "bfloat16"):
      row = {c["batch"]: c for c in train
             if (c["impl"], c["dtype"], c["unroll"]) == (impl, dtype, 1)}
      lines.append(f"| {impl} | {dtype} | " + " | ".join(
          _figure(row[b]) for b in s["batches"]) + " |")
  lines += ["", f"lax.scan unroll at batch {s['unroll_batch']:,} (unroll 1 as above)",
            "| cell | dtype | " + " | ".join(f"unroll {u}" for u in (1, *s["unrolls"])) + " |",
            "|---|---|" + "---|" * (1 + len(s["unrolls"]))]
  for impl in ("fused", "flax"):
    for dtype in ("float32", "bfloat16"):
      row = {c["unroll"]: c for c in train if (c["impl"], c["dtype"], c["batch"]) ==
             (impl, dtype, s["unroll_batch"])}
      lines.append(f"| {impl} | {dtype} | " + " | ".join(
          _figure(row[u]) for u in (1, *s["unrolls"])) + " |")
  val = next(c for c in r["cells"] if c["kind"] == "validation")
  lines += ["", f"validation (fused, float32), {s['val_windows']:,} windows: {_figure(val)} "
            "windows/s", "",
            f"sampling, {s['sample_len']} characters per row, 1 device: characters/s (compile, s)",
            "| mode | " + " | ".join(f"{n:,} row{'s' * (n > 1)}" for n in s["rows"]) + " |",
            "|---|" + "---|" * len(s["rows"])]
  for mode in ("window", "stateful"):
    row = {c["rows"]: c for c in r["cells"] if c["kind"] == "sampling" and c["mode"] == mode}
    lines.append(f"| {mode} | " + " | ".join(_figure(row[n]) for n in s["rows"]) + " |")
  return "\n".join(lines)
