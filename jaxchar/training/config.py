"""The training run's options, each defined once: the frozen Config (saved with every
checkpoint) and Launch (where and how this process runs: not saved)."""

import dataclasses
import math

from jaxchar.choices import DEFAULT_WORKDIR, CompilationCacheChoice, StorageChoice
from jaxchar.core import storage
from jaxchar.core.model import LSTM_IMPLS
from jaxchar.errors import UserError
from jaxchar.options import check_choices, option
from jaxchar.sampling.config import parse_temperatures
from jaxchar.sampling.controls import SAMPLE_MODES, check_temperatures
from jaxchar.training import budget

DEFAULT_DATA = "data/moes_tavern_lines.txt"
# Allowed values of the string options, the reference's first.
OBJECTIVES = ("last", "every")
OPTIMIZERS = ("rmsprop", "adamw")
LR_SCHEDULES = ("constant", "cosine", "exponential")
DTYPES = ("float32", "bfloat16")
DISTRIBUTED_MODES = ("auto", "on", "off")
INIT_VOCABS = ("extend", "strict")
# --epochs=0 trains on about this many characters in all (each window step over the training
# text counts its characters once): where the recipe's best validation loss lay on 1 MB texts.
AUTO_TRAIN_CHARS = 3_000_000
MAX_AUTO_EPOCHS = 30
_POSITIVE = ("maxlen", "stride", "hidden", "batch_size", "eval_batch_size", "log_every",
             "num_layers", "val_windows")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a training run needs; defaults reproduce the reference Keras notebook."""

  data: str = option(DEFAULT_DATA, "UTF-8 text to train on. The default Moe's Tavern corpus is "
                     "fetched (mirror or download) and checksum-verified when missing.")
  lowercase: bool = option(True, "Lowercase the text before building the vocabulary.")
  maxlen: int = option(60, "Window length in characters (model context).")
  stride: int = option(3, "Characters between the starts of consecutive training windows (the "
                       "Keras notebook's `step`; --step still works here, with a note).",
                       old_names=("step",))
  val_fraction: float = option(0.1, "Share (0 to <1) of the text, from the end and cut at a "
                               "paragraph break, held out for validation; 0 = none.")
  hidden: int = option(128, "LSTM units.")
  batch_size: int = option(128, "Global batch size in windows, split evenly over all devices.")
  eval_batch_size: int = option(1024, "Global batch size in windows for validation (rounded up "
                                "to a multiple of the device count).")
  learning_rate: float = option(0.01, "Learning rate (the peak, with a schedule).")
  epochs: int = option(59, "Passes over the training windows; 0 = chosen from the corpus size "
                       f"(about {AUTO_TRAIN_CHARS / 1e6:g} M training characters in all, 1 to "
                       f"{MAX_AUTO_EPOCHS} epochs; the run says how many as it starts), or "
                       "no limit with --time_budget.")
  steps_per_epoch: int = option(0, "Cap on steps per epoch (for quick runs); 0 = every full "
                                "batch.")
  seed: int = option(0, "Seed for initialisation, shuffling and sampling.")
  temperatures: tuple[float, ...] = option((0.2, 0.5, 1.0, 1.2), "Sampling temperatures for the "
                                           "per-epoch samples, comma-separated.",
                                           parse=parse_temperatures)
  sample_len: int = option(400, "Characters generated per temperature after each epoch; 0 = no "
                           "samples.")
  save_every_steps: int = option(0, "Also checkpoint every this many steps; 0 = only at epoch "
                                 "ends and on SIGTERM/SIGINT.")
  keep: int = option(3, "Most recent checkpoints to keep, besides the best by validation loss.")
  restart: bool = option(False, "Start afresh: move the previous run's checkpoints, metrics and "
                         "samples in --workdir to replaced/<time>/ instead of resuming from "
                         "them.")
  log_every: int = option(50, "Steps between metrics.jsonl and TensorBoard records (each epoch "
                          "end is recorded too).")
  dtype: str = option("float32", "Computation dtype. bfloat16 speeds up TPUs and recent GPUs "
                      "(slower on CPUs); parameters and optimizer state stay float32.",
                      choices=DTYPES)
  sample_mode: str = option("window", "Per-epoch samples: window reruns the LSTM over the last "
                            "maxlen characters for each new one (as in training); stateful "
                            "carries the LSTM state, one step per character (faster, sees "
                            "further back).", choices=SAMPLE_MODES)
  lstm_impl: str = option(LSTM_IMPLS[0], "LSTM implementation, same parameters and results: "
                          "fused = input rows looked up by id and weight gradients as one "
                          "matmul after the time loop (faster, see BENCHMARKS.md); flax = "
                          "nn.RNN(nn.OptimizedLSTMCell) on one-hot inputs, the reference (its "
                          "cost grows with the vocabulary).", choices=LSTM_IMPLS)
  val_windows: int = option(100_000, "Validate on at most this many windows: above it, this "
                            "many evenly spaced ones, the same every epoch.")
  # Beyond the reference (its values are the defaults):
  objective: str = option("last", "Training loss: last = the character after each window (the "
                          "reference); every = the next character at every position of the "
                          "window (60 targets per window). Validation is the same for both: "
                          "the character after a full window.", choices=OBJECTIVES)
  num_layers: int = option(1, "Stacked LSTM layers.")
  carry_state: bool = option(False, "Train on contiguous streams, as char-rnn does (truncated "
                             "backpropagation through time): the training text is cut into "
                             "one stretch per batch row, each read window after window of "
                             "--maxlen characters, and the LSTM state a window ends with "
                             "starts the row's next window, so the context is not cut at "
                             "--maxlen. Needs --objective=every; --stride does not apply. "
                             "Validation carries the state too: the same characters as "
                             "window validation, each read after up to 8 windows of the "
                             "validation text.")
  embed_dim: int = option(0, "Learned character embedding size; 0 = one-hot inputs (the "
                          "reference).")
  dropout: float = option(0.0, "Dropout rate between LSTM layers and before the output layer, "
                          "in training only; 0 = off.")
  weight_drop: float = option(0.0, "Weight drop (AWD-LSTM's DropConnect): the share of each "
                              "LSTM layer's recurrent weights zeroed, one mask per training "
                              "step, in training only; needs --lstm_impl=fused; 0 = off.")
  optimizer: str = option("rmsprop", "rmsprop = Keras's RMSprop (the reference); adamw = "
                          "optax.adamw.", choices=OPTIMIZERS)
  weight_decay: float = option(1e-4, "AdamW's decoupled weight decay.")
  clip_norm: float = option(0.0, "Clip gradients to this global norm before the optimizer; 0 = "
                            "off.")
  lr_schedule: str = option("constant", "Learning rate after --warmup_steps of linear warmup: "
                            "constant; cosine decay to 0 at the last step of --epochs; "
                            "exponential = times --lr_decay per epoch.", choices=LR_SCHEDULES)
  lr_decay: float = option(0.9, "Per-epoch factor of --lr_schedule=exponential.")
  warmup_steps: int = option(0, "Steps of linear learning-rate warmup from 0; 0 = none.")
  patience: int = option(0, "Stop after this many epochs without a new best validation loss "
                         "(the best checkpoint is always kept); 0 = off.")
  time_budget: str = option("", "Train for this much wall time and no longer, e.g. 10m, 90s, "
                            "1h30m: the run's elapsed time over all its sessions, compiling, "
                            "validation and saving included. Training stops early enough for "
                            "the last validation and checkpoint to fit; a cosine --lr_schedule "
                            "decays over the budget's time; --epochs=0 then sets no epoch "
                            "limit. Empty = no budget.")
  # Fine-tuning:
  init_from: str = option("", "Start this new run from a trained run's parameters: WORKDIR (its "
                          "best checkpoint, as the sampler chooses) or WORKDIR:STEP. The model's "
                          "shape (hidden, layers, embedding, window, lowercasing) and vocabulary "
                          "come from it; optimizer, schedule and step start fresh. Only for a "
                          "fresh --workdir: rerunning the same command resumes the new run.")
  init_vocab: str = option("extend", "With --init_from, characters of --data the base model "
                           "never saw: extend = append them to its vocabulary (new input and "
                           "output rows, initialised as a fresh model's); strict = stop with an "
                           "error listing them.", choices=INIT_VOCABS)

  def validate(self) -> "Config":
    """Raises UserError naming the first bad value and how to fix it; returns self."""
    for name in _POSITIVE:
      value = getattr(self, name)
      if value <= 0:
        raise UserError(f"--{name}={value} must be a positive integer; pass --{name}=N with N >= 1.")
    if self.epochs < 0:
      raise UserError(f"--epochs={self.epochs} must be >= 1, or 0 to choose it from the corpus "
                      "size.")
    if self.steps_per_epoch < 0:
      raise UserError(
          f"--steps_per_epoch={self.steps_per_epoch} must be >= 0 (0 means the whole epoch).")
    if self.save_every_steps < 0:
      raise UserError(f"--save_every_steps={self.save_every_steps} must be >= 0 (0 = off).")
    if self.keep < 1:
      raise UserError(f"--keep={self.keep} must be at least 1.")
    if self.sample_len < 0:
      raise UserError(f"--sample_len={self.sample_len} must be >= 0 (0 turns samples off).")
    if not 0.0 <= self.val_fraction < 1.0:
      raise UserError(
          f"--val_fraction={self.val_fraction} is outside [0, 1); it is the share of the corpus "
          "held out for validation, e.g. --val_fraction=0.1.")
    for name in ("embed_dim", "warmup_steps", "patience"):
      if getattr(self, name) < 0:
        raise UserError(f"--{name}={getattr(self, name)} must be >= 0 (0 = off).")
    if not 0.0 <= self.dropout < 1.0:
      raise UserError(f"--dropout={self.dropout} must be in [0, 1): the share of activations "
                      "zeroed in training, e.g. --dropout=0.2.")
    if not 0.0 <= self.weight_drop < 1.0:
      raise UserError(f"--weight_drop={self.weight_drop} must be in [0, 1): the share of "
                      "recurrent weights zeroed in training, e.g. --weight_drop=0.2.")
    if self.carry_state and self.objective != "every":
      raise UserError("--carry_state trains on every position of each window (its targets are "
                      "the next window's inputs); add --objective=every.")
    if self.weight_drop and self.lstm_impl != "fused":
      raise UserError(f"--weight_drop={self.weight_drop} needs --lstm_impl=fused (weight drop "
                      "masks the fused layers' recurrent kernel); drop --lstm_impl=flax or "
                      "--weight_drop.")
    if not (math.isfinite(self.clip_norm) and self.clip_norm >= 0):
      raise UserError(f"--clip_norm={self.clip_norm} must be a number >= 0 (0 = off), e.g. 5.")
    if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
      raise UserError(f"--weight_decay={self.weight_decay} must be a number >= 0.")
    if not 0.0 < self.lr_decay <= 1.0:
      raise UserError(f"--lr_decay={self.lr_decay} must be in (0, 1]: the learning rate's "
                      "factor per epoch with --lr_schedule=exponential, e.g. 0.9.")
    check_choices(self)
    budget.parse_duration(self.time_budget)
    if self.patience and not self.val_fraction:
      raise UserError(f"--patience={self.patience} needs a validation loss; set --val_fraction "
                      "above 0 (e.g. 0.1) or --patience=0.")
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise UserError(f"--learning_rate={self.learning_rate} must be a positive number.")
    if self.sample_len:
      check_temperatures(self.temperatures, "--temperatures")
    if self.init_from:
      parse_init_from(self.init_from)
    return self


def parse_init_from(spec: str) -> tuple[str, int | None]:
  """'WORKDIR' or 'WORKDIR:STEP' as (workdir, step or None); UserError for a bad step."""
  workdir, sep, step = spec.rpartition(":")
  if not sep or "/" in step or not workdir:
    return spec, None
  if not step.isdigit():
    raise UserError(f"--init_from={spec}: the part after ':' must be a checkpoint step (a "
                    "number), e.g. --init_from=ckpt/base:2148, or leave it out for the best "
                    "checkpoint.")
  return workdir, int(step)


@dataclasses.dataclass(frozen=True)
class Launch(CompilationCacheChoice, StorageChoice):
  """Where a training process keeps its run and how it uses its host: not part of the model,
  so not saved with it."""

  workdir: str = option(DEFAULT_WORKDIR, "Folder for this run: checkpoints/, metrics.jsonl, "
                        "tensorboard/, samples.md, loss.png. Rerunning with the same folder "
                        "resumes from its latest checkpoint. A gs://bucket/path keeps the run "
                        "in Cloud Storage (pip install -e '.[gcs]'), where a preempted or "
                        "multi-host run finds it again.")
  cache_dir: str = option("", "Folder for the text's id cache (the --data text encoded once, "
                          "1 to 4 bytes per character; later runs over the unchanged files "
                          "memory-map it); empty = corpus_cache/ beside --workdir, shared by "
                          "the runs there (ckpt/corpus_cache/ for a gs:// --workdir). Always "
                          "local: a text in a bucket is streamed into it once.")
  cpu_devices: int = option(0, "JAX devices on a CPU host, each taking its share of the batch: "
                            "0 = one per core (the largest count up to the number of cores that "
                            "divides --batch_size into shares of at least 16 windows; a count "
                            "forced by XLA_FLAGS is kept). No effect on GPU/TPU.")
  distributed: str = option("auto", "Multi-process training with jax.distributed: auto = when "
                            "the three flags below are given or a SLURM / multi-host Cloud TPU "
                            "job is detected; on = always (JAX detects the cluster); off = "
                            "never.", choices=DISTRIBUTED_MODES)
  coordinator_address: str | None = option(None, "host:port of process 0, reachable from every "
                                           "process, e.g. 10.0.0.2:12355.")
  num_processes: int | None = option(None, "Number of training processes in the run.")
  process_id: int | None = option(None, "This process's index, 0 to --num_processes - 1.")
  distributed_timeout_s: int = option(120, "Seconds to wait for every process to reach the "
                                      "coordinator before giving up with an error.")
  heartbeat_timeout_s: int = option(30, "Seconds without a heartbeat after which a process "
                                    "of a multi-process run is declared dead and the others "
                                    "stop with an error instead of waiting for it.")

  def validate(self) -> "Launch":
    """Raises UserError for a bad value; returns self."""
    if self.cpu_devices < 0:
      raise UserError(f"--cpu_devices={self.cpu_devices} must be >= 0 (0 = one per core).")
    if not storage.is_local(self.cache_dir):
      raise UserError(f"--cache_dir={self.cache_dir} must be a local folder: the id cache is "
                      "read at random, window by window. A text in a bucket is streamed into "
                      "it once; leave --cache_dir empty or give a folder on this machine.")
    if self.heartbeat_timeout_s < 1:
      raise UserError(f"--heartbeat_timeout_s={self.heartbeat_timeout_s} must be at least 1.")
    check_choices(self)
    return self


def auto_epochs(train_chars: int) -> int:
  """The number of epochs --epochs=0 chooses for `train_chars` training characters."""
  return max(1, min(MAX_AUTO_EPOCHS, round(AUTO_TRAIN_CHARS / max(train_chars, 1))))
