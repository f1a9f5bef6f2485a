"""The training loop: pmapped steps over every device of every process, validation, samples,
checkpoints and records. Only process 0 prints and writes records; all processes checkpoint."""

import functools
import hashlib
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils
from jax.experimental import multihost_utils

from jaxchar import checkpoint, data, distributed, generate, metrics, plot, progress, steps
from jaxchar import corpus as corpus_lib
from jaxchar.config import DEFAULT_DATA, Config
from jaxchar.early_stopping import EarlyStopping
from jaxchar.errors import UserError
from jaxchar.model import count_params
from jaxchar.preemption import StopRequests

LOG_EVERY = 10  # steps between progress updates and stop checks (each is a host sync)


def _train_on_starts(state, ids, starts, *, maxlen: int, every_position: bool):
  return steps.train_step(state, data.gather_windows(ids, starts, maxlen, every_position))


def _eval_on_starts(state, ids, starts, weights, *, maxlen: int):
  batch = data.gather_windows(ids, starts, maxlen)
  return steps.eval_step(state, {**batch, "weights": weights})


def pmapped_steps(maxlen: int, every_position: bool = False):
  """The loop's train and eval steps, pmapped over all local devices (the one place)."""
  p_train_step = jax.pmap(functools.partial(_train_on_starts, maxlen=maxlen,
                                            every_position=every_position),
                          axis_name=steps.AXIS, donate_argnums=(0,))
  p_eval_step = jax.pmap(functools.partial(_eval_on_starts, maxlen=maxlen), axis_name=steps.AXIS)
  return p_train_step, p_eval_step


def _check_finite(loss: float, step: int, config: Config) -> None:
  if not math.isfinite(loss):
    raise UserError(
        f"the training loss became {loss} by step {step}, so training stopped. The learning rate "
        f"({config.learning_rate}) is probably too high for this model and text; lower it, e.g. "
        f"--learning_rate={config.learning_rate / 10:g}.")


def evaluate(p_eval_step, p_state, p_ids, val_starts: np.ndarray, batch_size: int) -> float:
  """Mean next-character cross-entropy (nats) over the windows at `val_starts`, all processes."""
  num_batches = -(-len(val_starts) // batch_size)
  totals = []
  with progress.ValidationProgress(num_batches, len(val_starts),
                                   enabled=distributed.is_primary()) as bar:
    for starts, weights in data.eval_batches(val_starts, batch_size, jax.device_count()):
      totals.append(p_eval_step(p_state, p_ids, distributed.process_slice(starts),
                                distributed.process_slice(weights)))
      if len(totals) > 1:  # the previous batch: keeps one batch queued behind the wait
        jax.block_until_ready(totals[-2])
        bar.update(len(totals) - 1)
    bar.update(num_batches)
  loss_sum = sum(float(t["loss_sum"][0]) for t in totals)
  count = sum(float(t["count"][0]) for t in totals)
  return loss_sum / count


def _say(*args) -> None:
  if distributed.is_primary():
    print(*args, flush=True)


def _savable(state: steps.TrainState) -> dict:
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def params_fingerprint(params) -> str:
  """A short hash of the parameter bytes, to check every process holds the same model."""
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(jax.device_get(params)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:16]


def _check_processes_agree(params) -> None:
  if jax.process_count() == 1:
    return
  mine = np.frombuffer(bytes.fromhex(params_fingerprint(params)), np.uint8)
  every = np.asarray(multihost_utils.process_allgather(mine))
  if not (every == every[0]).all():
    raise UserError("the processes ended with different parameters; this is a bug in the "
                    "multi-process setup, please report it with the command lines used.")
  _say(f"parameters identical on all {jax.process_count()} processes "
       f"(fingerprint {params_fingerprint(params)})")


def train_and_evaluate(config: Config, workdir: str | Path) -> list[dict]:
  """Trains (resuming from workdir's latest checkpoint); returns a summary dict per epoch run."""
  workdir = Path(workdir)
  text = corpus_lib.read_text(config.data, DEFAULT_DATA)
  corpus = data.build_corpus(text, maxlen=config.maxlen, step=config.step,
                             val_fraction=config.val_fraction, lowercase=config.lowercase)
  del text  # the corpus keeps only its ids: host memory stays about 1 byte per character
  num_devices = jax.device_count()  # all processes' devices share every global batch
  if config.batch_size % num_devices:
    raise UserError(
        f"--batch_size={config.batch_size} does not split evenly over the {num_devices} devices; "
        f"use a multiple of {num_devices}, e.g. "
        f"--batch_size={max(1, config.batch_size // num_devices) * num_devices}.")
  eval_batch_size = -(-config.eval_batch_size // num_devices) * num_devices
  primary = distributed.is_primary()
  workdir.mkdir(parents=True, exist_ok=True)
  if config.restart and primary and (moved := checkpoint.set_aside_run(workdir)):
    print(f"--restart: moved the previous run's outputs to {moved}", flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxchar: workdir ready")

  steps_per_epoch = corpus.num_train_windows // config.batch_size
  if config.steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
  model = steps.model_from_config(config, corpus.vocab.size)
  tx, learning_rate = steps.optimizer_from_config(config, steps_per_epoch)
  state = steps.create_train_state(jax.random.PRNGKey(config.seed), model, config.maxlen, tx)
  val_starts = data.evenly_spaced(corpus.val_starts, config.val_windows)
  subsampled = (f" (validating on {len(val_starts):,} evenly spaced of them, --val_windows)"
                if len(val_starts) < corpus.num_val_windows else "")
  _say(f"devices: {num_devices} x {jax.devices()[0].platform} in {jax.process_count()} "
       f"process(es); corpus: {len(corpus.ids):,} characters, vocabulary {corpus.vocab.size}; "
       f"{corpus.num_train_windows:,} training and {corpus.num_val_windows:,} validation "
       f"windows{subsampled}; model: {count_params(state.params):,} parameters "
       f"({config.lstm_impl} LSTM)")
  run_meta = checkpoint.run_metadata(config, corpus)
  checkpoints = checkpoint.Checkpoints(workdir, config.keep)
  start_epoch, start_batch, epoch_losses, elapsed_before = 1, 0, [], 0.0
  early = EarlyStopping(config.patience)
  restored = checkpoints.restore_latest(jax.device_get(_savable(state)), run_meta)
  if restored:
    saved_state, meta = restored
    state = state.replace(**saved_state)
    start_epoch, start_batch = meta["epoch"], meta["batch_in_epoch"]
    epoch_losses, elapsed_before = meta["epoch_losses"], meta["elapsed_s"]
    early.restore(meta)
    if meta["epoch_complete"]:
      start_epoch, start_batch, epoch_losses = start_epoch + 1, 0, []
    _say(f"resuming from the checkpoint at step {int(state.step)} (epoch {start_epoch}, "
         f"batch {start_batch})")
  log = metrics.RunLog(workdir, int(state.step), start_epoch - 1) if primary else None

  p_state = jax_utils.replicate(state)
  p_ids = jax_utils.replicate(jnp.asarray(corpus.ids))
  p_train_step, p_eval_step = pmapped_steps(config.maxlen, config.objective == "every")
  run_start = time.perf_counter()
  last_saved = [int(state.step) if restored else None]
  global_step = int(state.step)  # counted on the host: reading p_state.step would wait for it

  def elapsed() -> float:
    return elapsed_before + time.perf_counter() - run_start

  def save(epoch: int, batch_in_epoch: int, complete: bool, val_loss: float | None = None):
    if int(p_state.step[0]) == last_saved[0]:
      return  # this exact point is already the latest checkpoint
    host_state = jax.device_get(_savable(jax_utils.unreplicate(p_state)))
    meta = {**run_meta, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "epoch_complete": complete, "epoch_losses": [float(x) for x in epoch_losses],
            "val_loss": val_loss, "elapsed_s": elapsed(), **early.state()}
    if log:
      log.flush()  # records up to a checkpoint must survive a crash after it
    checkpoints.save(int(host_state["step"]), host_state, meta, val_loss)
    last_saved[0] = int(host_state["step"])

  def should_stop(steps_done: int) -> bool:
    if jax.process_count() == 1:
      return stop.requested
    # All processes must stop at the same step: agree every LOG_EVERY steps (a collective).
    return steps_done % LOG_EVERY == 0 and distributed.any_process(stop.requested)

  if start_epoch > config.epochs:
    _say(f"nothing to train: the checkpoint in {workdir} already finished epoch "
         f"{start_epoch - 1} of --epochs={config.epochs}; raise --epochs to train further, or "
         "use --restart to start afresh.")
  elif early.stopped and start_batch == 0:
    _say(f"nothing to train: this run stopped early ({early.describe()}); raise --patience "
         "(or 0 = off) to train further, or use --restart to start afresh.")
    start_epoch = config.epochs + 1
  history = []
  with StopRequests() as stop:
    for epoch in range(start_epoch, config.epochs + 1):
      order = data.epoch_order(corpus.num_train_windows, config.seed, epoch)
      batches = data.train_batches(corpus.train_starts, order, config.batch_size, num_devices)
      batches = batches[:steps_per_epoch]  # the --steps_per_epoch cap, if any
      first = start_batch if epoch == start_epoch else 0
      if first == 0:
        epoch_losses = []
      epoch_start = time.perf_counter()
      pending = []  # device-side losses not yet fetched to epoch_losses

      def fetch_pending():
        epoch_losses.extend(np.asarray(jnp.stack(pending))[:, 0].tolist() if pending else [])
        pending.clear()

      done, stopping = first, False
      with progress.EpochProgress(epoch, config.epochs, len(batches), config.batch_size,
                                  first_step=first, enabled=primary) as bar:
        while done < len(batches) and not (stopping := should_stop(done)):
          p_state, step_metrics = p_train_step(p_state, p_ids,
                                               distributed.process_slice(batches[done]))
          pending.append(step_metrics["loss"])
          done += 1
          global_step += 1
          at_log = global_step % config.log_every == 0
          if len(pending) == LOG_EVERY or done == len(batches) or at_log:
            fetch_pending()
            running = float(np.mean(epoch_losses[-LOG_EVERY:]))
            _check_finite(running, global_step, config)
            bar.update(done, running)
          if at_log and log:
            rate = (done - first) * config.batch_size / (time.perf_counter() - epoch_start)
            log.write({"kind": "train", "step": global_step, "epoch": epoch,
                       "train_loss": float(np.mean(epoch_losses[-config.log_every:])),
                       "learning_rate": _rate_at(learning_rate, global_step),
                       "windows_per_s": rate,
                       "elapsed_s": elapsed()})
          if (config.save_every_steps and done < len(batches)
              and global_step % config.save_every_steps == 0):
            fetch_pending()
            save(epoch, done, complete=False)
      if stopping:
        fetch_pending()
        save(epoch, done, complete=False)
        checkpoints.wait()
        checkpoints.close()
        if log:
          log.close()
        _say(f"{stop.signal_name or 'a stop request from another process'}: saved a checkpoint "
             f"at step {int(p_state.step[0])} in {workdir}; run the same command again to "
             "resume from it.")
        sys.exit(stop.exit_code)
      summary = _end_epoch(epoch, epoch_losses, len(batches) - first, epoch_start, p_state,
                           p_eval_step, p_ids, val_starts, corpus, config, eval_batch_size)
      summary["elapsed_s"] = elapsed()
      history.append(summary)
      if log:
        log.write({"kind": "epoch", **summary,
                   "learning_rate": _rate_at(learning_rate, summary["step"])})
      if config.sample_len and primary:
        markdown, texts = generate.epoch_samples(jax_utils.unreplicate(p_state), model, corpus,
                                                 config, epoch)
        print(markdown, flush=True)
        log.write_samples(markdown, texts, summary["step"])
      if primary:
        plot.write_loss_plot(workdir)
      early.update(epoch, summary["val_loss"])
      save(epoch, len(batches), complete=True, val_loss=summary["val_loss"])
      if early.stopped:
        _say(f"early stopping: {early.describe()}; the best checkpoint is kept in {workdir}.")
        break
  checkpoints.wait()
  checkpoints.close()
  if log:
    log.close()
  _check_processes_agree(jax_utils.unreplicate(p_state).params)
  return history


def _rate_at(learning_rate, step: int) -> float:
  return float(learning_rate(step)) if callable(learning_rate) else learning_rate


def _end_epoch(epoch, epoch_losses, steps_run, epoch_start, p_state, p_eval_step, p_ids,
               val_starts, corpus, config, eval_batch_size) -> dict:
  """Validates and prints the epoch's one-line summary."""
  train_loss = float(np.mean(epoch_losses)) if epoch_losses else float("nan")
  _check_finite(train_loss, int(p_state.step[0]), config)
  train_seconds = time.perf_counter() - epoch_start
  val_loss = (evaluate(p_eval_step, p_state, p_ids, val_starts, eval_batch_size)
              if len(val_starts) else None)
  summary = {"epoch": epoch, "step": int(p_state.step[0]), "train_loss": train_loss,
             "val_loss": val_loss, "val_bpc": val_loss / math.log(2) if val_loss else None,
             "windows_per_s": steps_run * config.batch_size / max(train_seconds, 1e-9),
             "seconds": time.perf_counter() - epoch_start}
  sampled = (f", {len(val_starts):,} of {corpus.num_val_windows:,} windows"
             if len(val_starts) < corpus.num_val_windows else "")
  val_text = (f"val loss {val_loss:.4f} nats ({summary['val_bpc']:.3f} bits/char{sampled})"
              if val_loss is not None else "no validation windows")
  _say(f"epoch {epoch:3d} | train loss {train_loss:.4f} | {val_text} | "
       f"{summary['windows_per_s']:,.0f} seq/s | {summary['seconds']:.1f} s")
  return summary
