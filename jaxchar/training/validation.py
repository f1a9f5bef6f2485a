"""Validation in the training loop: the mean loss over the validation windows, what a
fine-tuning run starts from, and the window count a --time_budget run can afford."""

import math
import time

import jax
import numpy as np

from jaxchar.core import data, progress
from jaxchar.training import distributed
from jaxchar.training.distributed import say
from jaxchar.training.run import Run

# A --time_budget run validates on as many windows as cost this share of an epoch's training
# time (at least MIN_BUDGET_WINDOWS, at most --val_windows).
BUDGET_VAL_SHARE = 0.1
MIN_BUDGET_WINDOWS = 2_000


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
  loss_sum = sum(float(t["loss_sum"][0]) for t in totals)
  count = sum(float(t["count"][0]) for t in totals)
  return loss_sum / count


def validate_the_start(run: Run, p_eval_step) -> None:
  """A run started from another's parameters (--init_from) first says, and records as
  kind "start", what those score on this text's validation windows: where fine-tuning begins."""
  val_loss = evaluate(p_eval_step, run.p_state, run.corpus, run.val_starts, run.eval_batch_size)
  began = run.run_meta["init_from"]
  say(f"before training: val loss {val_loss:.4f} nats ({val_loss / math.log(2):.3f} bits/char) "
      f"with the parameters of {began['workdir']} step {began['step']}")
  if run.log:
    run.log.write({"kind": "start", "step": run.global_step, "epoch": 0, "val_loss": val_loss,
                   "val_bpc": val_loss / math.log(2), "elapsed_s": run.elapsed()})


def time_validation(run: Run, p_eval_step) -> None:
  """Times one validation batch (after compiling it): what --time_budget keeps in reserve for
  the first epoch's end, and what sizes the validation."""
  batches = data.eval_batches(run.val_starts, run.eval_batch_size, jax.device_count())
  starts, weights = next(iter(batches), (None, None))
  if starts is None:
    return
  args = (*data.device_batch(run.corpus, distributed.process_slice(starts)),
          distributed.process_slice(weights))
  jax.block_until_ready(p_eval_step(run.p_state, *args))
  began = time.perf_counter()
  jax.block_until_ready(p_eval_step(run.p_state, *args))
  seconds = time.perf_counter() - began
  # All processes must validate on the same windows: process 0's timing decides.
  run.budget.window_s = distributed.from_primary(seconds) / run.eval_batch_size
  windows = len(run.val_starts)
  if "budget_val_windows" not in run.run_meta:  # the first epoch end sizes it: at most a share
    windows = _affordable_windows(run, run.budget.seconds)  # of the whole budget
  run.budget.expect_end(run.budget.window_s * windows)


def _affordable_windows(run: Run, seconds: float) -> int:
  """Validation windows costing BUDGET_VAL_SHARE of `seconds` (MIN_BUDGET_WINDOWS at least, all
  of run.val_starts at most)."""
  affordable = int(BUDGET_VAL_SHARE * seconds / max(run.budget.window_s, 1e-12))
  return min(len(run.val_starts), max(MIN_BUDGET_WINDOWS, affordable))


def size_validation(run: Run, train_seconds: float) -> None:
  """A --time_budget run's first validation: as many evenly spaced windows as cost
  BUDGET_VAL_SHARE of this epoch's `train_seconds`, kept for the whole run (saved with it)."""
  if "budget_val_windows" in run.run_meta or not run.budget.window_s:
    return
  count = _affordable_windows(run, train_seconds)
  run.run_meta["budget_val_windows"] = count
  if count < len(run.val_starts):
    run.val_starts = data.validation_starts(run.corpus, count)
    say(f"validating on {count:,} evenly spaced windows from here on: about "
        f"{BUDGET_VAL_SHARE:.0%} of an epoch's training time (--time_budget; --val_windows "
        "caps it)")
