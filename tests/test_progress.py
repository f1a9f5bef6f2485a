"""Progress output: a bar on a terminal, plain lines in logs."""

import io

from helpers import tiny_config
from jaxchar.core import progress
from jaxchar.training import loop, startup

NO_ETA = lambda steps_done, seconds: None  # noqa: E731 - the run's ETA is the loop's


def test_non_terminal_output_is_plain_lines(monkeypatch):
  monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 0.0)
  stream = io.StringIO()
  with progress.EpochProgress("epoch 2/5", 20, 128, NO_ETA, stream=stream) as bar:
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
  bar = progress.EpochProgress("epoch 1/1", 100, 8, NO_ETA, stream=stream)
  for step in range(10, 100, 10):
    bar.update(step, 2.0)
  assert stream.getvalue() == ""  # within PLAIN_EVERY_SECONDS, only the last step prints
  bar.update(100, 2.0)
  assert stream.getvalue().count("\n") == 1


def test_terminal_output_is_a_bar():
  stream = io.StringIO()
  with progress.EpochProgress("epoch 1/3", 10, 4, NO_ETA, stream=stream,
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


def test_the_eta_covers_the_whole_run_not_only_the_epoch(monkeypatch, tiny_file, tmp_path):
  plan, state = startup.start_run(tiny_config(tiny_file, epochs=4), tmp_path / "run")
  try:
    state.epoch, state.epoch_end_s = 2, 5.0
    eta = loop.run_eta(plan, state)  # 45 steps an epoch
    # 2 s per step: 40 left in this epoch + 90 in epochs 3 and 4, and 3 epoch ends of 5 s.
    assert eta(5, 10.0) == (40 + 90) * 2.0 + 3 * 5.0
    assert eta(0, 1.0) is None  # no step yet: no rate
  finally:
    loop.close(plan)
  monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 0.0)
  stream = io.StringIO()
  with progress.EpochProgress("epoch 1/59", 100, 8, lambda done, s: (5900 - done) * s / done,
                              stream=stream) as bar:
    bar.start -= 60.0  # 10 steps took a minute: 5,890 steps left take 9 h 49 min
    bar.update(10, 2.0)
  assert "eta 9 min (epoch), 9 h 49 min (run)" in stream.getvalue(), stream.getvalue()
