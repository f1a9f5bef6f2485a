"""Progress output: a bar on a terminal, plain lines in logs."""

import io

from jaxchar.core import progress


def test_non_terminal_output_is_plain_lines(monkeypatch):
  monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 0.0)
  stream = io.StringIO()
  with progress.EpochProgress(2, 5, total_steps=20, batch_size=128, stream=stream) as bar:
    for step in (10, 20):
      bar.update(step, 1.5 + step / 100)
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue()
  assert len(lines) == 2
  assert lines[0].startswith("epoch 2/5 step 10/20 | loss 1.6000 |")
  assert "seq/s | eta" in lines[0]
  assert lines[1].startswith("epoch 2/5 step 20/20 | loss 1.7000 |")


def test_non_terminal_lines_are_rate_limited():
  stream = io.StringIO()
  bar = progress.EpochProgress(1, 1, total_steps=100, batch_size=8, stream=stream)
  for step in range(10, 100, 10):
    bar.update(step, 2.0)
  assert stream.getvalue() == ""  # within PLAIN_EVERY_SECONDS, only the last step prints
  bar.update(100, 2.0)
  assert stream.getvalue().count("\n") == 1


def test_terminal_output_is_a_bar():
  stream = io.StringIO()
  with progress.EpochProgress(1, 3, total_steps=10, batch_size=4, stream=stream,
                              interactive=True) as bar:
    bar.update(10, 0.25)
  assert "epoch 1/3" in stream.getvalue() and "\r" in stream.getvalue()


def test_validation_progress_plain_lines_and_bar(monkeypatch):
  monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 0.0)
  stream = io.StringIO()
  with progress.ValidationProgress(4, 4096, stream=stream) as bar:
    bar.update(2)
  assert stream.getvalue().startswith("validating: batch 2/4 of 4,096 windows | eta ")
  stream = io.StringIO()
  with progress.ValidationProgress(4, 4096, stream=stream, interactive=True) as bar:
    bar.update(4)
  assert "validating 4,096 windows" in stream.getvalue() and "\r" in stream.getvalue()


def test_the_eta_covers_the_whole_run_not_only_the_epoch(monkeypatch):
  bar = progress.EpochProgress(2, 4, total_steps=10, batch_size=8, stream=io.StringIO(),
                               interactive=False, later_steps=20, epoch_end_s=5.0)
  # 2 s per step: 5 left in this epoch + 20 in epochs 3 and 4, and 3 epoch ends of 5 s.
  assert bar.run_eta(5, 10.0) == (5 + 20) * 2.0 + 3 * 5.0
  assert bar.run_eta(0, 1.0) is None  # no step yet: no rate
  monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 0.0)
  stream = io.StringIO()
  with progress.EpochProgress(1, 59, total_steps=100, batch_size=8, stream=stream,
                              later_steps=58 * 100) as bar:
    bar.start -= 60.0  # 10 steps took a minute: 5,890 steps left take 9 h 49 min
    bar.update(10, 2.0)
  assert "eta 9 min (epoch), 9 h 49 min (run)" in stream.getvalue(), stream.getvalue()
