"""The training loop: pmapped steps over every device of every process, validation, samples,
checkpoints and records, within the budget. The one place a RunState changes. Only process 0
prints and writes records; all processes checkpoint."""

import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxchar.core import data, storage
from jaxchar.core import progress
from jaxchar.errors import UserError
from jaxchar.training import budget as budget_lib
from jaxchar.training import distributed, init_from, outcome, plots, steps, validation
from jaxchar.training.config import Config
from jaxchar.training.distributed import say
from jaxchar.training.preemption import StopRequests
from jaxchar.training.samples import epoch_samples
from jaxchar.training.startup import start_run
from jaxchar.training.state import Plan, RunState
from jaxchar.training.validation import ValidationSet

LOG_EVERY = 10  # steps between progress updates and stop checks (each is a host sync)


def _check_finite(loss: float, step: int, config: Config) -> None:
  if not math.isfinite(loss):
    raise UserError(
        f"the training loss became {loss} by step {step}, so training stopped. The learning rate "
        f"({config.learning_rate}) is probably too high for this model and text; lower it, e.g. "
        f"--learning_rate={config.learning_rate / 10:g}.")


def read_clock(plan: Plan, state: RunState, steps_done: int, now: bool = False) -> None:
  """The run's elapsed seconds for --time_budget into state.clock_s: read every step in one
  process; in several, the primary's, shared every LOG_EVERY steps, so that all processes stop
  at the same step and scale their updates alike."""
  if plan.budget is None:
    return
  if jax.process_count() == 1:
    state.clock_s = state.elapsed()
  elif now or steps_done % LOG_EVERY == 0:  # a collective: all processes reach it together
    state.clock_s = distributed.from_primary(state.elapsed())


def budget_spent(plan: Plan, state: RunState, steps_done: int) -> bool:
  """Whether --time_budget ends training now (the same answer in every process)."""
  read_clock(plan, state, steps_done)
  return plan.budget is not None and plan.budget.spent(state.clock_s, state.end_s)


def lr_factor(plan: Plan, state: RunState) -> float:
  return plan.budget.lr_factor(state.clock_s) if plan.budget else 1.0


def save(plan: Plan, state: RunState, complete: bool, val_loss: float | None = None) -> None:
  """Checkpoints the train state and position (records written so far made durable first)."""
  if state.step == state.last_saved:
    return  # this exact point is already the latest checkpoint
  host_state = steps.first_replica(steps.saved_part(state.train))
  if state.carries is not None:
    host_state["carries"] = steps.rows_from_devices(state.carries)
  meta = {**plan.run_meta, **state.position_meta(complete), "val_loss": val_loss}
  if plan.log:
    plan.log.flush()  # records up to a checkpoint must survive a crash after it
  plan.checkpoints.save(int(host_state["step"]), host_state, meta, val_loss)
  state.last_saved = int(host_state["step"])


def close(plan: Plan, after_error: bool = False) -> None:
  """Finishes the checkpoint being written and closes the records. After an error in a
  multi-process run the checkpoint is left alone: finishing it waits on every process, and one
  of them may be gone."""
  try:
    if not (after_error and jax.process_count() > 1):
      try:
        plan.checkpoints.wait()
        plan.checkpoints.close()
      except Exception:  # noqa: BLE001 - after an error, the error being raised says why
        if not after_error:
          raise
  finally:
    if plan.log:  # after an error, the records kept are the last checkpoint's (published then)
      plan.log.close(publish=not after_error)


class Trained(NamedTuple):
  """What train_epoch did: steps run, when it began, and the batch it stopped before (the
  epoch's step count when complete)."""

  steps_run: int
  start: float
  position: int


def run_eta(plan: Plan, state: RunState):
  """The run's seconds left, as a function of the epoch's steps done and the seconds they
  took (None before a step): the steps of this epoch and the later ones at this epoch's rate,
  and an epoch end (as long as the last) per epoch left; a budget's end if that is earlier."""
  epoch, first, num_steps = state.epoch, state.batch, plan.steps_per_epoch
  later_steps = (plan.config.epochs - epoch) * num_steps
  ends = (1 if plan.unlimited_epochs else plan.config.epochs - epoch + 1) * state.epoch_end_s
  deadline = (time.perf_counter() + plan.budget.left(state.elapsed())) if plan.budget else None

  def eta(steps_done: int, seconds: float) -> float | None:
    by_budget = deadline - time.perf_counter() if deadline is not None else None
    if steps_done <= first:
      return by_budget
    by_steps = (num_steps - steps_done + later_steps) * seconds / (steps_done - first) + ends
    return by_steps if by_budget is None else max(0.0, min(by_steps, by_budget))
  return eta


def _should_stop(stop: StopRequests, steps_done: int) -> bool:
  if jax.process_count() == 1:
    return stop.requested
  # All processes must stop at the same step: agree every LOG_EVERY steps (a collective).
  return steps_done % LOG_EVERY == 0 and distributed.any_process(stop.requested)


def train_epoch(plan: Plan, state: RunState, p_train_step, stop: StopRequests) -> Trained | None:
  """Trains the state's epoch from its position, or until --time_budget says stop; None when a
  stop request ended it early (after saving a checkpoint there)."""
  config, corpus, num_devices = plan.config, plan.corpus, jax.device_count()
  num_batches, epoch, first = plan.steps_per_epoch, state.epoch, state.batch

  def batch_at(index: int) -> tuple[np.ndarray, np.ndarray]:
    pick = data.stream_batch_starts if config.carry_state else data.train_batch_starts
    starts = pick(corpus, index, config.batch_size, config.seed, epoch)
    return data.device_batch(corpus, distributed.process_slice(
        starts.reshape(num_devices, config.batch_size // num_devices)))

  def step(*inputs) -> dict:
    if config.carry_state:
      state.train, state.carries, out = p_train_step(state.train, *inputs[:-1], state.carries,
                                                     inputs[-1])
      return out
    state.train, out = p_train_step(state.train, *inputs)
    return out

  if first == 0:
    state.epoch_losses = []
    if config.carry_state:  # each stream starts the epoch from zero state
      state.carries = steps.rows_to_devices(steps.zero_carries(plan.model, config.batch_size))
  pending = []  # device-side losses not yet fetched to state.epoch_losses

  def fetch_pending():
    if pending:
      state.epoch_losses.extend(float(x) for x in steps.first_replica(pending))
      pending.clear()

  epoch_start = time.perf_counter()
  read_clock(plan, state, first, now=True)  # a resumed epoch may start between agreements
  desc = f"epoch {epoch}" + ("" if plan.unlimited_epochs else f"/{config.epochs}")
  with progress.EpochProgress(desc, num_batches, config.batch_size, run_eta(plan, state),
                              first_step=first, enabled=distributed.is_primary()) as bar:
    while state.batch < num_batches:
      if _should_stop(stop, state.batch):
        fetch_pending()
        save(plan, state, complete=False)
        return None
      if budget_spent(plan, state, state.batch):
        break
      step_metrics = step(*batch_at(state.batch), np.float32(lr_factor(plan, state)))
      pending.append(step_metrics["loss"])
      state.batch += 1
      state.step += 1
      at_log = state.step % config.log_every == 0
      if len(pending) == LOG_EVERY or state.batch == num_batches or at_log:
        fetch_pending()
        running = float(np.mean(state.epoch_losses[-LOG_EVERY:]))
        _check_finite(running, state.step, config)
        bar.update(state.batch, running)
      if at_log and plan.log:
        rate = (state.batch - first) * config.batch_size / (time.perf_counter() - epoch_start)
        plan.log.write({"kind": "train", "step": state.step, "epoch": epoch,
                        "train_loss": float(np.mean(state.epoch_losses[-config.log_every:])),
                        "learning_rate": plan.rate_at(state.step, lr_factor(plan, state)),
                        "windows_per_s": rate, "elapsed_s": state.elapsed()})
      if (config.save_every_steps and state.batch < num_batches
          and state.step % config.save_every_steps == 0):
        fetch_pending()
        save(plan, state, complete=False)
  fetch_pending()
  return Trained(state.batch - first, epoch_start, state.batch)


def size_validation(plan: Plan, state: RunState, train_seconds: float) -> None:
  """A budgeted run's first validation: as many evenly spaced windows as cost a share of this
  epoch's `train_seconds` (budget.affordable_windows), kept for the whole run (saved with it)."""
  if state.val_windows or not state.window_s:
    return
  count = budget_lib.affordable_windows(train_seconds, state.window_s, state.val.count)
  state.val_windows = count
  if count < state.val.count:
    state.val = ValidationSet.of(plan.corpus, count, plan.config.carry_state)
    say(f"validating on {count:,} evenly spaced windows from here on: about "
        f"{budget_lib.VAL_SHARE:.0%} of an epoch's training time (--time_budget; "
        "--val_windows caps it)")


def end_epoch(plan: Plan, state: RunState, trained: Trained, p_eval_step) -> dict:
  """Validates, prints the epoch's line and samples, records, plots and checkpoints (an epoch
  that --time_budget cut short too: resuming continues it)."""
  config, primary, epoch = plan.config, distributed.is_primary(), state.epoch
  steps_run, epoch_start, position = trained
  complete = position == plan.steps_per_epoch
  train_loss = float(np.mean(state.epoch_losses)) if state.epoch_losses else float("nan")
  _check_finite(train_loss, state.step, config)
  train_seconds = time.perf_counter() - epoch_start
  end_start = time.perf_counter()
  if plan.budget:
    size_validation(plan, state, train_seconds)
  val_loss = (validation.evaluate(p_eval_step, state.train, plan.corpus, state.val,
                                  plan.eval_batch_size)
              if state.val.count else None)
  summary = {"epoch": epoch, "step": state.step, "train_loss": train_loss,
             "val_loss": val_loss, "val_bpc": val_loss / math.log(2) if val_loss else None,
             "windows_per_s": steps_run * config.batch_size / max(train_seconds, 1e-9),
             "seconds": time.perf_counter() - epoch_start, "elapsed_s": state.elapsed()}
  num_val = plan.corpus.num_val_windows
  sampled = (f", {state.val.count:,} of {num_val:,} windows"
             if state.val.count < num_val else "")
  val_text = (f"val loss {val_loss:.4f} nats ({summary['val_bpc']:.3f} bits/char{sampled})"
              if val_loss is not None else "no validation windows")
  cut = "" if complete else f" | time budget: {position} of {plan.steps_per_epoch} steps"
  say(f"epoch {epoch:3d} | train loss {train_loss:.4f} | {val_text} | "
      f"{summary['windows_per_s']:,.0f} seq/s | {summary['seconds']:.1f} s{cut}")
  if plan.log:
    plan.log.write({"kind": "epoch", **summary, **({} if complete else {"batches": position}),
                    "learning_rate": plan.rate_at(summary["step"], lr_factor(plan, state))})
  if config.sample_len and primary:
    plain, markdown, texts = epoch_samples(steps.first_replica(state.train.params), plan.model,
                                           plan.corpus, config, epoch)
    print(plain, flush=True)
    plan.log.write_samples(markdown, texts, summary["step"])
  if primary:
    plots.write_loss_plot(plan.log.folder)
  state.early.update(epoch, val_loss)
  save(plan, state, complete=complete, val_loss=val_loss)
  state.epoch_end_s = time.perf_counter() - end_start  # for the next epochs' run ETA
  state.end_s = budget_lib.next_end_s(state.epoch_end_s)
  return summary


def validate_the_start(plan: Plan, state: RunState, p_eval_step) -> None:
  """A run started from another's parameters (--init_from) first says, and records as
  kind "start", what those score on this text's validation windows: where fine-tuning begins."""
  val_loss = validation.evaluate(p_eval_step, state.train, plan.corpus, state.val,
                                 plan.eval_batch_size)
  began = plan.run_meta["init_from"]
  say(f"before training: val loss {val_loss:.4f} nats ({val_loss / math.log(2):.3f} bits/char) "
      f"with the parameters of {began['workdir']} step {began['step']}")
  if plan.log:
    plan.log.write({"kind": "start", "step": state.step, "epoch": 0, "val_loss": val_loss,
                    "val_bpc": val_loss / math.log(2), "elapsed_s": state.elapsed()})


def time_validation(plan: Plan, state: RunState, p_eval_step) -> None:
  """Times one validation batch (after compiling it): what --time_budget keeps in reserve for
  the first epoch's end, and what sizes the validation."""
  state.window_s = validation.seconds_per_window(p_eval_step, state.train, plan.corpus,
                                                 state.val, plan.eval_batch_size)
  windows = (state.val.count if state.val_windows else  # else at most a share of it all
             budget_lib.affordable_windows(plan.budget.seconds, state.window_s, state.val.count))
  state.end_s = budget_lib.first_end_s(state.window_s * windows)


def train_epochs(plan: Plan, state: RunState, stop: StopRequests) -> list[dict]:
  """Trains from the state's position to --epochs (or early stopping, or the budget); a
  summary per epoch."""
  config, history = plan.config, []
  p_train_step, p_eval_step = (
      steps.pmapped_stream_steps(plan.model, config.maxlen, state.val.width)
      if config.carry_state else steps.pmapped_steps(config.maxlen, config.objective == "every"))
  if plan.run_meta.get("init_from") and state.last_saved is None and state.val.count:
    validate_the_start(plan, state, p_eval_step)  # a fresh start only: a resumed run recorded it
  if plan.budget and state.val.count:
    time_validation(plan, state, p_eval_step)
  elif plan.budget:
    state.end_s = budget_lib.FIRST_END_EXTRA_S
  while state.epoch <= config.epochs:
    trained = train_epoch(plan, state, p_train_step, stop)
    if trained is None:
      plan.checkpoints.wait()
      say(f"{stop.signal_name or 'a stop request from another process'}: saved a checkpoint at "
          f"step {state.step} in {plan.workdir}; run the same command again to resume "
          "from it.")
      sys.exit(stop.exit_code)
    stop.finishing = state.epoch == config.epochs  # a stop now has no step left to end at
    history.append(end_epoch(plan, state, trained, p_eval_step))
    if plan.budget and (trained.position < plan.steps_per_epoch or budget_spent(plan, state, 0)):
      early = state.early
      say(f"time budget: {budget_lib.describe(plan.budget.seconds)} (--time_budget) reached at "
          f"{state.elapsed():.0f} s of training; "
          + (f"the best checkpoint (epoch {early.best_epoch}, {early.best_loss:.4f} nats) is "
             f"kept in {plan.workdir}." if early.best_loss is not None
             else f"its last checkpoint is in {plan.workdir}."))
      break
    if state.early.stopped and state.epoch < config.epochs:  # else it ended as planned anyway
      say(f"early stopping: {state.early.describe()}; the best checkpoint is kept in "
          f"{plan.workdir}.")
      break
    state.epoch, state.batch = state.epoch + 1, 0
  return history


def nothing_to_train(plan: Plan, state: RunState) -> bool:
  """True (after saying why) when the checkpoint already finished what the flags ask for."""
  if state.epoch > plan.config.epochs:
    say(f"nothing to train: the checkpoint in {plan.workdir} already finished epoch "
        f"{state.epoch - 1} of --epochs={plan.config.epochs}; raise --epochs to train "
        "further, or use --restart to start afresh.")
    return True
  if plan.budget and plan.budget.spent(state.elapsed_before, budget_lib.FIRST_END_EXTRA_S):
    say(f"nothing to train: this run has spent its time budget ({state.elapsed_before:.0f} s "
        f"of --time_budget={plan.config.time_budget}); raise --time_budget to train further, or "
        "use --restart to start afresh.")
    return True
  if state.early.stopped and state.batch == 0:
    say(f"nothing to train: this run stopped early ({state.early.describe()}); raise --patience "
        "(or 0 = off) to train further, or use --restart to start afresh.")
    return True
  return False


def train_and_evaluate(config: Config, workdir: str | Path,
                       base: init_from.Base | None = None,
                       cache_dir: str | Path | None = None) -> list[dict]:
  """Trains (resuming from workdir's latest checkpoint, else starting from `base`, the run
  --init_from names, if given); returns a summary dict per epoch run. The text's id cache is
  kept in `cache_dir` (default: corpus_cache/ beside the workdir).

  Holds the workdir's lock for the whole run: a second trainer on it stops at once. Bad input
  (a missing or unreadable --data, ...) stops it before it writes: a folder this attempt
  created is removed again. Ends by saying what the run produced and what to run next."""
  typed, workdir = workdir, storage.location(workdir)
  if base is not None:
    init_from.preflight(config, workdir, base, cache_dir)  # errors leave a new workdir uncreated
  lock = workdir.lock(storage.holder_description(
      f"python -m jaxchar.train {' '.join(sys.argv[1:])}"))
  with distributed.primary_holds(lock), StopRequests() as stop:
    try:
      plan, state = start_run(config, workdir, base, cache_dir)
    except UserError:
      lock.discard()  # the lock file and folders this attempt created go again
      raise
    plan.checkpoints.guard = lock.check  # a run whose bucket lock was taken over saves no more
    try:
      history = [] if nothing_to_train(plan, state) else train_epochs(plan, state, stop)
    except BaseException:
      close(plan, after_error=True)
      raise
    stop.finishing = True
    close(plan)
    if jax.process_count() > 1:  # process 0 commits the last checkpoint after the others' wait
      multihost_utils.sync_global_devices("jaxchar: last checkpoint committed")
    if stop.requested:
      say(f"{stop.signal_name} came as the run ended: its training was complete and its last "
          f"checkpoint is saved in {typed}.")
  distributed.check_processes_agree(steps.first_replica(state.train.params))
  if lines := outcome.final_lines(typed):  # on every process: orbax reads metadata together
    say(lines)
  return history
