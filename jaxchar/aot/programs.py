"""Every program a run executes, built with the run's exact shapes as abstract arguments placed
on a topology's compile-only devices, and compiled: the pmapped train and eval steps, the
trainer's per-epoch samples, and the server's generation calls."""

import dataclasses
import re
import time

import jax
import numpy as np
from jax.sharding import SingleDeviceSharding

from jaxchar.aot import flops
from jaxchar.core.data import ids_dtype
from jaxchar.core.model import CharLSTM
from jaxchar.core.spec import ModelSpec
from jaxchar.sampling import generate
from jaxchar.sampling.generate import GENERATORS
from jaxchar.sampling.sampler import CHUNK
from jaxchar.serving.batcher import batch_buckets
from jaxchar.serving.config import ServeConfig
from jaxchar.training import steps
from jaxchar.training.config import Config
from jaxchar.training.startup import global_eval_batch


@dataclasses.dataclass(frozen=True)
class Compiled:
  """One compiled program: its memory on one chip, compile time, and FLOPs."""

  name: str
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  compile_s: float
  flops: float  # analytic, every loop trip; per chip
  xla_flops: float  # XLA's cost analysis (a loop body counted once); per chip
  xla_bytes: float
  out_of_memory: str | None = None  # the compiler's refusal, when it ran out of HBM

  @property
  def peak_bytes(self) -> int:
    """Live bytes on one chip while it runs (donated arguments reuse their buffers); for a
    program the compiler refused, at least its temporaries and arguments."""
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes


_GIGA = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}  # XLA's sizes in its messages: 18.59G


def _out_of_memory(name: str, error: Exception, lowered, seconds: float,
                   flop_count: float) -> Compiled:
  """The record of a program XLA refused for want of HBM: its temporaries as XLA states them."""
  message = " ".join(str(error).split())
  needed = re.search(r"required for [^(]*\((\d+(?:\.\d+)?)([KMGT])\)", message)
  temp = int(float(needed.group(1)) * _GIGA[needed.group(2)]) if needed else 0
  arguments = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize // (a.shape[0] or 1)
                  if pmapped else int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
                  for a, pmapped in lowered)
  return Compiled(name, arguments, 0, temp, 0, seconds, flop_count, 0.0, 0.0,
                  out_of_memory=message[:300])


def _compile(name: str, lowered_fn, flop_count: float, arguments=()) -> Compiled:
  """Compiles; `arguments` are (abstract array, pmapped) pairs, sized if XLA runs out of HBM."""
  start = time.perf_counter()
  try:
    compiled = lowered_fn().compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return _out_of_memory(name, e, arguments, time.perf_counter() - start, flop_count)
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}  # None on some backends
  return Compiled(name, memory.argument_size_in_bytes, memory.output_size_in_bytes,
                  memory.temp_size_in_bytes, memory.alias_size_in_bytes, seconds, flop_count,
                  float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)))


def _abstract(tree, leading: int | None = None, sharding=None):
  """ShapeDtypeStructs of `tree`'s leaves, with a leading device axis if given."""
  def struct(x):
    shape = (leading, *x.shape) if leading else x.shape
    return jax.ShapeDtypeStruct(shape, x.dtype, sharding=sharding)
  return jax.tree_util.tree_map(struct, tree)


def _leaves(pmapped: bool, *trees) -> list[tuple]:
  return [(leaf, pmapped) for leaf in jax.tree_util.tree_leaves(trees)]


def flop_shape(config: Config, vocab: int) -> flops.Shape:
  """What the FLOP and traffic counts of a run's programs depend on."""
  return flops.Shape.of(ModelSpec.of(config, vocab), config.objective == "every")


def abstract_state(config: Config, vocab: int):
  """The train state's shapes, as `start_run` builds it (no arrays are made)."""
  model = ModelSpec.of(config, vocab).model(config.dropout, config.weight_drop)
  tx, _ = steps.optimizer_from_config(config, steps_per_epoch=1)
  return jax.eval_shape(lambda key: steps.create_train_state(key, model, config.maxlen, tx),
                        jax.random.PRNGKey(0))


def _windows(config: Config, vocab: int, n: int, batch: int) -> jax.ShapeDtypeStruct:
  """What data.device_batch gives each step: every device's windows end to end."""
  return jax.ShapeDtypeStruct((n, batch // n * (config.maxlen + 1)), ids_dtype(vocab))


def train_step(config: Config, vocab: int, corpus_chars: int, devices, batch: int) -> Compiled:
  """The pmapped train step at global `batch` over `devices`."""
  n = len(devices)
  state = _abstract(abstract_state(config, vocab), n)
  ids = _windows(config, vocab, n, batch)  # the batch's windows: the corpus stays on the host
  starts = jax.ShapeDtypeStruct((n, batch // n), np.int32)
  lr_factor = jax.ShapeDtypeStruct((), np.float32)
  p_train, _ = steps.pmapped_steps(config.maxlen, config.objective == "every", devices=devices)
  shape = flop_shape(config, vocab)
  return _compile(f"train step (global batch {batch})",
                  lambda: p_train.lower(state, ids, starts, lr_factor),
                  flops.train_step_flops(shape, batch) / n, _leaves(True, state, ids, starts))


def eval_step(config: Config, vocab: int, corpus_chars: int, devices) -> Compiled:
  """The pmapped validation step at the run's eval batch (rounded up as the run rounds it)."""
  n = len(devices)
  batch = global_eval_batch(config.eval_batch_size, n)
  state = _abstract(abstract_state(config, vocab), n)
  ids = _windows(config, vocab, n, batch)
  starts = jax.ShapeDtypeStruct((n, batch // n), np.int32)
  weights = jax.ShapeDtypeStruct((n, batch // n), np.float32)
  _, p_eval = steps.pmapped_steps(config.maxlen, devices=devices)
  shape = flop_shape(config, vocab)
  return _compile(f"eval step (global batch {batch})",
                  lambda: p_eval.lower(state, ids, starts, weights),
                  flops.eval_step_flops(shape, batch) / n,
                  _leaves(True, state, ids, starts, weights))


def _generation(name: str, model: CharLSTM, params, device, rows: int, length: int, mode: str,
                shape: flops.Shape, per_row_keys: bool) -> Compiled:
  on = SingleDeviceSharding(device)
  params = _abstract(params, sharding=on)
  context = jax.ShapeDtypeStruct((rows, shape.maxlen), np.int32, sharding=on)
  temps = jax.ShapeDtypeStruct((rows,), np.float32, sharding=on)
  key = jax.ShapeDtypeStruct((rows, 2) if per_row_keys else (2,), np.uint32, sharding=on)
  per_row = jax.ShapeDtypeStruct((rows,), np.int32, sharding=on)
  args = (context, temps, key, length) + ((per_row, per_row) if per_row_keys else ())
  arrays = tuple(a for a in args if not isinstance(a, int))
  return _compile(name, lambda: GENERATORS[mode].lower(model, params, *args),
                  flops.generation_flops(shape, rows, length, mode),
                  _leaves(False, params, *arrays))


def epoch_samples(config: Config, vocab: int, device) -> Compiled:
  """The trainer's per-epoch samples: every temperature as one batch, on one chip."""
  spec = ModelSpec.of(config, vocab)
  model, params = spec.model(), spec.abstract_params()
  rows = len(config.temperatures)
  return _generation(f"epoch samples ({rows} x {config.sample_len} characters, "
                     f"{config.sample_mode})", model, params, device, rows, config.sample_len,
                     config.sample_mode, flop_shape(config, vocab), per_row_keys=False)


def server_generation(config: Config, vocab: int, device, mode: str,
                      serve: ServeConfig = ServeConfig()) -> list[Compiled]:
  """The server's two calls at its largest batch: turning primes into states, and writing one
  chunk of characters from them, as `jaxchar.serve` builds the model from the checkpoint's
  spec (the run's dtype and LSTM implementation)."""
  spec = ModelSpec.of(config, vocab)
  model = spec.model()
  params = _abstract(spec.abstract_params(), sharding=SingleDeviceSharding(device))
  shape = flop_shape(config, vocab)
  rows = batch_buckets(serve.max_batch)[-1]
  on = SingleDeviceSharding(device)
  context = jax.ShapeDtypeStruct((rows, shape.maxlen), np.int32, sharding=on)
  per_row = jax.ShapeDtypeStruct((rows,), np.int32, sharding=on)
  state = jax.eval_shape(lambda c, n: generate.start_rows(model, params, mode, c, n),
                         context, per_row)
  state = _abstract(state, sharding=on)
  temps = jax.ShapeDtypeStruct((rows,), np.float32, sharding=on)
  per_row_u32 = jax.ShapeDtypeStruct((rows,), np.uint32, sharding=on)
  prime_flops = flops.generation_flops(shape, rows, 0, mode)
  return [
      _compile(f"server {mode} start ({rows} rows)",
               lambda: generate.start_rows.lower(model, params, mode, context, per_row),
               prime_flops, _leaves(False, params, context, per_row)),
      _compile(f"server {mode} chunk ({rows} rows x {CHUNK} characters)",
               lambda: generate.advance_rows.lower(model, params, mode, state, temps, per_row,
                                                   temps, per_row_u32, per_row_u32, per_row_u32,
                                                   CHUNK),
               flops.generation_flops(shape, rows, CHUNK, mode) - prime_flops,
               _leaves(False, params, state, temps, per_row, per_row_u32))]


def analytic_check(config: Config, vocab: int, devices) -> tuple[float, float]:
  """(XLA's FLOPs, the analytic count) of the train step on a 1-character window, where a loop
  body runs once and XLA's count is complete: how far the analytic formula is from XLA's."""
  one = dataclasses.replace(config, maxlen=1)
  n = len(devices)
  compiled = train_step(one, vocab, 64, devices, n * max(1, config.batch_size // n))
  return compiled.xla_flops, compiled.flops
