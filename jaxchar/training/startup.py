"""Starting a run, step by step: its text, its folder, its length, its model and optimizer, and
where it begins (its latest checkpoint, another run's parameters, or a fresh initialisation)."""

import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils

from jaxchar.core import checkpoint, data
from jaxchar.core.model import count_params
from jaxchar.core.spec import ModelSpec
from jaxchar.errors import UserError
from jaxchar.training import budget as budget_lib
from jaxchar.training import distributed, init_from, metrics, resume, steps, text
from jaxchar.training.config import AUTO_TRAIN_CHARS, MAX_AUTO_EPOCHS, Config, auto_epochs
from jaxchar.training.distributed import say
from jaxchar.training.state import EarlyStopping, Plan, RunState
from jaxchar.training.validation import ValidationSet

# --epochs=0 with --time_budget: more epochs than any budget reaches.
UNLIMITED_EPOCHS = 1_000_000


def start_run(config: Config, workdir: Path, base: init_from.Base | None = None,
              cache_dir: str | Path | None = None) -> tuple[Plan, RunState]:
  """The run in `workdir`: resumed from its latest checkpoint if any; else started from
  `base`'s parameters (--init_from), or a fresh initialisation."""
  corpus, new_symbols, text_note = open_text(config, workdir, cache_dir, base)  # errors first
  say(f"training in {workdir} (checkpoints, metrics.jsonl, samples.md, loss.png, tensorboard/)")
  check_batch_fits(config.batch_size, jax.device_count())  # all processes' devices share it
  prepare_workdir(config, workdir)
  config, budget, auto = plan_length(config, corpus)
  steps_per_epoch = epoch_steps(config, corpus)
  model = ModelSpec.of(config, corpus.vocab).model(config.dropout, config.weight_drop)
  tx, learning_rate = steps.optimizer_from_config(config, steps_per_epoch)
  key = jax.random.PRNGKey(config.seed)
  template = steps.train_state_template(key, model, config.maxlen, tx)
  if config.carry_state:
    template["carries"] = steps.zero_carries(model, config.batch_size)
  val = ValidationSet.of(corpus, config.val_windows, config.carry_state)
  subsampled = (f" (validating on {val.count:,} evenly spaced of them, --val_windows)"
                if val.count < corpus.num_val_windows else "")
  training = (f"{config.batch_size} training streams of {corpus.cut // config.batch_size:,} "
              f"characters ({steps_per_epoch:,} windows of {config.maxlen} each an epoch)"
              if config.carry_state else f"{corpus.num_train_windows:,} training")
  say(f"devices: {jax.device_count()} x {jax.devices()[0].platform} in {jax.process_count()} "
      f"process(es); corpus: {text_note}, vocabulary {corpus.vocab.size}; {training} and "
      f"{corpus.num_val_windows:,} validation windows{subsampled}; model: "
      f"{count_params(template['params']):,} parameters ({config.lstm_impl} LSTM)")
  describe_length(config, corpus, budget, auto)
  run_meta = resume.run_metadata(config, corpus)
  checkpoints = checkpoint.Checkpoints(workdir, config.keep)
  state = begin(config, workdir, corpus, checkpoints, run_meta, base, new_symbols,
                (key, model, tx, template), steps_per_epoch, val)
  log = (metrics.RunLog(workdir, state.last_saved, state.epoch - 1)
         if distributed.is_primary() else None)
  plan = Plan(config=config, workdir=workdir, corpus=corpus, model=model,
              learning_rate=learning_rate, steps_per_epoch=steps_per_epoch,
              eval_batch_size=global_eval_batch(config.eval_batch_size, jax.device_count()),
              run_meta=run_meta, checkpoints=checkpoints, log=log, budget=budget,
              unlimited_epochs=config.epochs == UNLIMITED_EPOCHS)
  return plan, state


def open_text(config: Config, workdir: Path, cache_dir: str | Path | None = None,
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


def epoch_steps(config: Config, corpus: data.Corpus) -> int:
  """Steps an epoch takes: every full batch of windows (or of streams' windows), at most
  --steps_per_epoch."""
  if config.carry_state:
    count = data.stream_steps(corpus, config.batch_size)
    if count < 1:
      raise UserError(
          f"the training part of the corpus has {corpus.cut:,} characters: too few for "
          f"--batch_size={config.batch_size} streams of at least two --maxlen={config.maxlen} "
          "windows each (--carry_state). Lower --batch_size or --maxlen, or use a longer text.")
  else:
    count = corpus.num_train_windows // config.batch_size
  return min(count, config.steps_per_epoch) if config.steps_per_epoch else count


def prepare_workdir(config: Config, workdir: Path) -> None:
  """--restart moves the previous run's outputs aside (process 0); every process waits."""
  if config.restart and distributed.is_primary() and (moved := checkpoint.set_aside_run(workdir)):
    print(f"--restart: moved the previous run's outputs to {moved}", flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxchar: workdir ready")


def plan_length(config: Config, corpus: data.Corpus
                ) -> tuple[Config, budget_lib.Budget | None, bool]:
  """The config with --epochs=0 resolved (chosen from the text, or no limit under a budget),
  the budget, and whether the epochs were chosen."""
  seconds = budget_lib.parse_duration(config.time_budget)
  budget = budget_lib.Budget(seconds, config.lr_schedule == "cosine") if seconds else None
  if config.epochs:
    return config, budget, False
  if budget:
    return dataclasses.replace(config, epochs=UNLIMITED_EPOCHS), budget, False
  return dataclasses.replace(config, epochs=auto_epochs(corpus.cut)), budget, True


def describe_length(config: Config, corpus: data.Corpus, budget: budget_lib.Budget | None,
                    auto: bool) -> None:
  if budget:
    say(f"time budget: {budget_lib.describe(budget.seconds)} of training (--time_budget)"
        + (", no epoch limit" if config.epochs == UNLIMITED_EPOCHS
           else f", at most {config.epochs} epochs")
        + ("; the learning rate decays over it (cosine)" if budget.cosine else ""))
  if auto:
    say(f"epochs: {config.epochs}, chosen for {corpus.cut:,} training characters (--epochs=0: "
        f"about {AUTO_TRAIN_CHARS / 1e6:g} M characters in all, {MAX_AUTO_EPOCHS} epochs at "
        "most)")


def begin(config: Config, workdir: Path, corpus: data.Corpus,
          checkpoints: checkpoint.Checkpoints, run_meta: dict, base: init_from.Base | None,
          new_symbols: str | None, made: tuple, steps_per_epoch: int,
          val: ValidationSet) -> RunState:
  """Where the run begins: its latest checkpoint, else `base`'s parameters, else a fresh
  initialisation (`made`: the key, model, optimizer and state template)."""
  key, model, tx, template = made
  changed = []

  def check(meta: dict) -> None:
    changed[:] = resume.check_resumable(meta, run_meta, workdir)

  restored = checkpoints.restore_latest(template, check)
  if restored:
    saved, meta = restored
    state = resumed_state(meta, steps.restored_train_state(key, model, tx, saved), corpus,
                          val, run_meta, EarlyStopping(config.patience))
    if config.carry_state:
      state.carries = steps.rows_to_devices([tuple(pair) for pair in saved["carries"]])
    where = (f"the end of epoch {meta['epoch']}" if meta["epoch_complete"] else
             f"epoch {meta['epoch']}, batch {meta['batch_in_epoch']} of {steps_per_epoch}")
    began = run_meta["init_from"]
    say(f"resuming from the checkpoint at step {state.step} ({where})"
        + (f"; this run started from {began['workdir']} step {began['step']}" if began else ""))
    if changed:
      say(f"resumed with {', '.join(changed)}")
    return state
  train = steps.create_train_state(key, model, config.maxlen, tx)
  if base is not None:
    say(init_from.describe(base, new_symbols))
    if warning := init_from.carry_over_warning(base, new_symbols, corpus):
      say(warning)
    params = jax.tree_util.tree_map(jnp.asarray, init_from.start_params(
        jax.device_get(train.params), base.params, base.vocab.size))
    train = train.replace(params=params, opt_state=tx.init(params))
    run_meta["init_from"] = init_from.origin(base, new_symbols)
  carries = (steps.rows_to_devices(steps.zero_carries(model, config.batch_size))
             if config.carry_state else None)
  return RunState(train=steps.replicate(train), epoch=1, batch=0, step=0,
                  early=EarlyStopping(config.patience), val=val, carries=carries)


def resumed_state(meta: dict, train, corpus: data.Corpus, val: ValidationSet, run_meta: dict,
                  early: EarlyStopping) -> RunState:
  """The RunState a checkpoint's metadata describes (`run_meta` takes the run's origin)."""
  complete = meta["epoch_complete"]
  early.restore(meta)
  run_meta["init_from"] = meta.get("init_from")  # where this run began, not today's base
  sized = meta.get("budget_val_windows")  # a --time_budget run keeps its windows
  if sized:
    val = ValidationSet.of(corpus, min(sized, val.count), val.low is not None)
  step = int(train.step)
  return RunState(train=steps.replicate(train), epoch=meta["epoch"] + complete,
                  batch=0 if complete else meta["batch_in_epoch"], step=step, early=early,
                  val=val, epoch_losses=[] if complete else meta["epoch_losses"],
                  last_saved=step, elapsed_before=meta["elapsed_s"], val_windows=sized)


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
