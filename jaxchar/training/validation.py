"""Validation in the training loop: what is scored (windows, or --carry_state's streams), the
mean loss over it, and what one scored character costs (a budgeted run sizes its validation
by it)."""

import dataclasses
import time

import jax
import numpy as np

from jaxchar.core import data, progress
from jaxchar.training import distributed, steps


@dataclasses.dataclass(frozen=True)
class ValidationSet:
  """What validation scores: the windows at `starts` (the character after each), or rows of
  streams (`starts`: each row's input start; it scores its targets [low, high) after reading
  `width` characters from zero state)."""

  starts: np.ndarray
  low: np.ndarray | None = None
  high: np.ndarray | None = None
  width: int = 0

  @classmethod
  def of(cls, corpus: data.Corpus, limit: int, streams: bool) -> "ValidationSet":
    """All the validation text's windows up to `limit` of them, else `limit` evenly spaced (as
    streams: rows scoring about as many characters)."""
    if streams:
      return cls(*data.stream_rows(corpus, limit))
    return cls(data.validation_starts(corpus, limit))

  @property
  def count(self) -> int:
    """How many characters it scores."""
    return len(self.starts) if self.low is None else int((self.high - self.low).sum())

  def batches(self, batch_size: int):
    """(starts, the steps' other inputs) per device-shaped batch, padded to full size."""
    num_devices = jax.device_count()
    if self.low is None:
      for starts, weights in data.eval_batches(self.starts, batch_size, num_devices):
        yield starts, (weights,)
      return
    rows = np.arange(len(self.starts))
    for picked, weights in data.eval_batches(rows, batch_size, num_devices):
      starts = self.starts[picked]  # the targets a row scores, as offsets in its targets:
      yield starts, (self.low[picked] - starts - 1, self.high[picked] - starts - 1, weights)


def evaluate(p_eval_step, p_state, corpus: data.Corpus, val: ValidationSet,
             batch_size: int) -> float:
  """Mean next-character cross-entropy (nats) over what `val` scores, all processes; each
  process reads only its share of each batch."""
  num_batches = -(-len(val.starts) // batch_size)
  width = val.width + 1 if val.width else None
  totals = []
  with progress.ValidationProgress(num_batches, val.count,
                                   enabled=distributed.is_primary()) as bar:
    for starts, others in val.batches(batch_size):
      totals.append(p_eval_step(p_state, *data.device_batch(
          corpus, distributed.process_slice(starts), width),
          *(distributed.process_slice(x) for x in others)))
      if len(totals) > 1:  # the previous batch: keeps one batch queued behind the wait
        jax.block_until_ready(totals[-2])
        bar.update(len(totals) - 1)
    bar.update(num_batches)
  summed = steps.first_replica(totals)  # psum'd: every device holds the totals
  return sum(float(t["loss_sum"]) for t in summed) / sum(float(t["count"]) for t in summed)


def seconds_per_window(p_eval_step, p_state, corpus: data.Corpus, val: ValidationSet,
                       batch_size: int) -> float:
  """What scoring one character costs, from one batch timed after compiling it: process 0's
  figure on every process (all must validate on the same windows)."""
  starts, others = next(val.batches(batch_size))
  width = val.width + 1 if val.width else None
  args = (*data.device_batch(corpus, distributed.process_slice(starts), width),
          *(distributed.process_slice(x) for x in others))
  jax.block_until_ready(p_eval_step(p_state, *args))
  began = time.perf_counter()
  jax.block_until_ready(p_eval_step(p_state, *args))
  scored = batch_size if val.low is None else batch_size * max(1, val.count // len(val.starts))
  return distributed.from_primary(time.perf_counter() - began) / scored
