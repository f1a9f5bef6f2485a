"""Checkpoints: exact resume, preemption by a real signal, corrupt-checkpoint fallback."""

import errno
import shutil
import signal
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import (StopAfterPolls, assert_same_run, damage_checkpoint, final_checkpoint,
                     run_main, start_module, tiny_config)
from jaxchar import train
from jaxchar.core import checkpoint, storage
from jaxchar.core import restore as restore_lib
from jaxchar.errors import UserError
from jaxchar.sampling.sampler import load_sampler
from jaxchar.training import loop, validation


def test_resume_mid_epoch_on_4_devices_is_bit_exact(tiny_file, tmp_path, monkeypatch, capsys):
  assert jax.local_device_count() == 4
  config = tiny_config(tiny_file, epochs=3, save_every_steps=7)
  train.train_and_evaluate(config, tmp_path / "full")

  monkeypatch.setattr(loop, "StopRequests", lambda: StopAfterPolls(60))  # epoch 1 has 45 steps
  with pytest.raises(SystemExit) as exit_info:
    train.train_and_evaluate(config, tmp_path / "resumed")
  assert exit_info.value.code == 128 + signal.SIGTERM
  _, meta = final_checkpoint(tmp_path / "resumed")
  assert (meta["epoch"], meta["epoch_complete"]) == (2, False) and 0 < meta["batch_in_epoch"]
  monkeypatch.undo()
  history = train.train_and_evaluate(config, tmp_path / "resumed")
  assert [h["epoch"] for h in history] == [2, 3]
  assert_same_run(tmp_path / "full", tmp_path / "resumed")
  assert train.train_and_evaluate(config, tmp_path / "resumed") == []  # already finished
  assert "nothing to train" in capsys.readouterr().out


def test_changed_model_or_corpus_is_refused_on_resume(tiny_file, tmp_path):
  config = tiny_config(tiny_file, epochs=1)
  train.train_and_evaluate(config, tmp_path / "run")
  with pytest.raises(UserError, match=r"hidden 16 \(checkpoint\) vs 32 \(now\).*--restart"):
    train.train_and_evaluate(tiny_config(tiny_file, epochs=2, hidden=32), tmp_path / "run")
  other = tmp_path / "other.txt"
  other.write_text(tiny_file.read_text() + "zebra\n", encoding="utf-8")
  with pytest.raises(UserError, match=r"vocab .*; the text \(--data\) differs"):
    train.train_and_evaluate(tiny_config(other, epochs=2), tmp_path / "run")
  assert checkpoint.checkpoint_steps(tmp_path / "run") == [45]  # refused: nothing moved
  # --restart sets the old checkpoints aside (not deleted) and trains afresh.
  history = train.train_and_evaluate(tiny_config(other, epochs=1, restart=True), tmp_path / "run")
  assert [h["epoch"] for h in history] == [1]
  (replaced,) = (tmp_path / "run" / "replaced").iterdir()
  assert (replaced / "checkpoints").is_dir() and (replaced / "metrics.jsonl").is_file()


def test_options_that_may_change_between_sessions_are_accepted_and_said(tiny_file, tmp_path,
                                                                       capsys):
  train.train_and_evaluate(tiny_config(tiny_file, epochs=1), tmp_path / "run")
  capsys.readouterr()
  history = train.train_and_evaluate(
      tiny_config(tiny_file, epochs=2, learning_rate=0.02, patience=3), tmp_path / "run")
  assert [h["epoch"] for h in history] == [2]
  lines = capsys.readouterr().out.splitlines()
  at = lines.index("resuming from the checkpoint at step 45 (the end of epoch 1)")
  assert lines[at + 1] == ("resumed with --learning_rate=0.02 (was 0.01), --epochs=2 (was 1), "
                           "--patience=3 (was 0)")


def test_a_schedule_that_changes_the_optimizer_state_is_refused(tiny_file, tmp_path):
  train.train_and_evaluate(tiny_config(tiny_file, epochs=1), tmp_path / "run")
  with pytest.raises(UserError, match="lr_schedule constant with warmup_steps 0 .checkpoint. vs "
                     "cosine with 0 .now.: a constant rate"):
    train.train_and_evaluate(tiny_config(tiny_file, epochs=2, lr_schedule="cosine"),
                             tmp_path / "run")


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tiny_file, tmp_path, capsys,
                                                              damage):
  config = tiny_config(tiny_file, epochs=2)
  train.train_and_evaluate(config, tmp_path / "run")
  steps = checkpoint.checkpoint_steps(tmp_path / "run")
  assert len(steps) == 2
  data_files = [p for p in (tmp_path / "run" / "checkpoints" / str(steps[-1]) / "params").rglob("*")
                if p.is_file() and p.parent.name == "d" and p.stat().st_size > 1000]
  assert data_files
  for p in data_files:
    if damage == "truncate":
      p.write_bytes(p.read_bytes()[:p.stat().st_size // 3])
    else:
      p.unlink()
  capsys.readouterr()
  history = train.train_and_evaluate(tiny_config(tiny_file, epochs=2), tmp_path / "run")
  out = capsys.readouterr().out
  assert f"checkpoint at step {steps[-1]} is damaged" in out
  assert f"resuming from the checkpoint at step {steps[0]}" in out
  assert [h["epoch"] for h in history] == [2]
  set_aside = list((tmp_path / "run" / "corrupt_checkpoints").iterdir())
  assert len(set_aside) == 1 and set_aside[0].name.startswith(f"{steps[-1]}-")
  train.train_and_evaluate(config, tmp_path / "clean")
  assert_same_run(tmp_path / "clean", tmp_path / "run")


def test_sigterm_saves_and_the_resumed_run_matches_an_uninterrupted_one(tiny_file, tmp_path):
  """A real SIGTERM to a training subprocess on 1 device, sent once its first periodic
  checkpoint exists (so the handler is installed and training is under way)."""
  args = [f"--data={tiny_file}", "--maxlen=8", "--stride=1", "--hidden=16", "--batch_size=16",
          "--epochs=4", "--sample_len=0", "--save_every_steps=10"]
  interrupted = tmp_path / "interrupted"
  full = start_module("jaxchar.train", *args, f"--workdir={tmp_path / 'full'}")  # alongside
  proc = start_module("jaxchar.train", *args, f"--workdir={interrupted}")
  deadline = time.monotonic() + 120
  while not checkpoint.checkpoint_steps(interrupted) and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, out
  assert "SIGTERM: saved a checkpoint at step" in out and "Traceback" not in out
  stopped_at = checkpoint.checkpoint_steps(interrupted)[-1]
  assert stopped_at < 4 * 90  # 90 steps an epoch: it really stopped early

  resumed = start_module("jaxchar.train", *args, f"--workdir={interrupted}")
  out, _ = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, out
  assert f"resuming from the checkpoint at step {stopped_at}" in out
  out, _ = full.communicate(timeout=300)
  assert full.returncode == 0, out
  assert_same_run(tmp_path / "full", interrupted)


def test_a_pinned_checkpoint_is_private_and_one_being_deleted_is_refused(tmp_path):
  step_dir = tmp_path / "run" / "checkpoints" / "7"
  (step_dir / "params").mkdir(parents=True)
  (step_dir / "params" / "data").write_text("weights")
  workdir = storage.location(tmp_path / "run")
  with pytest.raises(FileNotFoundError, match="has no meta"):  # meta already deleted
    restore_lib._pin(workdir, 7, tmp_path / "private", "meta")
  pinned = restore_lib._pin(workdir, 7, tmp_path / "private2", "params")
  shutil.rmtree(step_dir)  # the trainer's --keep
  assert (Path(pinned) / "params" / "data").read_text() == "weights"


def _trained_twice(tiny_file, tmp_path) -> tuple[object, list[int]]:
  """A tiny run with two checkpoints, and their steps."""
  train.train_and_evaluate(tiny_config(tiny_file, epochs=2), tmp_path / "run")
  return tmp_path / "run", checkpoint.checkpoint_steps(tmp_path / "run")


def _resume_cli(tiny_file, workdir, capsys, *extra) -> tuple[int, str]:
  """Runs the trainer's main in-process as a user would resume; (exit code, stderr)."""
  capsys.readouterr()
  code = run_main([f"--data={tiny_file}", "--maxlen=8", "--stride=2", "--hidden=16",
                   "--batch_size=16", "--eval_batch_size=64", "--epochs=3", "--sample_len=0",
                   f"--workdir={workdir}", *extra])
  return code, " ".join(capsys.readouterr().err.split())  # unwrapped


def test_an_io_error_while_restoring_stops_and_moves_nothing(tiny_file, tmp_path, monkeypatch,
                                                             capsys):
  workdir, steps = _trained_twice(tiny_file, tmp_path)

  def failing_restore(self, *args, **kwargs):
    raise OSError(errno.EIO, "Input/output error", str(workdir / "checkpoints"))

  monkeypatch.setattr(ocp.CheckpointManager, "restore", failing_restore)
  code, err = _resume_cli(tiny_file, workdir, capsys)
  assert code == 2 and "Traceback" not in err
  assert f"the checkpoint at step {steps[-1]}" in err and "Input/output error" in err
  assert "nothing was moved or changed" in err
  assert checkpoint.checkpoint_steps(workdir) == steps
  assert not (workdir / checkpoint.CORRUPT).exists()


def test_a_parameter_tree_that_does_not_match_stops_and_moves_nothing(tiny_file, tmp_path,
                                                                      monkeypatch, capsys):
  workdir, steps = _trained_twice(tiny_file, tmp_path)
  restore_latest = checkpoint.Checkpoints.restore_latest

  def with_another_tree(self, template, check):  # as a model from other code would ask for
    return restore_latest(self, {**template, "params": {**template["params"],
                                                        "extra": np.zeros(3, np.float32)}}, check)

  monkeypatch.setattr(checkpoint.Checkpoints, "restore_latest", with_another_tree)
  code, err = _resume_cli(tiny_file, workdir, capsys)
  assert code == 2 and "Traceback" not in err
  assert f"the checkpoint at step {steps[-1]}" in err and "do not match this run's model" in err
  assert checkpoint.checkpoint_steps(workdir) == steps
  assert not (workdir / checkpoint.CORRUPT).exists()


def test_when_every_checkpoint_is_damaged_the_run_stops_instead_of_starting_afresh(
    tiny_file, tmp_path, capsys):
  workdir, steps = _trained_twice(tiny_file, tmp_path)
  for step in steps:
    damage_checkpoint(workdir / "checkpoints" / str(step), "deleted state data")
  records = (workdir / "metrics.jsonl").read_bytes()
  code, err = _resume_cli(tiny_file, workdir, capsys)
  assert code == 2 and "holds no checkpoint that restores" in err and "--restart" in err
  assert len(list((workdir / checkpoint.CORRUPT).iterdir())) == 2  # damage is still set aside
  code, err = _resume_cli(tiny_file, workdir, capsys)  # and a rerun does not start afresh
  assert code == 2 and "holds no checkpoint that restores" in err
  assert (workdir / "metrics.jsonl").read_bytes() == records  # the run's records untouched
  code, _ = _resume_cli(tiny_file, workdir, capsys, "--restart")
  assert code == 0 and checkpoint.checkpoint_steps(workdir)
  (replaced,) = (workdir / "replaced").iterdir()
  assert (replaced / checkpoint.CORRUPT).is_dir()  # --restart moved the damaged ones aside too


def test_a_resumed_run_keeps_its_best_checkpoint_when_later_epochs_are_worse(tiny_file, tmp_path,
                                                                             monkeypatch):
  """Stopped in epoch 2 and resumed, a run whose epochs 2 and 3 validate worse than epoch 1
  keeps epoch 1's checkpoint beside the latest (--keep=1), and the sampler uses it: the loss
  that decides is read back from the checkpoints, not remembered by the process that saved."""
  losses = iter([1.0, 2.0, 3.0])
  monkeypatch.setattr(validation, "evaluate", lambda *args, **kwargs: next(losses))
  config = tiny_config(tiny_file, epochs=3, keep=1)
  with monkeypatch.context() as patch:
    patch.setattr(loop, "StopRequests", lambda: StopAfterPolls(60))  # epoch 1 has 45 steps
    with pytest.raises(SystemExit):
      train.train_and_evaluate(config, tmp_path / "run")
  assert checkpoint.checkpoint_steps(tmp_path / "run") == [45, 60]
  train.train_and_evaluate(config, tmp_path / "run")
  assert checkpoint.checkpoint_steps(tmp_path / "run") == [45, 135]
  assert load_sampler(tmp_path / "run").step == 45
