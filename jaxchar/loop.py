"""The training loop: pmapped steps over all local devices, validation, samples, checkpoints."""

import functools
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils

from jaxchar import checkpoint, data, generate, metrics, plot, progress, steps
from jaxchar import corpus as corpus_lib
from jaxchar.config import DEFAULT_DATA, Config
from jaxchar.errors import UserError
from jaxchar.model import CharLSTM, count_params
from jaxchar.preemption import StopRequests

LOG_EVERY = 10  # steps between progress updates (each one is a device-to-host fetch)


def _train_on_starts(state, ids, starts, *, maxlen: int):
  return steps.train_step(state, data.gather_windows(ids, starts, maxlen))


def _eval_on_starts(state, ids, starts, weights, *, maxlen: int):
  batch = data.gather_windows(ids, starts, maxlen)
  return steps.eval_step(state, {**batch, "weights": weights})


def _check_finite(loss: float, step: int, config: Config) -> None:
  if not math.isfinite(loss):
    raise UserError(
        f"the training loss became {loss} by step {step}, so training stopped. The learning rate "
        f"({config.learning_rate}) is probably too high for this model and text; lower it, e.g. "
        f"--learning_rate={config.learning_rate / 10:g}.")


def evaluate(p_eval_step, p_state, p_ids, corpus: data.Corpus, batch_size: int) -> float:
  """Mean next-character cross-entropy (nats) over every validation window."""
  num_devices = jax.local_device_count()
  totals = []
  for starts, weights in data.eval_batches(corpus.val_starts, batch_size, num_devices):
    totals.append(p_eval_step(p_state, p_ids, starts, weights))
  loss_sum = sum(float(t["loss_sum"][0]) for t in totals)
  count = sum(float(t["count"][0]) for t in totals)
  return loss_sum / count


def epoch_samples(state, model: CharLSTM, corpus: data.Corpus, config: Config,
                  epoch: int) -> tuple[str, dict[float, str]]:
  """Generates from a random training window at every temperature: (markdown, {T: text})."""
  rng = np.random.default_rng([config.seed, epoch, 1])
  start = int(rng.integers(0, corpus.cut - config.maxlen))
  seed_ids = corpus.ids[start:start + config.maxlen]
  temps = jnp.asarray(config.temperatures, jnp.float32)
  context = jnp.broadcast_to(jnp.asarray(seed_ids), (len(temps), config.maxlen))
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), epoch)
  generated = generate.generate_window(model, state.params, context, temps, key, config.sample_len)
  seed_text = corpus.vocab.decode(seed_ids)
  texts = {t: f"[{seed_text}]{corpus.vocab.decode(row)}"
           for t, row in zip(config.temperatures, np.asarray(generated))}
  parts = [f"## Epoch {epoch}\n\nSeed window (in brackets below): `{seed_text!r}`\n"]
  parts += [f"### Temperature {t}\n\n```\n{text}\n```\n" for t, text in texts.items()]
  return "\n".join(parts), texts


# Settings that fix the meaning of a checkpoint's parameters and data position.
_RESUME_KEYS = ("vocab", "corpus_sha256", "lowercase", "maxlen", "hidden", "step", "batch_size",
                "val_fraction", "seed")


def _run_meta(config: Config, corpus: data.Corpus) -> dict:
  """What a checkpoint must carry besides the state: enough to sample and to resume safely."""
  return {"vocab": corpus.vocab.chars, "corpus_sha256": corpus.sha256,
          "lowercase": config.lowercase, "maxlen": config.maxlen, "hidden": config.hidden,
          "vocab_size": corpus.vocab.size, "step": config.step, "batch_size": config.batch_size,
          "val_fraction": config.val_fraction, "seed": config.seed, "config": asdict(config)}


def _check_resumable(saved: dict, run_meta: dict, workdir: Path) -> None:
  diffs = [f"{k} {_short(saved.get(k))} (checkpoint) vs {_short(run_meta[k])} (now)"
           for k in _RESUME_KEYS if saved.get(k) != run_meta[k]]
  if diffs:
    raise UserError(
        f"{workdir} holds checkpoints of a different run, so it cannot be resumed: "
        f"{'; '.join(diffs)}. Rerun with the same settings, or start afresh with --restart "
        "(existing checkpoints are moved aside, not deleted) or a new --workdir.")


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 24 else text[:21] + "...'"


def train_and_evaluate(config: Config, workdir: str | Path) -> list[dict]:
  """Trains (resuming from workdir's latest checkpoint); returns a summary dict per epoch run."""
  workdir = Path(workdir)
  text = corpus_lib.read_text(config.data, DEFAULT_DATA)
  corpus = data.build_corpus(text, maxlen=config.maxlen, step=config.step,
                             val_fraction=config.val_fraction, lowercase=config.lowercase)
  num_devices = jax.local_device_count()
  if config.batch_size % num_devices:
    raise UserError(
        f"--batch_size={config.batch_size} does not split evenly over the {num_devices} local "
        f"devices; use a multiple of {num_devices}, e.g. "
        f"--batch_size={max(1, config.batch_size // num_devices) * num_devices}.")
  eval_batch_size = -(-config.eval_batch_size // num_devices) * num_devices
  workdir.mkdir(parents=True, exist_ok=True)
  if config.restart and (moved := checkpoint.set_aside_run(workdir)):
    print(f"--restart: moved the previous run's outputs to {moved}", flush=True)

  model = CharLSTM(corpus.vocab.size, config.hidden)
  state = steps.create_train_state(jax.random.PRNGKey(config.seed), model, config.maxlen,
                                   config.learning_rate)
  run_meta = _run_meta(config, corpus)
  checkpoints = checkpoint.Checkpoints(workdir, config.keep)
  start_epoch, start_batch, epoch_losses, elapsed_before = 1, 0, [], 0.0
  restored = checkpoints.restore_latest(jax.device_get(_savable(state)))
  if restored:
    saved_state, meta = restored
    _check_resumable(meta, run_meta, workdir)
    state = state.replace(**saved_state)
    start_epoch, start_batch = meta["epoch"], meta["batch_in_epoch"]
    epoch_losses, elapsed_before = meta["epoch_losses"], meta["elapsed_s"]
    if meta["epoch_complete"]:
      start_epoch, start_batch, epoch_losses = start_epoch + 1, 0, []
    print(f"resuming from the checkpoint at step {int(state.step)} (epoch {start_epoch}, "
          f"batch {start_batch})", flush=True)
  print(f"corpus: {len(corpus.ids):,} characters, vocabulary {corpus.vocab.size}; "
        f"{corpus.num_train_windows:,} training and {corpus.num_val_windows:,} validation "
        f"windows; model: {count_params(state.params):,} parameters; devices: {num_devices} x "
        f"{jax.devices()[0].platform}", flush=True)
  log = metrics.RunLog(workdir, resume_step=int(state.step), resume_epoch=start_epoch - 1)

  p_state = jax_utils.replicate(state)
  p_ids = jax_utils.replicate(jnp.asarray(corpus.ids))
  p_train_step = jax.pmap(functools.partial(_train_on_starts, maxlen=config.maxlen),
                          axis_name=steps.AXIS, donate_argnums=(0,))
  p_eval_step = jax.pmap(functools.partial(_eval_on_starts, maxlen=config.maxlen),
                         axis_name=steps.AXIS)
  run_start = time.perf_counter()
  last_saved = [int(state.step) if restored else None]

  def elapsed() -> float:
    return elapsed_before + time.perf_counter() - run_start

  def save(epoch: int, batch_in_epoch: int, complete: bool, val_loss: float | None = None):
    host_state = jax.device_get(_savable(jax_utils.unreplicate(p_state)))
    if int(host_state["step"]) == last_saved[0]:
      return  # this exact point is already the latest checkpoint
    meta = {**run_meta, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "epoch_complete": complete, "epoch_losses": [float(x) for x in epoch_losses],
            "val_loss": val_loss, "elapsed_s": elapsed()}
    log.flush()  # records up to a checkpoint must survive a crash after it
    checkpoints.save(int(host_state["step"]), host_state, meta, val_loss)
    last_saved[0] = int(host_state["step"])

  history = []
  with StopRequests() as stop:
    for epoch in range(start_epoch, config.epochs + 1):
      order = data.epoch_order(corpus.num_train_windows, config.seed, epoch)
      batches = data.train_batches(corpus.train_starts, order, config.batch_size, num_devices)
      if config.steps_per_epoch:
        batches = batches[:config.steps_per_epoch]
      first = start_batch if epoch == start_epoch else 0
      if first == 0:
        epoch_losses = []
      epoch_start = time.perf_counter()
      pending = []  # device-side losses not yet fetched to epoch_losses

      def fetch_pending():
        epoch_losses.extend(np.asarray(jnp.stack(pending))[:, 0].tolist() if pending else [])
        pending.clear()

      done = first
      with progress.EpochProgress(epoch, config.epochs, len(batches), config.batch_size,
                                  first_step=first) as bar:
        while done < len(batches) and not stop.requested:
          p_state, step_metrics = p_train_step(p_state, p_ids, batches[done])
          pending.append(step_metrics["loss"])
          done += 1
          global_step = int(p_state.step[0])
          at_log = global_step % config.log_every == 0
          if len(pending) == LOG_EVERY or done == len(batches) or at_log:
            fetch_pending()
            running = float(np.mean(epoch_losses[-LOG_EVERY:]))
            _check_finite(running, global_step, config)
            bar.update(done, running)
          if at_log:
            rate = (done - first) * config.batch_size / (time.perf_counter() - epoch_start)
            log.write({"kind": "train", "step": global_step, "epoch": epoch,
                       "train_loss": float(np.mean(epoch_losses[-config.log_every:])),
                       "learning_rate": config.learning_rate, "windows_per_s": rate,
                       "elapsed_s": elapsed()})
          if (config.save_every_steps and done < len(batches)
              and global_step % config.save_every_steps == 0):
            fetch_pending()
            save(epoch, done, complete=False)
      if stop.requested:
        fetch_pending()
        save(epoch, done, complete=False)
        checkpoints.wait()
        checkpoints.close()
        log.close()
        print(f"{stop.signal_name}: saved a checkpoint at step {int(p_state.step[0])} in "
              f"{workdir}; run the same command again to resume from it.", flush=True)
        sys.exit(stop.exit_code)
      summary = _end_epoch(epoch, epoch_losses, len(batches) - first, epoch_start, p_state,
                           p_eval_step, p_ids, corpus, config, eval_batch_size)
      summary["elapsed_s"] = elapsed()
      history.append(summary)
      log.write({"kind": "epoch", **summary, "learning_rate": config.learning_rate})
      if config.sample_len:
        markdown, texts = epoch_samples(jax_utils.unreplicate(p_state), model, corpus, config,
                                        epoch)
        print(markdown, flush=True)
        log.write_samples(markdown, texts, summary["step"])
      plot.write_loss_plot(workdir)
      save(epoch, len(batches), complete=True, val_loss=summary["val_loss"])
  checkpoints.wait()
  checkpoints.close()
  log.close()
  return history


def _savable(state: steps.TrainState) -> dict:
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def _end_epoch(epoch, epoch_losses, steps_run, epoch_start, p_state, p_eval_step, p_ids,
               corpus, config, eval_batch_size) -> dict:
  """Validates and prints the epoch's one-line summary."""
  train_loss = float(np.mean(epoch_losses)) if epoch_losses else float("nan")
  _check_finite(train_loss, int(p_state.step[0]), config)
  train_seconds = time.perf_counter() - epoch_start
  val_loss = (evaluate(p_eval_step, p_state, p_ids, corpus, eval_batch_size)
              if corpus.num_val_windows else None)
  summary = {"epoch": epoch, "step": int(p_state.step[0]), "train_loss": train_loss,
             "val_loss": val_loss, "val_bpc": val_loss / math.log(2) if val_loss else None,
             "windows_per_s": steps_run * config.batch_size / max(train_seconds, 1e-9),
             "seconds": time.perf_counter() - epoch_start}
  val_text = (f"val loss {val_loss:.4f} nats ({summary['val_bpc']:.3f} bits/char)"
              if val_loss is not None else "no validation windows")
  print(f"epoch {epoch:3d} | train loss {train_loss:.4f} | {val_text} | "
        f"{summary['windows_per_s']:,.0f} seq/s | {summary['seconds']:.1f} s", flush=True)
  return summary
