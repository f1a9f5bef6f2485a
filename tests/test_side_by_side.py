"""Side by side with a user: only jaxchar's lines in a terminal, sampling from a live or damaged
run, one trainer per workdir, and failed writes."""

import errno
import os
import re
import select
import shutil
import signal
import time
from pathlib import Path

import orbax.checkpoint as ocp
import pytest

from helpers import (damage_checkpoint, read_metas, run_cases, run_module, start_module,
                     tiny_config)
from jaxchar.core import checkpoint
from jaxchar.core.storage.local import LOCK_FILE
from jaxchar.core import restore as restore_lib
from jaxchar.training import metrics
from jaxchar import train
from jaxchar.sampling import sampler as sampler_lib
from jaxchar.sampling.config import SampleConfig
from jaxchar.errors import UserError

TINY = ["--maxlen=8", "--stride=2", "--hidden=16", "--batch_size=16", "--sample_len=0",
        "--eval_batch_size=64"]
# absl's log line: severity letter, MMDD hh:mm:ss.micros, thread id, file:line]
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]", re.M)


def in_terminal(module: str, *args: str, timeout: float = 240) -> tuple[int, str]:
  """Runs `python -m module args` with a pseudo-terminal as stdin, stdout and stderr."""
  master, slave = os.openpty()
  proc = start_module(module, *args, stdin=slave, stdout=slave, stderr=slave, text=False,
                      close_fds=True)
  os.close(slave)
  chunks, deadline = [], time.monotonic() + timeout
  while time.monotonic() < deadline:
    if select.select([master], [], [], 0.5)[0]:
      try:
        data = os.read(master, 65536)
      except OSError:  # EIO: the terminal's other end closed
        break
      if not data:
        break
      chunks.append(data)
    elif proc.poll() is not None:
      break
  os.close(master)
  returncode = proc.wait(timeout=30)
  return returncode, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def wait_for(condition, timeout: float = 120, what: str = "") -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.05)


def snapshot(folder: Path) -> dict:
  """Every file under `folder` with its size and modification time."""
  return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in sorted(folder.rglob("*"))}


def test_entry_points_print_only_their_own_lines_in_a_terminal(tiny_file, tmp_path):
  workdir = tmp_path / "run"
  code, out = in_terminal("jaxchar.train", f"--data={tiny_file}", *TINY, "--epochs=2",
                          "--sample_len=20", f"--workdir={workdir}")
  assert code == 0, out
  assert "epoch   2 |" in out and "----- temperature 0.5\n[" in out
  assert "## Epoch" not in out and "```" not in out  # Markdown goes to samples.md only
  code, sampled = in_terminal("jaxchar.sample", f"--workdir={workdir}", "--length=20")
  assert code == 0 and "# checkpoint step 90" in sampled, sampled
  code, plotted = in_terminal("jaxchar.plot", f"--workdir={workdir}")
  assert code == 0 and "wrote " in plotted, plotted
  for output in (out, sampled, plotted):
    assert not ABSL_LINE.search(output), ABSL_LINE.search(output).group(0)
  # The same detector sees the libraries' lines when they are asked for.
  code, verbose = in_terminal("jaxchar.sample", f"--workdir={workdir}", "--length=20",
                              "--verbosity=0")
  assert code == 0 and len(ABSL_LINE.findall(verbose)) >= 5, verbose


@pytest.mark.parametrize("kind", ["truncated data files", "deleted state data",
                                  "garbage metadata"])
def test_sampler_skips_a_damaged_checkpoint_and_changes_nothing(checkpointed_run, tmp_path,
                                                               kind, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(checkpointed_run, workdir)
  steps = checkpoint.checkpoint_steps(workdir)
  best = restore_lib.candidate_steps(read_metas(workdir, steps))[0]
  assert best == steps[-1] == 90  # validation improved in epoch 2: the newest is the best
  damage_checkpoint(workdir / "checkpoints" / str(best), kind)
  before = snapshot(workdir)
  capsys.readouterr()
  sampler = sampler_lib.load_sampler(workdir)
  assert sampler.step == steps[-2]  # the latest good one
  assert sampler.sample("moe: ", [0.5], 10)[0][0]
  err = capsys.readouterr().err
  assert err.count("warning: skipping the checkpoint at step 90") == 1, err
  assert "Traceback" not in err
  assert snapshot(workdir) == before  # the sampler never changes a run's folder
  with pytest.raises(UserError, match="step 90 .* cannot be restored"):
    sampler_lib.load_sampler(workdir, step=90)


def test_sampler_with_no_restorable_checkpoint_or_only_a_partial_one(checkpointed_run,
                                                                     tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(checkpointed_run, workdir)
  for step, kind in zip(checkpoint.checkpoint_steps(workdir),
                        ["truncated data files", "deleted state data", "garbage metadata"]):
    damage_checkpoint(workdir / "checkpoints" / str(step), kind)
  partial = tmp_path / "partial"
  (partial / "checkpoints" / "45.orbax-checkpoint-tmp-1795935738").mkdir(parents=True)
  messages = ["none of the 3 checkpoints in .* can be restored", "has no finished checkpoint yet"]
  results = run_cases("jaxchar.sample", [[f"--workdir={workdir}"], [f"--workdir={partial}"]])
  for result, expected in zip(results, messages):
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert re.search(expected, " ".join(result.stderr.split())), result.stderr


def test_sampling_while_the_trainer_saves_and_deletes_checkpoints(tiny_file, tmp_path, capsys):
  workdir = tmp_path / "live"
  trainer = start_module("jaxchar.train", f"--data={tiny_file}", *TINY, "--epochs=1000",
                         "--save_every_steps=5", "--keep=1", f"--workdir={workdir}")
  try:
    wait_for(lambda: checkpoint.checkpoint_steps(workdir) or trainer.poll() is not None,
             what="the first checkpoint")
    config = SampleConfig(workdir=str(workdir), length=20, temperatures=(0.5,)).validate()
    steps_seen = set()
    for _ in range(20):  # every call must succeed while checkpoints come and go
      text = sampler_lib.run_sampling(config)  # raises on any failure
      steps_seen.add(int(text.split()[3]))
    still_training = trainer.poll() is None
  finally:
    trainer.kill()
    out, _ = trainer.communicate()
  assert still_training, out
  assert len(steps_seen) >= 3, steps_seen
  err = capsys.readouterr().err
  assert "Traceback" not in err and "skipping" not in err, err


def test_a_second_trainer_on_a_busy_workdir_is_refused(tiny_file, tmp_path):
  workdir = tmp_path / "run"
  args = [f"--data={tiny_file}", *TINY, "--epochs=1000", f"--workdir={workdir}"]
  first = start_module("jaxchar.train", *args)
  wait_for(lambda: (workdir / LOCK_FILE).exists()
           and "pid" in (workdir / LOCK_FILE).read_text(), what="the first trainer's lock")
  started = time.monotonic()
  second = run_module("jaxchar.train", *args, timeout=120)
  refused_in = time.monotonic() - started
  assert first.poll() is None, "the first run ended before the second was tried"
  assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
  refusal = " ".join(second.stderr.split())
  assert f"pid {first.pid}" in refusal and "in use by another training run" in refusal
  assert refused_in < 30
  # The first run goes on as if alone: past an epoch end, then stopped as a user would.
  wait_for(lambda: checkpoint.checkpoint_steps(workdir) or first.poll() is not None,
           what="the first trainer's first epoch")
  first.send_signal(signal.SIGTERM)
  out, _ = first.communicate(timeout=120)
  assert first.returncode == 128 + signal.SIGTERM and "Traceback" not in out, out
  records = metrics.read_metrics(workdir)
  keys = [(r["kind"], r["step"]) for r in records]
  epochs = [r["epoch"] for r in records if r["kind"] == "epoch"]
  assert len(keys) == len(set(keys)) and epochs == list(range(1, len(epochs) + 1)) and epochs


def test_kill_9_leaves_no_lock_that_blocks_the_rerun(tiny_file, tmp_path):
  workdir = tmp_path / "run"
  args = [f"--data={tiny_file}", *TINY, "--epochs=30", "--save_every_steps=20",
          f"--workdir={workdir}"]
  first = start_module("jaxchar.train", *args)
  wait_for(lambda: checkpoint.checkpoint_steps(workdir), what="a checkpoint")
  first.send_signal(signal.SIGKILL)
  first.communicate(timeout=60)
  assert "pid" in (workdir / LOCK_FILE).read_text()  # the dead run's lock file stays
  rerun = run_module("jaxchar.train", *args[:-2], "--epochs=1", *args[-2:], timeout=300)
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  assert "in use" not in rerun.stderr


def fail_with(error: OSError, after_calls: int):
  """A replacement that raises `error` once it has been called `after_calls` times."""
  calls = []

  def replacement(original):
    def wrapped(*args, **kwargs):
      calls.append(1)
      if len(calls) > after_calls:
        raise error
      return original(*args, **kwargs)
    return wrapped
  return replacement


@pytest.mark.parametrize("where", ["checkpoint save", "checkpoint background write",
                                   "metrics", "samples"])
def test_a_failed_write_stops_with_a_clear_error_and_keeps_the_checkpoints(
    tiny_file, tmp_path, monkeypatch, where):
  config = tiny_config(tiny_file, epochs=3, sample_len=10)
  workdir = tmp_path / "run"
  full_disk = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  if where == "checkpoint save":  # the second epoch's save fails
    monkeypatch.setattr(ocp.CheckpointManager, "save",
                        fail_with(full_disk, 1)(ocp.CheckpointManager.save))
  elif where == "checkpoint background write":  # surfaces wrapped, when waited for
    wrapped = RuntimeError("async save failed")
    wrapped.__cause__ = full_disk
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished",
                        fail_with(wrapped, 2)(ocp.CheckpointManager.wait_until_finished))
  else:  # metrics.jsonl or samples.md: writes fail once epoch 1's checkpoint exists
    name = metrics.METRICS_FILE if where == "metrics" else metrics.SAMPLES_FILE

    class FullDiskFile:
      def __init__(self, file):
        self.file = file

      def write(self, text):
        if list(workdir.glob("checkpoints/*")):
          raise full_disk
        return self.file.write(text)

      def __getattr__(self, attr):
        return getattr(self.file, attr)

      def __enter__(self):
        return self

      def __exit__(self, *exc):
        self.file.close()

    def open_filling_up(path, *args, **kwargs):
      file = open(path, *args, **kwargs)
      return FullDiskFile(file) if Path(path).name == name else file
    monkeypatch.setattr(metrics, "open", open_filling_up, raising=False)
  with pytest.raises(UserError, match="No space left on device.*free space on the disk"):
    train.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  # A save already under way when the error came finishes in orbax's background thread (here
  # where the failure was only injected into the wait); the steps are read once it has.
  wait_for(lambda: not list((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*")),
           what="the background write in flight")
  saved = checkpoint.checkpoint_steps(workdir)
  assert saved and saved[0] == 45  # epoch 1's checkpoint survived
  history = train.train_and_evaluate(config, workdir)
  assert history[-1]["epoch"] == 3 and history[0]["epoch"] == saved[-1] // 45 + 1
  steps = [r["step"] for r in metrics.read_metrics(workdir) if r["kind"] == "epoch"]
  assert steps == [45, 90, 135]
