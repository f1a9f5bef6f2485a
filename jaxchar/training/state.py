"""What a run is (`Plan`: fixed when it starts) and what changes as it trains (`RunState`: the
train state, the position in the data, the clock, early stopping's count). Only the loop
changes a RunState."""

import dataclasses
import time
from pathlib import Path
from typing import Any

from jaxchar.core import checkpoint, data
from jaxchar.core.model import CharLSTM
from jaxchar.training.budget import Budget
from jaxchar.training.config import Config
from jaxchar.training.metrics import RunLog
from jaxchar.training.validation import ValidationSet


class EarlyStopping:
  """Counts epochs since the best validation loss; stopped after `patience` of them (0 = off)."""

  def __init__(self, patience: int):
    self.patience, self.best_loss, self.best_epoch, self.since_best = patience, None, None, 0

  def restore(self, meta: dict) -> None:
    self.best_loss, self.best_epoch = meta.get("best_val_loss"), meta.get("best_epoch")
    self.since_best = meta.get("epochs_since_best", 0)

  def state(self) -> dict:
    return {"best_val_loss": self.best_loss, "best_epoch": self.best_epoch,
            "epochs_since_best": self.since_best}

  def update(self, epoch: int, val_loss: float | None) -> None:
    if val_loss is None:
      return
    if self.best_loss is None or val_loss < self.best_loss:
      self.best_loss, self.best_epoch, self.since_best = val_loss, epoch, 0
    else:
      self.since_best += 1

  @property
  def stopped(self) -> bool:
    return bool(self.patience) and self.since_best >= self.patience

  def describe(self) -> str:
    epochs = f"{self.since_best} epoch" + ("s" if self.since_best != 1 else "")
    return (f"no better validation loss for {epochs} (--patience="
            f"{self.patience}); best {self.best_loss:.4f} nats at epoch {self.best_epoch}")


@dataclasses.dataclass(frozen=True)
class Plan:
  """A run as it starts: its options, text, model, optimizer's schedule and where it writes."""

  config: Config  # --epochs resolved (chosen from the text, or no limit under a budget)
  workdir: Path
  corpus: data.Corpus
  model: CharLSTM  # the training model (dropout and weight drop on)
  learning_rate: Any  # a float or an optax schedule, before the budget's factor
  steps_per_epoch: int
  eval_batch_size: int
  run_meta: dict  # what every checkpoint records of the run (resume.run_metadata)
  checkpoints: checkpoint.Checkpoints
  log: RunLog | None  # None on processes other than 0
  budget: Budget | None  # --time_budget
  unlimited_epochs: bool  # --epochs=0 under a budget: the budget ends the run

  def rate_at(self, step: int, lr_factor: float) -> float:
    """The learning rate at `step`, with the budget's factor."""
    rate = self.learning_rate(step) if callable(self.learning_rate) else self.learning_rate
    return float(rate) * lr_factor


@dataclasses.dataclass
class RunState:
  """What changes as the run trains, all of it restored from a checkpoint on resume."""

  train: Any  # the TrainState, replicated over the local devices
  epoch: int  # the epoch being trained (1-based)
  batch: int  # batches of it done
  step: int  # optimizer steps in all, counted on the host
  early: EarlyStopping
  val: ValidationSet  # what validation scores (a budget may size it down)
  epoch_losses: list[float] = dataclasses.field(default_factory=list)
  last_saved: int | None = None  # the step of the latest checkpoint
  elapsed_before: float = 0.0  # training seconds of the run's earlier sessions
  started: float = dataclasses.field(default_factory=time.perf_counter)
  val_windows: int | None = None  # a budgeted run's validation size, once chosen (saved)
  clock_s: float = 0.0  # the elapsed time the budget last read (the same in every process)
  window_s: float = 0.0  # seconds to validate one window, once timed (a budgeted run)
  end_s: float = 0.0  # what the next epoch end (validation, samples, save) is expected to take
  epoch_end_s: float = 0.0  # what the last epoch end took (the run's ETA)
  carries: Any = None  # --carry_state: each stream's LSTM carries, over the local devices

  def elapsed(self) -> float:
    """Training seconds over every session of this run."""
    return self.elapsed_before + time.perf_counter() - self.started

  def position_meta(self, complete: bool) -> dict:
    """What a checkpoint records of where the run is."""
    return {"epoch": self.epoch, "batch_in_epoch": self.batch, "epoch_complete": complete,
            "epoch_losses": [float(x) for x in self.epoch_losses],
            "elapsed_s": self.elapsed(), **self.early.state(),
            **({"budget_val_windows": self.val_windows} if self.val_windows else {})}
