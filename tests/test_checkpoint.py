"""Checkpoints: exact resume, preemption by a real signal, corrupt-checkpoint fallback."""

import shutil
import signal
import time

import jax
import pytest

from helpers import StopAfterPolls, assert_same_run, final_checkpoint, start_module, tiny_config
from jaxchar import train
from jaxchar.core import checkpoint
from jaxchar.errors import UserError
from jaxchar.training import loop


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
  with pytest.raises(UserError, match="vocab .* corpus_sha256"):
    train.train_and_evaluate(tiny_config(other, epochs=2), tmp_path / "run")
  # --restart sets the old checkpoints aside (not deleted) and trains afresh.
  history = train.train_and_evaluate(tiny_config(other, epochs=1, restart=True), tmp_path / "run")
  assert [h["epoch"] for h in history] == [1]
  (replaced,) = (tmp_path / "run" / "replaced").iterdir()
  assert (replaced / "checkpoints").is_dir() and (replaced / "metrics.jsonl").is_file()


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tiny_file, tmp_path, capsys,
                                                              damage):
  config = tiny_config(tiny_file, epochs=2)
  train.train_and_evaluate(config, tmp_path / "run")
  steps = checkpoint.checkpoint_steps(tmp_path / "run")
  assert len(steps) == 2
  data_files = [p for p in (tmp_path / "run" / "checkpoints" / str(steps[-1]) / "state").rglob("*")
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
  assert f"checkpoint at step {steps[-1]} is incomplete or corrupt" in out
  assert f"resuming from the checkpoint at step {steps[0]}" in out
  assert [h["epoch"] for h in history] == [2]
  set_aside = list((tmp_path / "run" / "corrupt_checkpoints").iterdir())
  assert len(set_aside) == 1 and set_aside[0].name.startswith(f"{steps[-1]}-")
  train.train_and_evaluate(config, tmp_path / "clean")
  assert_same_run(tmp_path / "clean", tmp_path / "run")


def test_sigterm_saves_and_the_resumed_run_matches_an_uninterrupted_one(tiny_file, tmp_path):
  """A real SIGTERM to a training subprocess on 1 device, sent once its first periodic
  checkpoint exists (so the handler is installed and training is under way)."""
  args = [f"--data={tiny_file}", "--maxlen=8", "--step=1", "--hidden=16", "--batch_size=16",
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


def test_a_snapshot_is_private_and_refuses_a_checkpoint_being_deleted(tmp_path):
  step_dir = tmp_path / "run" / "checkpoints" / "7"
  (step_dir / "state").mkdir(parents=True)
  (step_dir / "state" / "data").write_text("weights")
  with pytest.raises(FileNotFoundError, match="has no meta"):  # meta already deleted
    checkpoint.snapshot(tmp_path / "run", 7, tmp_path / "private")
  (step_dir / "meta").mkdir()
  copy = checkpoint.snapshot(tmp_path / "run", 7, tmp_path / "private2")
  shutil.rmtree(step_dir)  # the trainer's --keep

  assert (copy / "state" / "data").read_text() == "weights"
