"""The run configuration: one frozen dataclass, built once from flags by the entry point."""

import dataclasses
import math

from jaxchar.errors import UserError

DEFAULT_DATA = "data/moes_tavern_lines.txt"
# Allowed values of the string options, the reference's first (used by validate and the flags).
OBJECTIVES = ("last", "every")
OPTIMIZERS = ("rmsprop", "adamw")
LR_SCHEDULES = ("constant", "cosine", "exponential")
# The default first: fused measured faster on CPU (BENCHMARKS.md); flax is the reference.
LSTM_IMPLS = ("fused", "flax")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a training run needs; defaults reproduce the reference Keras notebook."""

  data: str = DEFAULT_DATA
  lowercase: bool = True
  maxlen: int = 60  # characters of context per window
  step: int = 3  # characters between consecutive training windows
  val_fraction: float = 0.1
  hidden: int = 128
  batch_size: int = 128  # global: split evenly over all devices
  eval_batch_size: int = 1024  # global, validation only
  learning_rate: float = 0.01
  epochs: int = 59  # 0 = auto_epochs(training characters)
  steps_per_epoch: int = 0  # 0 = every full batch of the epoch
  seed: int = 0
  temperatures: tuple[float, ...] = (0.2, 0.5, 1.0, 1.2)
  sample_len: int = 400
  save_every_steps: int = 0  # 0 = only at epoch ends (and on SIGTERM/SIGINT)
  keep: int = 3  # most recent checkpoints kept, besides the best by validation loss
  restart: bool = False  # set existing checkpoints aside instead of resuming
  log_every: int = 50  # steps between metrics.jsonl / TensorBoard records
  dtype: str = "float32"  # computation dtype; "bfloat16" for TPU/GPU (params stay float32)
  sample_mode: str = "window"  # or "stateful" (carry the LSTM state, one cell step per char)
  lstm_impl: str = LSTM_IMPLS[0]  # same parameters and results either way; speed differs
  val_windows: int = 100_000  # above this, validate on this many evenly spaced windows
  # Beyond the reference (its values are the defaults):
  objective: str = "last"  # or "every": the next character after every position of a window
  num_layers: int = 1
  embed_dim: int = 0  # 0 = one-hot inputs
  dropout: float = 0.0  # between LSTM layers and before the output layer
  optimizer: str = "rmsprop"  # or "adamw"
  weight_decay: float = 1e-4  # adamw only
  clip_norm: float = 0.0  # global gradient-norm clipping; 0 = off
  lr_schedule: str = "constant"  # or "cosine" (to 0 at the last step), "exponential"
  lr_decay: float = 0.9  # exponential: factor per epoch
  warmup_steps: int = 0
  patience: int = 0  # stop after this many epochs without a new best validation loss; 0 = off

  def validate(self) -> "Config":
    """Raises UserError naming the first bad value and how to fix it; returns self."""
    for name in ("maxlen", "step", "hidden", "batch_size", "eval_batch_size",
                 "log_every", "num_layers", "val_windows"):
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
    if self.sample_mode not in ("window", "stateful"):
      raise UserError(f"--sample_mode={self.sample_mode} must be 'window' or 'stateful'.")
    if self.dtype not in ("float32", "bfloat16"):
      raise UserError(f"--dtype={self.dtype} must be float32 or bfloat16.")
    for name in ("embed_dim", "warmup_steps", "patience"):
      if getattr(self, name) < 0:
        raise UserError(f"--{name}={getattr(self, name)} must be >= 0 (0 = off).")
    if not 0.0 <= self.dropout < 1.0:
      raise UserError(f"--dropout={self.dropout} must be in [0, 1): the share of activations "
                      "zeroed in training, e.g. --dropout=0.2.")
    if not (math.isfinite(self.clip_norm) and self.clip_norm >= 0):
      raise UserError(f"--clip_norm={self.clip_norm} must be a number >= 0 (0 = off), e.g. 5.")
    if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
      raise UserError(f"--weight_decay={self.weight_decay} must be a number >= 0.")
    if not 0.0 < self.lr_decay <= 1.0:
      raise UserError(f"--lr_decay={self.lr_decay} must be in (0, 1]: the learning rate's "
                      "factor per epoch with --lr_schedule=exponential, e.g. 0.9.")
    for name, allowed in (("objective", OBJECTIVES), ("optimizer", OPTIMIZERS),
                          ("lr_schedule", LR_SCHEDULES), ("lstm_impl", LSTM_IMPLS)):
      if getattr(self, name) not in allowed:
        raise UserError(f"--{name}={getattr(self, name)} must be one of {', '.join(allowed)}.")
    if self.patience and not self.val_fraction:
      raise UserError(f"--patience={self.patience} needs a validation loss; set --val_fraction "
                      "above 0 (e.g. 0.1) or --patience=0.")
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise UserError(f"--learning_rate={self.learning_rate} must be a positive number.")
    if self.sample_len:
      check_temperatures(self.temperatures, "temperatures")
    return self


def check_temperatures(temperatures: tuple[float, ...], flag: str) -> None:
  """Raises UserError unless there is at least one temperature and all are positive."""
  if not temperatures:
    raise UserError(f"--{flag} is empty; give one value or a list, e.g. --{flag}=0.2,0.5,1.0.")
  for t in temperatures:
    if not (math.isfinite(t) and t > 0):
      raise UserError(f"temperature {t} in --{flag} must be a positive number (e.g. 0.5): "
                      "logits are divided by it, so 0 or less has no meaning.")


def parse_temperatures(values: list[str] | str, flag: str = "temperatures") -> tuple[float, ...]:
  """Parses '0.2,0.5' or ['0.2', '0.5'] into floats, raising UserError on a bad entry."""
  if isinstance(values, str):
    values = [v for v in values.split(",") if v.strip()]
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise UserError(
        f"--{flag}={','.join(values)} is not a comma-separated list of numbers; "
        f"pass e.g. --{flag}=0.2,0.5,1.0,1.2.") from None


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """What `python -m jaxchar.sample` needs; everything else comes from the checkpoint."""

  workdir: str = "ckpt/moe"
  step: int | None = None  # None = the best checkpoint by validation loss
  prime: str = ""
  temperatures: tuple[float, ...] = (0.5,)
  length: int = 400
  num_samples: int = 1
  seed: int = 0
  top_k: int = 0  # 0 = off
  unknown: str = "error"  # or "skip": what to do with prime characters the model never saw
  mode: str = "window"  # or "stateful"

  def validate(self) -> "SampleConfig":
    """Raises UserError for values that are wrong whatever the checkpoint; returns self."""
    check_temperatures(self.temperatures, "temperature")
    if self.length < 1:
      raise UserError(f"--length={self.length} must be at least 1 character.")
    if self.num_samples < 1:
      raise UserError(f"--num_samples={self.num_samples} must be at least 1.")
    if self.top_k < 0:
      raise UserError(f"--top_k={self.top_k} must be >= 0 (0 = off).")
    if self.mode not in ("window", "stateful"):
      raise UserError(f"--mode={self.mode} must be 'window' or 'stateful'.")
    if self.unknown not in ("error", "skip"):
      raise UserError(f"--unknown={self.unknown} must be 'error' or 'skip'.")
    return self


# --epochs=0 trains on about this many characters in all (each window step over the training
# text counts its characters once): where the recipe's best validation loss lay on 1 MB texts.
AUTO_TRAIN_CHARS = 3_000_000
MAX_AUTO_EPOCHS = 30


def auto_epochs(train_chars: int) -> int:
  """The number of epochs --epochs=0 chooses for `train_chars` training characters."""
  return max(1, min(MAX_AUTO_EPOCHS, round(AUTO_TRAIN_CHARS / max(train_chars, 1))))
