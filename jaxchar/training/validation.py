"""Validation in the training loop: the mean loss over the validation windows, and what one
window costs (a budgeted run sizes its validation by it)."""

import time

import jax
import numpy as np

from jaxchar.core import data, progress
from jaxchar.training import distributed, steps


def evaluate(p_eval_step, p_state, corpus: data.Corpus, val_starts: np.ndarray,
             batch_size: int) -> float:
  """Mean next-character cross-entropy (nats) over the windows at `val_starts`, all processes;
  each process reads only its share of each batch's windows."""
  num_batches = -(-len(val_starts) // batch_size)
  totals = []
  with progress.ValidationProgress(num_batches, len(val_starts),
                                   enabled=distributed.is_primary()) as bar:
    for starts, weights in data.eval_batches(val_starts, batch_size, jax.device_count()):
      totals.append(p_eval_step(p_state, *data.device_batch(corpus,
                                                            distributed.process_slice(starts)),
                                distributed.process_slice(weights)))
      if len(totals) > 1:  # the previous batch: keeps one batch queued behind the wait
        jax.block_until_ready(totals[-2])
        bar.update(len(totals) - 1)
    bar.update(num_batches)
  summed = steps.first_replica(totals)  # psum'd: every device holds the totals
  return sum(float(t["loss_sum"]) for t in summed) / sum(float(t["count"]) for t in summed)


def seconds_per_window(p_eval_step, p_state, corpus: data.Corpus, val_starts: np.ndarray,
                       batch_size: int) -> float:
  """What validating one window costs, from one batch timed after compiling it: process 0's
  figure on every process (all must validate on the same windows)."""
  starts, weights = next(iter(data.eval_batches(val_starts, batch_size, jax.device_count())))
  args = (*data.device_batch(corpus, distributed.process_slice(starts)),
          distributed.process_slice(weights))
  jax.block_until_ready(p_eval_step(p_state, *args))
  began = time.perf_counter()
  jax.block_until_ready(p_eval_step(p_state, *args))
  return distributed.from_primary(time.perf_counter() - began) / batch_size
