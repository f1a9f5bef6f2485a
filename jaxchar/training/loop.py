"""The training loop: pmapped steps over every device of every process, validation, samples,
checkpoints and records. Only process 0 prints and writes records; all processes checkpoint."""

import functools
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils
from jax.experimental import multihost_utils

from jaxchar.core import data, storage
from jaxchar.errors import UserError
from jaxchar.core import progress
from jaxchar.training import budget, distributed, init_from, outcome, plots, steps, validation
from jaxchar.training.config import Config
from jaxchar.training.distributed import say
from jaxchar.training.preemption import StopRequests
from jaxchar.training.run import Run, nothing_to_train, start_run
from jaxchar.training.samples import epoch_samples

LOG_EVERY = 10  # steps between progress updates and stop checks (each is a host sync)


def _train_on_starts(state, ids, starts, lr_factor=None, *, maxlen: int, every_position: bool):
  """`ids`: this device's windows end to end (data.device_batch), `starts`: where each begins."""
  return steps.train_step(state, data.gather_windows(ids, starts, maxlen, every_position),
                          lr_factor)


def _eval_on_starts(state, ids, starts, weights, *, maxlen: int):
  batch = data.gather_windows(ids, starts, maxlen)
  return steps.eval_step(state, {**batch, "weights": weights})


def pmapped_steps(maxlen: int, every_position: bool = False, devices=None,
                  clocked_lr: bool = False):
  """The loop's train and eval steps, pmapped over all local devices, or `devices` (the
  compile check's TPU topology): the one place they are wrapped. With `clocked_lr` the train
  step takes a fourth argument, the learning-rate factor (--time_budget), the same on every
  device."""
  p_train_step = jax.pmap(functools.partial(_train_on_starts, maxlen=maxlen,
                                            every_position=every_position),
                          axis_name=steps.AXIS, donate_argnums=(0,), devices=devices,
                          in_axes=(0, 0, 0, None) if clocked_lr else 0)
  p_eval_step = jax.pmap(functools.partial(_eval_on_starts, maxlen=maxlen), axis_name=steps.AXIS,
                         devices=devices)
  return p_train_step, p_eval_step


def _check_finite(loss: float, step: int, config: Config) -> None:
  if not math.isfinite(loss):
    raise UserError(
        f"the training loss became {loss} by step {step}, so training stopped. The learning rate "
        f"({config.learning_rate}) is probably too high for this model and text; lower it, e.g. "
        f"--learning_rate={config.learning_rate / 10:g}.")


def _rate_at(run: Run, step: int) -> float:
  rate = float(run.learning_rate(step)) if callable(run.learning_rate) else run.learning_rate
  return rate * (run.budget.lr_factor(run.budget.clock_s) if run.budget else 1.0)


def _budget_clock(run: Run, steps_done: int, now: bool = False) -> float | None:
  """The run's elapsed seconds for --time_budget (None without one): read every step in one
  process; in several, the primary's, shared every LOG_EVERY steps, so that all processes stop
  at the same step and scale their updates alike."""
  if run.budget is None:
    return None
  if jax.process_count() == 1:
    run.budget.clock_s = run.elapsed()
  elif now or steps_done % LOG_EVERY == 0:  # a collective: all processes reach it together
    run.budget.clock_s = distributed.from_primary(run.elapsed())
  return run.budget.clock_s


def _budget_spent(run: Run, steps_done: int) -> bool:
  """Whether --time_budget ends training now (the same answer in every process)."""
  clock_s = _budget_clock(run, steps_done)
  return clock_s is not None and run.budget.spent(clock_s)


class Trained(NamedTuple):
  """What train_epoch did: steps run, when it began, and the batch it stopped before (the
  epoch's step count when complete)."""

  steps_run: int
  start: float
  position: int


def _should_stop(stop: StopRequests, steps_done: int) -> bool:
  if jax.process_count() == 1:
    return stop.requested
  # All processes must stop at the same step: agree every LOG_EVERY steps (a collective).
  return steps_done % LOG_EVERY == 0 and distributed.any_process(stop.requested)


def train_epoch(run: Run, epoch: int, p_train_step, stop: StopRequests) -> Trained | None:
  """Trains one epoch from the run's position, or until --time_budget says stop; None when a
  stop request ended it early (after saving a checkpoint there)."""
  config, corpus, num_devices = run.config, run.corpus, jax.device_count()
  num_batches = run.steps_per_epoch

  def batch_at(index: int) -> tuple[np.ndarray, np.ndarray]:
    starts = data.train_batch_starts(corpus, index, config.batch_size, config.seed, epoch)
    return data.device_batch(corpus, distributed.process_slice(
        starts.reshape(num_devices, config.batch_size // num_devices)))

  first = run.start_batch if epoch == run.start_epoch else 0
  if first == 0:
    run.epoch_losses = []
  epoch_start = time.perf_counter()
  pending = []  # device-side losses not yet fetched to run.epoch_losses

  def fetch_pending():
    if pending:
      run.epoch_losses.extend(np.asarray(jnp.stack(pending))[:, 0].tolist())
      pending.clear()

  done = first
  _budget_clock(run, done, now=True)  # a resumed epoch may start between agreements
  deadline = (time.perf_counter() + run.budget.left(run.elapsed())) if run.budget else None
  with progress.EpochProgress(epoch, None if run.unlimited_epochs else config.epochs,
                              num_batches, config.batch_size,
                              first_step=first, enabled=distributed.is_primary(),
                              later_steps=(config.epochs - epoch) * run.steps_per_epoch,
                              epoch_end_s=run.epoch_end_s, deadline=deadline) as bar:
    while done < num_batches:
      if _should_stop(stop, done):
        fetch_pending()
        run.save(epoch, done, complete=False)
        return None
      if _budget_spent(run, done):
        break
      clock = (np.float32(run.budget.lr_factor(run.budget.clock_s)),) if run.budget else ()
      run.p_state, step_metrics = p_train_step(run.p_state, *batch_at(done), *clock)
      pending.append(step_metrics["loss"])
      done += 1
      run.global_step += 1
      at_log = run.global_step % config.log_every == 0
      if len(pending) == LOG_EVERY or done == num_batches or at_log:
        fetch_pending()
        running = float(np.mean(run.epoch_losses[-LOG_EVERY:]))
        _check_finite(running, run.global_step, config)
        bar.update(done, running)
      if at_log and run.log:
        rate = (done - first) * config.batch_size / (time.perf_counter() - epoch_start)
        run.log.write({"kind": "train", "step": run.global_step, "epoch": epoch,
                       "train_loss": float(np.mean(run.epoch_losses[-config.log_every:])),
                       "learning_rate": _rate_at(run, run.global_step),
                       "windows_per_s": rate, "elapsed_s": run.elapsed()})
      if (config.save_every_steps and done < num_batches
          and run.global_step % config.save_every_steps == 0):
        fetch_pending()
        run.save(epoch, done, complete=False)
  fetch_pending()
  return Trained(done - first, epoch_start, done)


def end_epoch(run: Run, epoch: int, trained: Trained, p_eval_step) -> dict:
  """Validates, prints the epoch's line and samples, records, plots and checkpoints (an epoch
  that --time_budget cut short too: resuming continues it)."""
  config, primary = run.config, distributed.is_primary()
  steps_run, epoch_start, position = trained
  complete = position == run.steps_per_epoch
  train_loss = float(np.mean(run.epoch_losses)) if run.epoch_losses else float("nan")
  _check_finite(train_loss, run.global_step, config)
  train_seconds = time.perf_counter() - epoch_start
  end_start = time.perf_counter()
  if run.budget:
    validation.size_validation(run, train_seconds)
  val_loss = (validation.evaluate(p_eval_step, run.p_state, run.corpus, run.val_starts,
                                  run.eval_batch_size)
              if len(run.val_starts) else None)
  summary = {"epoch": epoch, "step": run.global_step, "train_loss": train_loss,
             "val_loss": val_loss, "val_bpc": val_loss / math.log(2) if val_loss else None,
             "windows_per_s": steps_run * config.batch_size / max(train_seconds, 1e-9),
             "seconds": time.perf_counter() - epoch_start, "elapsed_s": run.elapsed()}
  sampled = (f", {len(run.val_starts):,} of {run.corpus.num_val_windows:,} windows"
             if len(run.val_starts) < run.corpus.num_val_windows else "")
  val_text = (f"val loss {val_loss:.4f} nats ({summary['val_bpc']:.3f} bits/char{sampled})"
              if val_loss is not None else "no validation windows")
  cut = "" if complete else f" | time budget: {position} of {run.steps_per_epoch} steps"
  say(f"epoch {epoch:3d} | train loss {train_loss:.4f} | {val_text} | "
      f"{summary['windows_per_s']:,.0f} seq/s | {summary['seconds']:.1f} s{cut}")
  if run.log:
    run.log.write({"kind": "epoch", **summary, **({} if complete else {"batches": position}),
                   "learning_rate": _rate_at(run, summary["step"])})
  if config.sample_len and primary:
    plain, markdown, texts = epoch_samples(jax_utils.unreplicate(run.p_state).params, run.model,
                                           run.corpus, config, epoch)
    print(plain, flush=True)
    run.log.write_samples(markdown, texts, summary["step"])
  if primary:
    plots.write_loss_plot(run.log.folder)
  run.early.update(epoch, val_loss)
  run.save(epoch, position, complete=complete, val_loss=val_loss)
  run.epoch_end_s = time.perf_counter() - end_start  # for the next epochs' run ETA
  if run.budget:
    run.budget.ended_epoch(run.epoch_end_s)
  return summary


def train_epochs(run: Run, stop: StopRequests) -> list[dict]:
  """Trains from the run's position to --epochs (or early stopping); a summary per epoch."""
  config, history = run.config, []
  p_train_step, p_eval_step = pmapped_steps(config.maxlen, config.objective == "every",
                                            clocked_lr=run.budget is not None)
  if run.run_meta.get("init_from") and run.last_saved is None and len(run.val_starts):
    validation.validate_the_start(run, p_eval_step)  # a fresh start only: a resumed run recorded it
  if run.budget and len(run.val_starts):
    validation.time_validation(run, p_eval_step)
  for epoch in range(run.start_epoch, config.epochs + 1):
    trained = train_epoch(run, epoch, p_train_step, stop)
    if trained is None:
      run.checkpoints.wait()
      say(f"{stop.signal_name or 'a stop request from another process'}: saved a checkpoint at "
          f"step {run.global_step} in {run.workdir}; run the same command again to resume "
          "from it.")
      sys.exit(stop.exit_code)
    stop.finishing = epoch == config.epochs  # a stop now has no step left to end at
    history.append(end_epoch(run, epoch, trained, p_eval_step))
    if run.budget and (trained.position < run.steps_per_epoch or _budget_spent(run, 0)):
      say(f"time budget: {budget.describe(run.budget.seconds)} (--time_budget) reached at "
          f"{run.elapsed():.0f} s of training; "
          + (f"the best checkpoint (epoch {run.early.best_epoch}, {run.early.best_loss:.4f} "
             f"nats) is kept in {run.workdir}." if run.early.best_loss is not None
             else f"its last checkpoint is in {run.workdir}."))
      break
    if run.early.stopped and epoch < config.epochs:  # else it ended as planned anyway
      say(f"early stopping: {run.early.describe()}; the best checkpoint is kept in "
          f"{run.workdir}.")
      break
  return history


def train_and_evaluate(config: Config, workdir: str | Path,
                       base: init_from.Base | None = None,
                       cache_dir: str | Path | None = None) -> list[dict]:
  """Trains (resuming from workdir's latest checkpoint, else starting from `base`, the run
  --init_from names, if given); returns a summary dict per epoch run. The text's id cache is
  kept in `cache_dir` (default: corpus_cache/ beside the workdir).

  Holds <workdir>/train.lock for the whole run: a second trainer on it stops at once. Bad input
  (a missing or unreadable --data, ...) stops it before it writes: a folder this attempt
  created is removed again. Ends by saying what the run produced and what to run next."""
  typed, workdir = workdir, storage.location(workdir)
  if base is not None:
    init_from.preflight(config, workdir, base, cache_dir)  # errors leave a new workdir uncreated
  lock = workdir.lock(storage.holder_description(
      f"python -m jaxchar.train {' '.join(sys.argv[1:])}"))
  with distributed.primary_holds(lock), StopRequests() as stop:
    try:
      run = start_run(config, workdir, base, cache_dir)
    except UserError:
      lock.discard()  # the lock file and folders this attempt created go again
      raise
    run.checkpoints.guard = lock.check  # a run whose bucket lock was taken over saves no more
    try:
      history = [] if nothing_to_train(run) else train_epochs(run, stop)
    except BaseException:
      run.close(after_error=True)
      raise
    stop.finishing = True
    run.close()
    if jax.process_count() > 1:  # process 0 commits the last checkpoint after the others' wait
      multihost_utils.sync_global_devices("jaxchar: last checkpoint committed")
    if stop.requested:
      say(f"{stop.signal_name} came as the run ended: its training was complete and its last "
          f"checkpoint is saved in {typed}.")
  distributed.check_processes_agree(jax_utils.unreplicate(run.p_state).params)
  if lines := outcome.final_lines(typed):  # on every process: orbax reads metadata together
    say(lines)
  return history
