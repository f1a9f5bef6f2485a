"""Early stopping on validation loss, with its state carried in checkpoint metadata."""


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
