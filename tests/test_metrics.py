"""Run records: metrics.jsonl, TensorBoard events, samples.md, loss.png; exact across resumes."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import run_cases, run_module, tiny_config
from jaxchar.training import loop, metrics
from jaxchar import train
from jaxchar.training import plots as plot
from jaxchar.errors import UserError
from jaxchar.training.preemption import StopRequests

TIME_FIELDS = ("windows_per_s", "elapsed_s", "seconds")


class CrashAfterPolls(StopRequests):
  """Raises (a crash, not a clean stop) after `polls` step-boundary checks."""

  def __init__(self, polls: int):
    super().__init__()
    self.remaining = polls

  @property
  def requested(self) -> bool:
    self.remaining -= 1
    if self.remaining < 0:
      raise RuntimeError("simulated crash")
    return False


def without_times(records: list[dict]) -> list[dict]:
  return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in records]


def scalar_steps(workdir, tag: str) -> list[int]:
  events = EventAccumulator(str(workdir / metrics.TENSORBOARD_DIR))
  events.Reload()
  return [e.step for e in events.Scalars(tag)]


@pytest.mark.lowest
def test_a_run_records_metrics_events_samples_and_plot(tiny_file, tmp_path, epoch_plots):
  config = tiny_config(tiny_file, epochs=2, log_every=10, sample_len=20)
  train.train_and_evaluate(config, tmp_path / "run")
  records = metrics.read_metrics(tmp_path / "run")
  train_records = [r for r in records if r["kind"] == "train"]
  epoch_records = [r for r in records if r["kind"] == "epoch"]
  assert [r["step"] for r in train_records] == list(range(10, 91, 10))  # 45 steps an epoch
  assert [(r["epoch"], r["step"]) for r in epoch_records] == [(1, 45), (2, 90)]
  for r in epoch_records:
    assert r["val_bpc"] == pytest.approx(r["val_loss"] / 0.6931471805599453)
    assert r["learning_rate"] == 0.01 and r["windows_per_s"] > 0
  assert all(a["elapsed_s"] < b["elapsed_s"] for a, b in zip(records, records[1:]))

  events = EventAccumulator(str(tmp_path / "run" / metrics.TENSORBOARD_DIR))
  events.Reload()
  tb_loss = events.Scalars("train/train_loss")
  assert [e.step for e in tb_loss] == [r["step"] for r in train_records]
  assert [e.value for e in tb_loss] == pytest.approx([r["train_loss"] for r in train_records])
  assert [e.value for e in events.Scalars("epoch/val_loss")] == pytest.approx(
      [r["val_loss"] for r in epoch_records])
  assert "samples/temperature_0.5/text_summary" in events.Tags()["tensors"]

  samples = (tmp_path / "run" / metrics.SAMPLES_FILE).read_text()
  assert samples.count("## Epoch ") == 2 and samples.count("Seed window") == 2
  png = (tmp_path / "run" / plot.PLOT_FILE).read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_a_crash_and_resume_neither_duplicates_nor_loses_records(tiny_file, tmp_path,
                                                                  monkeypatch):
  config = tiny_config(tiny_file, epochs=2, log_every=5, save_every_steps=20, sample_len=10)
  train.train_and_evaluate(config, tmp_path / "full")
  monkeypatch.setattr(loop, "StopRequests", lambda: CrashAfterPolls(57))
  with pytest.raises(RuntimeError, match="simulated crash"):
    train.train_and_evaluate(config, tmp_path / "run")
  logged = [r["step"] for r in metrics.read_metrics(tmp_path / "run")]
  assert max(logged) > 40  # records past the last checkpoint (step 40) exist before resuming
  monkeypatch.undo()
  train.train_and_evaluate(config, tmp_path / "run")
  full = metrics.read_metrics(tmp_path / "full")
  resumed = metrics.read_metrics(tmp_path / "run")
  assert without_times(resumed) == without_times(full)
  assert scalar_steps(tmp_path / "run", "train/train_loss") == [
      r["step"] for r in full if r["kind"] == "train"]
  samples = (tmp_path / "run" / metrics.SAMPLES_FILE).read_text()
  assert samples == (tmp_path / "full" / metrics.SAMPLES_FILE).read_text()


def test_plot_command(tiny_file, tmp_path, epoch_plots):
  with pytest.raises(UserError, match="no finished epoch"):
    plot.write_loss_plot(tmp_path)
  train.train_and_evaluate(tiny_config(tiny_file, epochs=1), tmp_path / "run")
  (tmp_path / "run" / plot.PLOT_FILE).unlink()
  out = tmp_path / "compare.png"
  written, compared = run_cases("jaxchar.plot", [
      [f"--workdir={tmp_path / 'run'}"],
      [f"--compare={tmp_path / 'run'},{tmp_path / 'run'}", f"--out={out}"]])
  assert written.returncode == 0, written.stderr
  assert (tmp_path / "run" / plot.PLOT_FILE).read_bytes().startswith(b"\x89PNG")
  assert compared.returncode == 0, compared.stderr
  assert out.read_bytes().startswith(b"\x89PNG")
  with pytest.raises(UserError, match="no finished epoch"):
    plot.write_comparison_plot([tmp_path / "run", tmp_path / "empty"], out)


def test_helpfull_documents_every_flag_with_its_default():
  result = run_module("jaxchar.train", "--helpfull", timeout=120)
  assert "Traceback" not in result.stderr  # absl exits 1 after printing help
  section = result.stdout.split("train.py:")[1].split("\n\n")[0]
  names = ["data", "lowercase", "maxlen", "step", "val_fraction", "hidden", "batch_size",
           "eval_batch_size", "learning_rate", "epochs", "steps_per_epoch", "seed",
           "temperatures", "sample_len", "save_every_steps", "keep", "restart", "log_every",
           "workdir"]
  flat = " ".join(section.split())
  for name in names:
    assert f"--{name}" in flat or f"--[no]{name}" in flat, name
  assert flat.count("(default:") >= len(names)


@pytest.mark.parametrize("curves", ["overfitting", "still improving"])
def test_the_best_validation_label_covers_no_curve(tmp_path, curves):
  """The label is a legend entry for a star at the best point, and the legend covers no point
  of any curve (it was an annotation beside the point, over the validation curve)."""
  import json
  import math
  from matplotlib import pyplot as plt
  val = [1.78, 1.665, 1.625] if curves == "still improving" else [1.78, 1.6, 1.7]
  records = [{"kind": "train", "step": s, "epoch": s // 100 + 1, "train_loss": 1.5 + 1.7 *
              math.exp(-s / 40), "learning_rate": 0.01, "windows_per_s": 1.0, "elapsed_s": s}
             for s in range(10, 300, 10)]
  records += [{"kind": "epoch", "epoch": e, "step": 100 * e, "train_loss": t, "val_loss": v,
               "val_bpc": v / math.log(2), "windows_per_s": 1.0, "seconds": 1.0,
               "elapsed_s": 100.0 * e, "learning_rate": 0.01}
              for e, (t, v) in enumerate(zip([2.09, 1.65, 1.525], val), 1)]
  (tmp_path / metrics.METRICS_FILE).write_text(
      "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  fig = plot.loss_figure(plt, tmp_path)
  try:
    fig.canvas.draw()
    ax = fig.axes[0]
    assert not ax.texts  # no free-floating label
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    best = min(range(3), key=lambda i: val[i])
    assert f"best validation {val[best]:.3f} (epoch {best + 1})" in labels
    box = legend.get_window_extent()
    for line in ax.get_lines():
      for x, y in line.get_transform().transform(line.get_xydata()):
        assert not box.contains(x, y), (line.get_label(), x, y)
  finally:
    plt.close(fig)
