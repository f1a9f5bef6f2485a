"""The training loop: pmapped steps over every device of every process, validation, samples,
checkpoints and records. Only process 0 prints and writes records; all processes checkpoint."""

import functools
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils
from jax.experimental import multihost_utils

from jaxchar.core import data, storage
from jaxchar.core import lock as lock_lib
from jaxchar.errors import UserError
from jaxchar.core import progress
from jaxchar.training import distributed, init_from, outcome, plots, steps
from jaxchar.training.config import Config
from jaxchar.training.distributed import say
from jaxchar.training.preemption import StopRequests
from jaxchar.training.run import Run, nothing_to_train, start_run
from jaxchar.training.samples import epoch_samples

LOG_EVERY = 10  # steps between progress updates and stop checks (each is a host sync)


def _train_on_starts(state, ids, starts, *, maxlen: int, every_position: bool):
  """`ids`: this device's windows end to end (data.device_batch), `starts`: where each begins."""
  return steps.train_step(state, data.gather_windows(ids, starts, maxlen, every_position))


def _eval_on_starts(state, ids, starts, weights, *, maxlen: int):
  batch = data.gather_windows(ids, starts, maxlen)
  return steps.eval_step(state, {**batch, "weights": weights})


def pmapped_steps(maxlen: int, every_position: bool = False, devices=None):
  """The loop's train and eval steps, pmapped over all local devices, or `devices` (the
  compile check's TPU topology): the one place they are wrapped."""
  p_train_step = jax.pmap(functools.partial(_train_on_starts, maxlen=maxlen,
                                            every_position=every_position),
                          axis_name=steps.AXIS, donate_argnums=(0,), devices=devices)
  p_eval_step = jax.pmap(functools.partial(_eval_on_starts, maxlen=maxlen), axis_name=steps.AXIS,
                         devices=devices)
  return p_train_step, p_eval_step


def _check_finite(loss: float, step: int, config: Config) -> None:
  if not math.isfinite(loss):
    raise UserError(
        f"the training loss became {loss} by step {step}, so training stopped. The learning rate "
        f"({config.learning_rate}) is probably too high for this model and text; lower it, e.g. "
        f"--learning_rate={config.learning_rate / 10:g}.")


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


def _rate_at(learning_rate, step: int) -> float:
  return float(learning_rate(step)) if callable(learning_rate) else learning_rate


def _should_stop(stop: StopRequests, steps_done: int) -> bool:
  if jax.process_count() == 1:
    return stop.requested
  # All processes must stop at the same step: agree every LOG_EVERY steps (a collective).
  return steps_done % LOG_EVERY == 0 and distributed.any_process(stop.requested)


def train_epoch(run: Run, epoch: int, p_train_step,
                stop: StopRequests) -> tuple[int, float] | None:
  """Trains one epoch from the run's position: (steps run, start time), or None when a stop
  request ended it early (after saving a checkpoint there)."""
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
  with progress.EpochProgress(epoch, config.epochs, num_batches, config.batch_size,
                              first_step=first, enabled=distributed.is_primary(),
                              later_steps=(config.epochs - epoch) * run.steps_per_epoch,
                              epoch_end_s=run.epoch_end_s) as bar:
    while done < num_batches:
      if _should_stop(stop, done):
        fetch_pending()
        run.save(epoch, done, complete=False)
        return None
      run.p_state, step_metrics = p_train_step(run.p_state, *batch_at(done))
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
                       "learning_rate": _rate_at(run.learning_rate, run.global_step),
                       "windows_per_s": rate, "elapsed_s": run.elapsed()})
      if (config.save_every_steps and done < num_batches
          and run.global_step % config.save_every_steps == 0):
        fetch_pending()
        run.save(epoch, done, complete=False)
  return num_batches - first, epoch_start


def end_epoch(run: Run, epoch: int, trained: tuple[int, float], p_eval_step) -> dict:
  """Validates, prints the epoch's line and samples, records, plots and checkpoints."""
  config, primary = run.config, distributed.is_primary()
  steps_run, epoch_start = trained
  train_loss = float(np.mean(run.epoch_losses)) if run.epoch_losses else float("nan")
  _check_finite(train_loss, run.global_step, config)
  train_seconds = time.perf_counter() - epoch_start
  end_start = time.perf_counter()
  val_loss = (evaluate(p_eval_step, run.p_state, run.corpus, run.val_starts, run.eval_batch_size)
              if len(run.val_starts) else None)
  summary = {"epoch": epoch, "step": run.global_step, "train_loss": train_loss,
             "val_loss": val_loss, "val_bpc": val_loss / math.log(2) if val_loss else None,
             "windows_per_s": steps_run * config.batch_size / max(train_seconds, 1e-9),
             "seconds": time.perf_counter() - epoch_start, "elapsed_s": run.elapsed()}
  sampled = (f", {len(run.val_starts):,} of {run.corpus.num_val_windows:,} windows"
             if len(run.val_starts) < run.corpus.num_val_windows else "")
  val_text = (f"val loss {val_loss:.4f} nats ({summary['val_bpc']:.3f} bits/char{sampled})"
              if val_loss is not None else "no validation windows")
  say(f"epoch {epoch:3d} | train loss {train_loss:.4f} | {val_text} | "
      f"{summary['windows_per_s']:,.0f} seq/s | {summary['seconds']:.1f} s")
  if run.log:
    run.log.write({"kind": "epoch", **summary,
                   "learning_rate": _rate_at(run.learning_rate, summary["step"])})
  if config.sample_len and primary:
    plain, markdown, texts = epoch_samples(jax_utils.unreplicate(run.p_state).params, run.model,
                                           run.corpus, config, epoch)
    print(plain, flush=True)
    run.log.write_samples(markdown, texts, summary["step"])
  if primary:
    plots.write_loss_plot(run.log.folder)
  run.early.update(epoch, val_loss)
  run.save(epoch, run.steps_per_epoch, complete=True, val_loss=val_loss)
  run.epoch_end_s = time.perf_counter() - end_start  # for the next epochs' run ETA
  return summary


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


def train_epochs(run: Run, stop: StopRequests) -> list[dict]:
  """Trains from the run's position to --epochs (or early stopping); a summary per epoch."""
  config, history = run.config, []
  p_train_step, p_eval_step = pmapped_steps(config.maxlen, config.objective == "every")
  if run.run_meta.get("init_from") and run.last_saved is None and len(run.val_starts):
    validate_the_start(run, p_eval_step)  # a fresh start only: a resumed run recorded it
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
  lock = lock_lib.for_workdir(workdir)
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
