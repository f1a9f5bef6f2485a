"""One training run in its workdir: corpus, replicated train state, position in the schedule,
checkpoints and records; created fresh or restored from the latest checkpoint."""

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import jax_utils
from jax.experimental import multihost_utils

from jaxchar.core import checkpoint, data
from jaxchar.core.model import CharLSTM, count_params
from jaxchar.core.spec import ModelSpec
from jaxchar.errors import UserError
from jaxchar.training import budget as budget_lib
from jaxchar.training import distributed, init_from, metrics, resume, steps, text
from jaxchar.training.config import AUTO_TRAIN_CHARS, MAX_AUTO_EPOCHS, Config, auto_epochs
from jaxchar.training.distributed import say
from jaxchar.training.early_stopping import EarlyStopping


# --epochs=0 with --time_budget: more epochs than any budget reaches.
UNLIMITED_EPOCHS = 1_000_000


def _savable(state: steps.TrainState) -> dict:
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


@dataclasses.dataclass
class Run:
  """What the loop works on; `p_state` is replicated over the local devices."""

  config: Config
  workdir: Path
  corpus: data.Corpus
  model: CharLSTM
  learning_rate: Any  # a float or an optax schedule
  steps_per_epoch: int
  val_starts: Any  # the validation windows' start offsets
  eval_batch_size: int
  p_state: Any
  checkpoints: checkpoint.Checkpoints
  log: metrics.RunLog | None  # None on processes other than 0
  early: EarlyStopping
  run_meta: dict
  start_epoch: int = 1
  start_batch: int = 0
  epoch_losses: list = dataclasses.field(default_factory=list)
  global_step: int = 0  # counted on the host: reading p_state.step would wait for the device
  last_saved: int | None = None
  elapsed_before: float = 0.0
  epoch_end_s: float = 0.0  # seconds the last epoch's end took (validation, samples, save)
  budget: budget_lib.Budget | None = None  # --time_budget
  started: float = dataclasses.field(default_factory=time.perf_counter)

  @property
  def unlimited_epochs(self) -> bool:
    """--epochs=0 with --time_budget: the budget ends the run."""
    return self.config.epochs == UNLIMITED_EPOCHS

  def elapsed(self) -> float:
    """Training seconds over every session of this run."""
    return self.elapsed_before + time.perf_counter() - self.started

  def save(self, epoch: int, batch_in_epoch: int, complete: bool,
           val_loss: float | None = None) -> None:
    """Checkpoints the current state and position (records written so far made durable)."""
    if self.global_step == self.last_saved:
      return  # this exact point is already the latest checkpoint
    host_state = jax.device_get(_savable(jax_utils.unreplicate(self.p_state)))
    meta = {**self.run_meta, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "epoch_complete": complete, "epoch_losses": [float(x) for x in self.epoch_losses],
            "val_loss": val_loss, "elapsed_s": self.elapsed(), **self.early.state()}
    if self.log:
      self.log.flush()  # records up to a checkpoint must survive a crash after it
    self.checkpoints.save(int(host_state["step"]), host_state, meta, val_loss)
    self.last_saved = int(host_state["step"])

  def close(self, after_error: bool = False) -> None:
    """Finishes the checkpoint being written and closes the records.

    After an error in a multi-process run the checkpoint is left alone: finishing it waits on
    every process, and one of them may be gone."""
    try:
      if not (after_error and jax.process_count() > 1):
        try:
          self.checkpoints.wait()
          self.checkpoints.close()
        except Exception:  # noqa: BLE001 - after an error, the error being raised says why
          if not after_error:
            raise
    finally:
      if self.log:  # after an error, the records kept are the last checkpoint's (uploaded then)
        self.log.close(publish=not after_error)


def global_eval_batch(eval_batch_size: int, num_devices: int) -> int:
  """--eval_batch_size rounded up to a multiple of the device count."""
  return -(-eval_batch_size // num_devices) * num_devices


def check_batch_fits(batch_size: int, num_devices: int) -> None:
  """UserError unless the global batch splits evenly over the devices."""
  if batch_size % num_devices:
    raise UserError(
        f"--batch_size={batch_size} does not split evenly over the {num_devices} devices; "
        f"use a multiple of {num_devices}, e.g. "
        f"--batch_size={max(1, batch_size // num_devices) * num_devices}.")


def load_corpus(config: Config, workdir: Path, cache_dir: str | Path | None = None,
                base: init_from.Base | None = None) -> tuple[data.Corpus, str | None, str]:
  """The run's corpus, streamed from the id cache; the characters the text adds to `base`'s
  vocabulary (None without a base); and what the first line says of the text."""
  encoded, num_files = text.encoded_text(config, text.cache_folder(workdir, cache_dir))
  vocab = new_symbols = None
  if base is not None:
    vocab, new_symbols = init_from.vocabulary(base, encoded.present, config.init_vocab)
  corpus = data.from_encoded(encoded, maxlen=config.maxlen, stride=config.stride,
                             val_fraction=config.val_fraction, vocab=vocab, num_files=num_files)
  how = "id cache read" if encoded.reused else "encoded into the id cache"
  shown = os.path.relpath(encoded.path)
  note = (f"{num_files} file{'s' * (num_files > 1)}, {corpus.num_chars:,} characters ({how} "
          f"in {encoded.seconds:.1f} s: {encoded.path if shown.startswith('..') else shown}, "
          f"{encoded.path.stat().st_size / 1e6:,.1f} MB)")
  return corpus, new_symbols, note


def start_run(config: Config, workdir: Path, base: init_from.Base | None = None,
              cache_dir: str | Path | None = None) -> Run:
  """Opens the corpus, builds the model and resumes from the latest checkpoint if any; else
  starts from `base`'s parameters (--init_from), or a fresh initialisation."""
  corpus, new_symbols, text_note = load_corpus(config, workdir, cache_dir, base)  # errors first
  say(f"training in {workdir} (checkpoints, metrics.jsonl, samples.md, loss.png, tensorboard/)")
  num_devices = jax.device_count()  # all processes' devices share every global batch
  check_batch_fits(config.batch_size, num_devices)
  if config.restart and distributed.is_primary() and (moved := checkpoint.set_aside_run(workdir)):
    print(f"--restart: moved the previous run's outputs to {moved}", flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxchar: workdir ready")

  budget_s = budget_lib.parse_duration(config.time_budget)
  unlimited = config.epochs == 0 and budget_s is not None
  auto = config.epochs == 0 and not unlimited
  if auto:
    config = dataclasses.replace(config, epochs=auto_epochs(corpus.cut))
  if unlimited:
    config = dataclasses.replace(config, epochs=UNLIMITED_EPOCHS)
  steps_per_epoch = corpus.num_train_windows // config.batch_size
  if config.steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
  model = ModelSpec.of(config, corpus.vocab).model(config.dropout, config.weight_drop)
  tx, learning_rate = steps.optimizer_from_config(config, steps_per_epoch)
  state = steps.create_train_state(jax.random.PRNGKey(config.seed), model, config.maxlen, tx)
  val_starts = data.validation_starts(corpus, config.val_windows)
  subsampled = (f" (validating on {len(val_starts):,} evenly spaced of them, --val_windows)"
                if len(val_starts) < corpus.num_val_windows else "")
  say(f"devices: {num_devices} x {jax.devices()[0].platform} in {jax.process_count()} "
      f"process(es); corpus: {text_note}, vocabulary {corpus.vocab.size}; "
      f"{corpus.num_train_windows:,} training and {corpus.num_val_windows:,} validation "
      f"windows{subsampled}; model: {count_params(state.params):,} parameters "
      f"({config.lstm_impl} LSTM)")
  if budget_s is not None:
    say(f"time budget: {budget_lib.describe(budget_s)} of training (--time_budget)"
        + (", no epoch limit" if unlimited else f", at most {config.epochs} epochs")
        + ("; the learning rate decays over it (cosine)" if config.lr_schedule == "cosine"
           else ""))
  if auto:
    say(f"epochs: {config.epochs}, chosen for {corpus.cut:,} training characters (--epochs=0: "
        f"about {AUTO_TRAIN_CHARS / 1e6:g} M characters in all, {MAX_AUTO_EPOCHS} epochs at "
        "most)")

  run_meta = resume.run_metadata(config, corpus)
  checkpoints = checkpoint.Checkpoints(workdir, config.keep)
  early = EarlyStopping(config.patience)
  position, changed = {}, []

  def check(meta: dict) -> None:
    changed[:] = resume.check_resumable(meta, run_meta, workdir)

  restored = checkpoints.restore_latest(jax.device_get(_savable(state)), check)
  if restored:
    saved_state, meta = restored
    state = state.replace(**saved_state)
    early.restore(meta)
    complete = meta["epoch_complete"]
    position = {"start_epoch": meta["epoch"] + complete,
                "start_batch": 0 if complete else meta["batch_in_epoch"],
                "epoch_losses": [] if complete else meta["epoch_losses"],
                "elapsed_before": meta["elapsed_s"], "last_saved": int(state.step)}
    run_meta["init_from"] = meta.get("init_from")  # where this run began, not today's base
    if sized := meta.get("budget_val_windows"):  # a --time_budget run keeps its windows
      run_meta["budget_val_windows"] = sized
      val_starts = data.validation_starts(corpus, min(sized, len(val_starts)))
    began = run_meta["init_from"]
    where = (f"the end of epoch {meta['epoch']}" if complete else
             f"epoch {meta['epoch']}, batch {meta['batch_in_epoch']} of {steps_per_epoch}")
    say(f"resuming from the checkpoint at step {int(state.step)} ({where})"
        + (f"; this run started from {began['workdir']} step {began['step']}" if began else ""))
    if changed:
      say(f"resumed with {', '.join(changed)}")
  elif base is not None:
    say(init_from.describe(base, new_symbols))
    if warning := init_from.carry_over_warning(base, new_symbols, corpus):
      say(warning)
    params = jax.tree_util.tree_map(jnp.asarray, init_from.start_params(
        jax.device_get(state.params), base.params, base.vocab.size))
    state = state.replace(params=params, opt_state=tx.init(params))
    run_meta["init_from"] = init_from.origin(base, new_symbols)
  log = (metrics.RunLog(workdir, int(state.step) if restored else None,
                        position.get("start_epoch", 1) - 1)
         if distributed.is_primary() else None)
  return Run(config=config, workdir=workdir, corpus=corpus, model=model,
             learning_rate=learning_rate, steps_per_epoch=steps_per_epoch,
             val_starts=val_starts,
             eval_batch_size=global_eval_batch(config.eval_batch_size, num_devices),
             p_state=steps.replicate(state),
             checkpoints=checkpoints, log=log, early=early, run_meta=run_meta,
             global_step=int(state.step),
             budget=(budget_lib.Budget(budget_s, config.lr_schedule == "cosine")
                     if budget_s is not None else None), **position)


def nothing_to_train(run: Run) -> bool:
  """True (after saying why) when the checkpoint already finished what the flags ask for."""
  if run.start_epoch > run.config.epochs:
    say(f"nothing to train: the checkpoint in {run.workdir} already finished epoch "
        f"{run.start_epoch - 1} of --epochs={run.config.epochs}; raise --epochs to train "
        "further, or use --restart to start afresh.")
    return True
  if run.budget and run.budget.spent(run.elapsed_before):
    say(f"nothing to train: this run has spent its time budget ({run.elapsed_before:.0f} s of "
        f"--time_budget={run.config.time_budget}); raise --time_budget to train further, or use "
        "--restart to start afresh.")
    return True
  if run.early.stopped and run.start_batch == 0:
    say(f"nothing to train: this run stopped early ({run.early.describe()}); raise --patience "
        "(or 0 = off) to train further, or use --restart to start afresh.")
    return True
  return False
