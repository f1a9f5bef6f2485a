"""--carry_state: streams read window after window with the state carried; a run stopped
mid-epoch resumes exactly, and 1 device trains as 2 (and 4) do; validation scores the same
characters as window validation, each once."""

import json

import jax
import numpy as np
import pytest

from helpers import (TINY_TEXT, StopAfterPolls, assert_same_run, final_checkpoint, run_module,
                     tiny_config, write_tiny_text)
from jaxchar import train
from jaxchar.core import data
from jaxchar.errors import UserError
from jaxchar.training import loop

# 16 streams of the tiny text's training part: 91 characters each, 10 windows of 8 an epoch.
STREAMS = dict(carry_state=True, objective="every", epochs=2)


def test_a_run_stopped_mid_epoch_resumes_exactly(tiny_file, tmp_path, monkeypatch, capsys):
  config = tiny_config(tiny_file, **STREAMS)
  train.train_and_evaluate(config, tmp_path / "full")
  with monkeypatch.context() as patch:
    patch.setattr(loop, "StopRequests", lambda: StopAfterPolls(14))  # epoch 2, batch 4 of 10
    with pytest.raises(SystemExit):
      train.train_and_evaluate(config, tmp_path / "stopped")
  stopped_state, stopped = final_checkpoint(tmp_path / "stopped")
  assert (stopped["epoch"], stopped["batch_in_epoch"], stopped["epoch_complete"]) == (2, 4, False)
  train.train_and_evaluate(config, tmp_path / "stopped")
  assert "resuming from the checkpoint at step 14 (epoch 2, batch 4 of 10)" in capsys.readouterr().out
  assert_same_run(tmp_path / "full", tmp_path / "stopped")  # every loss and parameter, bit for bit


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
  """A --carry_state run on this process's 4 devices."""
  root = tmp_path_factory.mktemp("streams")
  train.train_and_evaluate(tiny_config(write_tiny_text(root), **STREAMS), root / "run")
  return root, final_checkpoint(root / "run")


@pytest.mark.parametrize("devices", [1, 2])
def test_one_or_two_devices_train_as_four_do(four_devices, tmp_path, devices):
  """Each device holds its streams' state: splitting the rows otherwise changes only float
  rounding."""
  root, (four, four_meta) = four_devices
  args = [f"--data={root / 'tiny.txt'}", "--maxlen=8", "--hidden=16", "--batch_size=16",
          "--eval_batch_size=64", "--epochs=2", "--sample_len=0", "--carry_state",
          "--objective=every", f"--workdir={tmp_path / 'run'}"]
  result = run_module("jaxchar.train", *args, devices=devices, timeout=300)
  assert f"devices: {devices} x cpu in 1 process(es)" in result.stdout, result.stderr
  other, other_meta = final_checkpoint(tmp_path / "run")
  for a, b in zip(jax.tree_util.tree_leaves(four["params"]),
                  jax.tree_util.tree_leaves(other["params"])):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert other_meta["val_loss"] == pytest.approx(four_meta["val_loss"], abs=1e-5)


@pytest.mark.parametrize("limit", [10**6, 40])
def test_validation_streams_score_each_character_once(limit):
  ids = np.zeros(2000, np.uint8)
  ids[1] = 1
  corpus = data.Corpus(data.Vocab("ab"), ids, None, 1500, 8, 3, "")
  starts, low, high, width = data.stream_rows(corpus, limit)
  scored = np.zeros(len(ids), int)
  for start, first, end in zip(starts, low, high):
    assert corpus.cut <= start and start + width + 1 <= len(ids)  # only validation text read
    assert start + 1 <= first and end <= start + width + 1  # its targets are within its row
    assert first - start - 1 >= min(first - corpus.cut - 1, 4 * 8)  # warmed up on what precedes
    scored[first:end] += 1
  assert scored.max() == 1 and scored[:corpus.cut + 8].sum() == 0
  if limit > len(ids):  # all of them: the characters window validation scores
    assert scored.sum() == corpus.num_val_windows
  else:
    assert limit <= scored.sum() < limit + 4 * 8


def test_streams_need_the_every_position_objective_and_a_long_enough_text(tiny_file, tmp_path):
  with pytest.raises(UserError, match="--carry_state trains on every position"):
    tiny_config(tiny_file, carry_state=True)
  short = write_tiny_text(tmp_path)
  with pytest.raises(UserError, match="too few for --batch_size=160 streams"):
    train.train_and_evaluate(tiny_config(short, batch_size=160, **STREAMS), tmp_path / "run")


def test_scoring_the_validation_text_gives_the_validation_loss(four_devices, tmp_path):
  """The scorer reads a --carry_state model's text as streams, as its validation did."""
  root, (_, meta) = four_devices
  text = TINY_TEXT.lower()
  val_text = tmp_path / "val.txt"
  val_text.write_text(text[data.split_index(text, 0.1):], encoding="utf-8")
  result = run_module("jaxchar.score", f"--workdir={root / 'run'}", f"--data={val_text}",
                      "--json", "--batch_size=64", devices=2)
  assert result.returncode == 0, result.stderr
  figures = json.loads(result.stdout)
  assert figures["scored"] == len(val_text.read_text(encoding="utf-8")) - 8
  assert figures["nats_per_char"] == pytest.approx(meta["val_loss"], abs=1e-5)
