"""Loss curves: <workdir>/loss.png after every epoch (and `python -m jaxchar.plot`), and
validation loss against wall time for several runs (`--compare`)."""

import dataclasses
import math
from pathlib import Path

from jaxchar.choices import DEFAULT_WORKDIR
from jaxchar.errors import UserError, writing
from jaxchar.options import option
from jaxchar.training.metrics import METRICS_FILE, read_metrics

PLOT_FILE = "loss.png"


@dataclasses.dataclass(frozen=True)
class PlotConfig:
  """What `python -m jaxchar.plot` takes."""

  workdir: str = option(DEFAULT_WORKDIR, "The training run's folder (holds metrics.jsonl).")
  compare: tuple[str, ...] = option((), "Instead: run folders whose validation loss to plot "
                                    "against wall time, in one figure written to --out.")
  out: str = option("runs.png", "The --compare figure's file.")
  time_axis: str = option("log", "The --compare figure's time axis: log (runs of very "
                          "different lengths), or linear (from 0, where a fine-tuning run's "
                          "starting loss is drawn).", choices=("log", "linear"))


def write_loss_plot(workdir: str | Path, quiet_if_unavailable: bool = True) -> Path | None:
  """Train loss (logged steps and epoch means) and validation loss per epoch, with bits/char
  on the right axis. Returns the path, or None when matplotlib is not installed."""
  plt = _pyplot(quiet_if_unavailable)
  if plt is None:
    return None
  workdir = Path(workdir)
  fig = loss_figure(plt, workdir)
  path = workdir / PLOT_FILE
  try:
    with writing("the loss plot", path):
      fig.savefig(path)
  finally:
    plt.close(fig)
  return path


def loss_figure(plt, workdir: Path):
  """write_loss_plot's figure. The best validation loss is a star with its value in the
  legend, and the legend sits where it covers no point of a curve (a label beside the star
  ran over the curves)."""
  epochs = _epoch_records(workdir)
  records = read_metrics(workdir)
  steps_per_epoch = epochs[0]["step"] / epochs[0]["epoch"]  # x axis in (fractional) epochs
  logged = [r for r in records if r["kind"] == "train"]
  fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
  ax.plot([r["step"] / steps_per_epoch for r in logged], [r["train_loss"] for r in logged],
          color="tab:blue", alpha=0.35, linewidth=1, label="train loss (logged steps)")
  ax.plot([r["epoch"] for r in epochs], [r["train_loss"] for r in epochs], "o-",
          color="tab:blue", label="train loss (epoch mean)")
  val = [r for r in epochs if r.get("val_loss") is not None]
  ax.plot([r["epoch"] for r in _start(workdir) + val],
          [r["val_loss"] for r in _start(workdir) + val], "s-", color="tab:orange",
          label="validation loss")
  if val:
    best = min(val, key=lambda r: r["val_loss"])
    ax.plot(best["epoch"], best["val_loss"], "*", markersize=14, color="tab:orange",
            markeredgecolor="black", markeredgewidth=0.5, linestyle="none",
            label=f"best validation {best['val_loss']:.3f} (epoch {best['epoch']})")
  ax.margins(x=0.04)
  ax.set_xlabel("epoch")
  ax.set_ylabel("cross-entropy (nats per character)")
  ax.set_title(f"{workdir.name}: loss per epoch")
  ax.grid(alpha=0.3)
  ax.legend(loc="best")  # the corner that covers the fewest points of the curves
  bits = ax.secondary_yaxis("right", functions=(lambda n: n / math.log(2),
                                                lambda b: b * math.log(2)))
  bits.set_ylabel("bits per character")
  fig.tight_layout()
  return fig


def write_comparison_plot(workdirs: list[str | Path], out: str | Path,
                          time_axis: str = "log") -> Path:
  """Validation loss per epoch against wall time (elapsed_s) for several runs, one line each;
  on a linear `time_axis`, a fine-tuning run's line starts at its starting loss."""
  plt = _pyplot(quiet_if_unavailable=False)
  fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
  for workdir in map(Path, workdirs):
    val = [r for r in _epoch_records(workdir) if r.get("val_loss") is not None]
    if not val:
      raise UserError(f"{workdir / METRICS_FILE} has no validation loss to plot; train with "
                      "--val_fraction above 0 for at least one epoch.")
    best = min(val, key=lambda r: r["val_loss"])
    if time_axis == "linear":
      val = _start(workdir) + val
    line, = ax.plot([r["elapsed_s"] / 60 for r in val], [r["val_loss"] for r in val], "o-",
                    markersize=3, label=f"{workdir.name} (best {best['val_loss']:.4f} at "
                    f"{best['elapsed_s']:.0f} s, epoch {best['epoch']})")
    ax.plot(best["elapsed_s"] / 60, best["val_loss"], "*", markersize=12, color=line.get_color())
  if time_axis == "log":
    ax.set_xscale("log")
  ax.set_xlabel("wall time since the start of training (minutes"
                + (", log scale)" if time_axis == "log" else ")"))
  ax.set_ylabel("validation loss (nats per character)")
  ax.set_title("validation loss against wall time")
  ax.grid(alpha=0.3, which="both")
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8)  # below, off the lines
  bits = ax.secondary_yaxis("right", functions=(lambda n: n / math.log(2),
                                                lambda b: b * math.log(2)))
  bits.set_ylabel("bits per character")
  fig.savefig(out, bbox_inches="tight")
  plt.close(fig)
  return Path(out)


def _pyplot(quiet_if_unavailable: bool):
  """matplotlib's pyplot on the file-only Agg backend; None (or UserError) if not installed."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
  except ImportError:
    if quiet_if_unavailable:
      return None
    raise UserError("matplotlib is not installed; `pip install 'jaxchar[plot]'` and retry.")
  return plt


def _start(workdir: Path) -> list[dict]:
  """The record of a fine-tuning run's validation before training, if it has one."""
  return [r for r in read_metrics(workdir) if r["kind"] == "start"][:1]


def _epoch_records(workdir: Path) -> list[dict]:
  epochs = [r for r in read_metrics(workdir) if r["kind"] == "epoch"]
  if not epochs:
    raise UserError(f"{workdir / METRICS_FILE} has no finished epoch to plot yet; train at "
                    "least one epoch (or point --workdir at a run that has).")
  return epochs
