"""What a training run tells a person: the workdir first, where the corpus comes from, a resume
that reads as one story with 'nothing to train', a warning when a fine-tuning base can carry
little over, bad input that creates nothing, a Ctrl-C as the run ends answered completely, and
last the best checkpoint with the commands to run next."""

import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_config, write_tiny_text
from jaxchar.core import corpus as corpus_lib
from jaxchar.core import data
from jaxchar.core.data import Vocab
from jaxchar.core.spec import ModelSpec
from jaxchar.errors import UserError
from jaxchar.training import init_from, loop
from jaxchar.training.loop import train_and_evaluate


def test_a_run_names_its_workdir_first_and_ends_with_its_best_checkpoint_and_next_steps(
    tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  write_tiny_text(tmp_path)
  history = train_and_evaluate(tiny_config("tiny.txt", epochs=2), "runs/tiny")
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith("training in runs/tiny (checkpoints, metrics.jsonl")
  best = min(history, key=lambda h: h["val_loss"])
  assert re.fullmatch(rf"best checkpoint: step {best['step']} \(epoch {best['epoch']}, "
                      rf"validation loss {best['val_loss']:.4f} nats = .* bits/char\) in "
                      rf"runs/tiny/checkpoints/{best['step']}; records in runs/tiny: "
                      r"metrics.jsonl, .*tensorboard/", out[-6]), out[-6]
  assert out[-5:] == [
      "next, with this model:",
      "  python -m jaxchar.sample --workdir=runs/tiny --temperature=0.5,1.0    # --prime=TEXT to "
      "begin with",
      "  python -m jaxchar.score --workdir=runs/tiny --data=some.txt",
      "  python -m jaxchar.export --workdir=runs/tiny --out=tiny.html",
      "  python -m jaxchar.serve --workdir=runs/tiny    # after pip install -e '.[serve]'"]

  # Rerun: resuming after the last epoch and finding nothing to do tell one story.
  assert train_and_evaluate(tiny_config("tiny.txt", epochs=2), "runs/tiny") == []
  out = capsys.readouterr().out
  last = history[-1]
  assert f"resuming from the checkpoint at step {last['step']} (the end of epoch 2)" in out
  assert "(epoch 3" not in out
  assert "already finished epoch 2 of --epochs=2" in out
  assert out.rstrip().endswith("# after pip install -e '.[serve]'")  # where things are, again


@pytest.mark.parametrize("data", ["missing.txt", "a_folder"])
def test_a_missing_or_folder_data_creates_no_workdir_and_no_lock(data, tmp_path):
  (tmp_path / "a_folder").mkdir()
  workdir = tmp_path / "ckpt" / "new"
  with pytest.raises(UserError, match="no such file|is a folder with no files in it"):
    train_and_evaluate(tiny_config(tmp_path / data), workdir)
  assert not (tmp_path / "ckpt").exists()
  existing = tmp_path / "existing"  # a folder that was there keeps what it had, no lock added
  existing.mkdir()
  with pytest.raises(UserError):
    train_and_evaluate(tiny_config(tmp_path / data), existing)
  assert existing.is_dir() and not list(existing.iterdir())


def test_copying_the_corpus_from_the_mirror_says_so(tmp_path, monkeypatch):
  mirror = tmp_path / "mirror"
  mirror.mkdir()
  (mirror / corpus_lib.MOES_FILENAME).write_text("not the corpus\n", encoding="utf-8")
  monkeypatch.setenv(corpus_lib.MIRROR_ENV, str(mirror))
  said = []
  with pytest.raises(UserError, match="sha256"):  # said before the copy, checked after it
    corpus_lib.fetch_moes(tmp_path / "data" / corpus_lib.MOES_FILENAME, said.append)
  assert said == [f"copying the corpus from {mirror / corpus_lib.MOES_FILENAME} "
                  f"({corpus_lib.MIRROR_ENV}) to {tmp_path / 'data' / corpus_lib.MOES_FILENAME}, "
                  "checking its sha256"]


def test_a_base_that_knows_few_of_the_new_characters_is_warned_about():
  base = init_from.Base("ckpt/base", Path("ckpt/base"), 10, {}, None,
                        ModelSpec("abc", hidden=16, num_layers=1, embed_dim=0, maxlen=8,
                                  lowercase=True, dtype="float32", lstm_impl="fused",
                                  carry_state=False))

  def corpus(ids: list[int], chars: str) -> data.Corpus:
    return data.Corpus(Vocab(chars), np.array(ids, np.uint8), None, len(ids), 2, 1, "")
  mostly_new = corpus([0, 3, 4, 5, 5, 6, 3, 1], "abcdefg")
  warning = init_from.carry_over_warning(base, "defg", mostly_new)
  assert warning.startswith("warning: 4 characters of --data are new to ckpt/base (which knows "
                            "3), 75% of the text by count")
  assert "little of the base carries over" in warning
  few_new = corpus([0, 1, 2] * 10 + [3], "abcd")
  assert init_from.carry_over_warning(base, "d", few_new) is None
  assert init_from.carry_over_warning(base, "", few_new) is None


def test_a_ctrl_c_as_the_run_ends_is_answered_completely(tmp_path, monkeypatch, capsys):
  close = loop.close

  def interrupted_close(plan, after_error=False):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the last checkpoint is completed
    close(plan, after_error)

  monkeypatch.setattr(loop, "close", interrupted_close)
  train_and_evaluate(tiny_config(write_tiny_text(tmp_path), epochs=1), tmp_path / "run")
  printed = capsys.readouterr()
  assert ("SIGINT received: the run's training steps are done; it ends its last epoch, saves "
          "its last checkpoint and exits.") in printed.err
  assert (f"SIGINT came as the run ended: its training was complete and its last checkpoint is "
          f"saved in {tmp_path / 'run'}.") in printed.out
  assert "best checkpoint: step" in printed.out
