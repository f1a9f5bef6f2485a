"""Trains a character-level LSTM: `python -m jaxchar.train --flagfile=launch/moe.flags`."""

import jax
from absl import app, flags

from jaxchar import distributed, host, logs
from jaxchar.config import (LR_SCHEDULES, LSTM_IMPLS, OBJECTIVES, OPTIMIZERS, Config,
                            parse_temperatures)
from jaxchar.errors import UserError, exits_on_user_error
from jaxchar.loop import train_and_evaluate

_DEFAULTS = Config()
flags.DEFINE_string("data", _DEFAULTS.data, "UTF-8 text to train on. The default Moe's Tavern "
                    "corpus is fetched (mirror or download) and checksum-verified when missing.")
flags.DEFINE_bool("lowercase", _DEFAULTS.lowercase, "Lowercase the text before building the "
                  "vocabulary.")
flags.DEFINE_integer("maxlen", _DEFAULTS.maxlen, "Window length in characters (model context).")
flags.DEFINE_integer("step", _DEFAULTS.step, "Characters between consecutive training windows.")
flags.DEFINE_float("val_fraction", _DEFAULTS.val_fraction, "Share (0 to <1) of the text, from the end and "
                   "cut at a paragraph break, held out for validation; 0 = none.")
flags.DEFINE_integer("hidden", _DEFAULTS.hidden, "LSTM units.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Global batch size in windows, split "
                     "evenly over all devices.")
flags.DEFINE_integer("eval_batch_size", _DEFAULTS.eval_batch_size, "Global batch size in "
                     "windows for validation (rounded up to a multiple of the device count).")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Learning rate (the peak, with a "
                   "schedule).")
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Passes over the training windows; 0 = chosen "
                     "from the corpus size (about 4 M training characters in all, 1 to 30 "
                     "epochs; the run's second line says how many).")
flags.DEFINE_integer("steps_per_epoch", _DEFAULTS.steps_per_epoch, "Cap on steps per epoch "
                     "(for quick runs); 0 = every full batch.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed for initialisation, shuffling and sampling.")
flags.DEFINE_list("temperatures", [str(t) for t in _DEFAULTS.temperatures], "Sampling "
                  "temperatures for the per-epoch samples, comma-separated.")
flags.DEFINE_integer("sample_len", _DEFAULTS.sample_len, "Characters generated per temperature "
                     "after each epoch; 0 = no samples.")
flags.DEFINE_integer("save_every_steps", _DEFAULTS.save_every_steps, "Also checkpoint every "
                     "this many steps; 0 = only at epoch ends and on SIGTERM/SIGINT.")
flags.DEFINE_integer("keep", _DEFAULTS.keep, "Most recent checkpoints to keep, besides the best "
                     "by validation loss.")
flags.DEFINE_bool("restart", _DEFAULTS.restart, "Start afresh: move the previous run's "
                  "checkpoints, metrics and samples in --workdir to replaced/<time>/ instead of "
                  "resuming from them.")
flags.DEFINE_integer("log_every", _DEFAULTS.log_every, "Steps between metrics.jsonl and "
                     "TensorBoard records (each epoch end is recorded too).")
flags.DEFINE_string("workdir", "ckpt/moe", "Folder for this run: checkpoints/, metrics.jsonl, "
                    "tensorboard/, samples.md, loss.png. "
                    "Rerunning with the same folder resumes from its latest checkpoint.")
flags.DEFINE_enum("dtype", _DEFAULTS.dtype, ["float32", "bfloat16"], "Computation dtype. "
                  "bfloat16 speeds up TPUs and recent GPUs (slower on CPUs); parameters and "
                  "optimizer state stay float32.")
flags.DEFINE_enum("sample_mode", _DEFAULTS.sample_mode, ["window", "stateful"], "Per-epoch "
                  "samples: window reruns the LSTM over the last maxlen characters for each new "
                  "one (as in training); stateful carries the LSTM state, one step per "
                  "character (faster, sees further back).")
flags.DEFINE_enum("objective", _DEFAULTS.objective, OBJECTIVES, "Training loss: last = "
                  "the character after each window (the reference); every = the next character "
                  "at every position of the window (60 targets per window). Validation is the "
                  "same for both: the character after a full window.")
flags.DEFINE_integer("num_layers", _DEFAULTS.num_layers, "Stacked LSTM layers.")
flags.DEFINE_integer("embed_dim", _DEFAULTS.embed_dim, "Learned character embedding size; 0 = "
                     "one-hot inputs (the reference).")
flags.DEFINE_float("dropout", _DEFAULTS.dropout, "Dropout rate between LSTM layers and before the "
                   "output layer, in training only; 0 = off.")
flags.DEFINE_enum("optimizer", _DEFAULTS.optimizer, OPTIMIZERS, "rmsprop = Keras's "
                  "RMSprop (the reference); adamw = optax.adamw.")
flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "AdamW's decoupled weight decay.")
flags.DEFINE_float("clip_norm", _DEFAULTS.clip_norm, "Clip gradients to this global norm before "
                   "the optimizer; 0 = off.")
flags.DEFINE_enum("lr_schedule", _DEFAULTS.lr_schedule, LR_SCHEDULES,
                  "Learning rate after --warmup_steps of linear warmup: constant; cosine decay to "
                  "0 at the last step of --epochs; exponential = times --lr_decay per epoch.")
flags.DEFINE_float("lr_decay", _DEFAULTS.lr_decay, "Per-epoch factor of --lr_schedule=exponential.")
flags.DEFINE_integer("warmup_steps", _DEFAULTS.warmup_steps, "Steps of linear learning-rate "
                     "warmup from 0; 0 = none.")
flags.DEFINE_integer("patience", _DEFAULTS.patience, "Stop after this many epochs without a new "
                     "best validation loss (the best checkpoint is always kept); 0 = off.")
flags.DEFINE_enum("lstm_impl", _DEFAULTS.lstm_impl, LSTM_IMPLS, "LSTM implementation, same "
                  "parameters and results: fused = input rows looked up by id and weight gradients "
                  "as one matmul after the time loop (faster, see BENCHMARKS.md); flax = "
                  "nn.RNN(nn.OptimizedLSTMCell) on one-hot inputs, the reference (its cost grows "
                  "with the vocabulary).")
flags.DEFINE_integer("val_windows", _DEFAULTS.val_windows, "Validate on at most this many "
                     "windows: above it, this many evenly spaced ones, the same every epoch.")
flags.DEFINE_integer("cpu_devices", 0, "JAX devices on a CPU host, each taking its share of "
                     "the batch: 0 = one per core (the largest count up to the number of cores "
                     "that divides --batch_size into shares of at least 16 windows; a count "
                     "forced by XLA_FLAGS is kept). No effect on GPU/TPU.")
flags.DEFINE_string("compilation_cache", "", "Folder for JAX's persistent compilation cache, so "
                    "reruns skip compiling the steps; empty = off. launch/*.flags turn it on.")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"], "Multi-process training with "
                  "jax.distributed: auto = when the three flags below are given or a SLURM / "
                  "multi-host Cloud TPU job is detected; on = always (JAX detects the cluster); "
                  "off = never.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, reachable from every "
                    "process, e.g. 10.0.0.2:12355.")
flags.DEFINE_integer("num_processes", None, "Number of training processes in the run.")
flags.DEFINE_integer("process_id", None, "This process's index, 0 to --num_processes - 1.")
flags.DEFINE_integer("distributed_timeout_s", 120, "Seconds to wait for every process to reach "
                     "the coordinator before giving up with an error.")
FLAGS = flags.FLAGS

def config_from_flags() -> Config:
  """The frozen, validated Config described by the parsed flags."""
  return Config(
      data=FLAGS.data, lowercase=FLAGS.lowercase, maxlen=FLAGS.maxlen, step=FLAGS.step,
      val_fraction=FLAGS.val_fraction, hidden=FLAGS.hidden, batch_size=FLAGS.batch_size,
      eval_batch_size=FLAGS.eval_batch_size, learning_rate=FLAGS.learning_rate,
      epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch, seed=FLAGS.seed,
      temperatures=parse_temperatures(FLAGS.temperatures), sample_len=FLAGS.sample_len,
      save_every_steps=FLAGS.save_every_steps, keep=FLAGS.keep, restart=FLAGS.restart,
      log_every=FLAGS.log_every, dtype=FLAGS.dtype, sample_mode=FLAGS.sample_mode,
      objective=FLAGS.objective, num_layers=FLAGS.num_layers, embed_dim=FLAGS.embed_dim,
      dropout=FLAGS.dropout, optimizer=FLAGS.optimizer, weight_decay=FLAGS.weight_decay,
      clip_norm=FLAGS.clip_norm, lr_schedule=FLAGS.lr_schedule, lr_decay=FLAGS.lr_decay,
      warmup_steps=FLAGS.warmup_steps, patience=FLAGS.patience, lstm_impl=FLAGS.lstm_impl,
      val_windows=FLAGS.val_windows,
  ).validate()


@exits_on_user_error
def main(argv: list[str]) -> None:
  logs.quiet_library_logs()
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --help).")
  config = config_from_flags()
  if FLAGS.cpu_devices < 0:
    raise UserError(f"--cpu_devices={FLAGS.cpu_devices} must be >= 0 (0 = one per core).")
  host.keep_freed_memory()
  if FLAGS.cpu_devices or not distributed.requested(FLAGS.distributed, FLAGS.coordinator_address):
    host.use_cpu_devices(FLAGS.cpu_devices, config.batch_size)  # multi-process: the user's
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  distributed.initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id, FLAGS.distributed_timeout_s)
  try:
    train_and_evaluate(config, FLAGS.workdir)
  except Exception as e:  # noqa: BLE001 - only re-labelled when a peer process is gone
    if jax.process_count() > 1 and not isinstance(e, UserError):
      distributed.exit_on_peer_failure(e)
    raise


if __name__ == "__main__":
  app.run(main)
