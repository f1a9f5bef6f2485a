"""Your own text: launch/any_text.flags (a time budget) and any_text_quick.flags (epochs chosen
from the corpus size) end to end, and alphabets from one symbol to over 10,000."""

import numpy as np
import pytest
from absl import flags

from helpers import REPO, read_metas, tiny_config
from jaxchar.core import checkpoint
from jaxchar import train
from jaxchar.sampling import sampler as sampler_lib
from jaxchar.training.config import auto_epochs
from jaxchar.errors import UserError

FLAGS = flags.FLAGS


def test_auto_epochs_follow_the_corpus_size():
  assert auto_epochs(1_043_375) == 3  # 8 Shakespeare tragedies: QUALITY.md's measured best
  assert auto_epochs(2 * 10**6) == 2
  assert auto_epochs(9 * 10**6) == 1  # never fewer than one
  assert auto_epochs(20_000) == 30  # never more than 30


@pytest.mark.parametrize("flagfile, how_long", [
    ("any_text.flags", "time budget: 10m of training (--time_budget), no epoch limit"),
    ("any_text_quick.flags", "epochs: 30, chosen for 1,458 training characters (--epochs=0")])
def test_any_text_recipes_run_end_to_end_and_say_what_they_chose(flagfile, how_long, tiny_file,
                                                                 tmp_path, capsys, monkeypatch,
                                                                 fake_clock):
  fake_clock.step_s = 2.0  # the 10-minute budget in about 100 steps
  monkeypatch.chdir(REPO)
  FLAGS.unparse_flags()
  argv = FLAGS(["jaxchar.train", f"--flagfile=launch/{flagfile}", f"--data={tiny_file}",
                f"--workdir={tmp_path / 'run'}", "--hidden=16", "--maxlen=8", "--stride=4",
                "--batch_size=16", "--sample_len=20", "--compilation_cache="])
  try:
    train.main(argv)
  finally:
    FLAGS.unparse_flags()
  out = capsys.readouterr().out
  lines = out.splitlines()
  assert lines[2].startswith(how_long), lines[:3]
  epochs = [line for line in lines if line.startswith("epoch ")]
  assert 1 <= len(epochs) <= 30
  if flagfile == "any_text.flags":  # the budget or patience ends it, never an epoch count
    assert "time budget: 10m (--time_budget) reached" in out or "early stopping" in out, out
  steps = checkpoint.checkpoint_steps(tmp_path / "run")
  metas = read_metas(tmp_path / "run", steps)
  best = min((m["val_loss"], s) for s, m in metas.items())[1]
  assert sampler_lib.load_sampler(tmp_path / "run").step == best  # the best is kept and sampled
  assert "Moe" not in out and "moe" not in out.split("samples after epoch")[0]


def test_a_one_symbol_text_is_refused_with_the_reason(tmp_path):
  text = tmp_path / "a.txt"
  text.write_text("a" * 5000, encoding="utf-8")
  with pytest.raises(UserError, match="only one distinct character .* nothing to predict"):
    train.train_and_evaluate(tiny_config(text), tmp_path / "run")


@pytest.mark.parametrize("num_symbols", [2, 12_000])
def test_tiny_and_huge_alphabets_train_and_sample(tmp_path, num_symbols):
  rng = np.random.default_rng(0)
  if num_symbols == 2:
    symbols = "01"
    ids = (np.arange(6000) % 3 == 0).astype(int)  # "100100...": learnable
  else:  # CJK ideographs, Zipf-like frequencies, every one used at least once
    symbols = "".join(chr(0x4E00 + i) for i in range(num_symbols))
    ids = np.concatenate([np.arange(num_symbols), rng.zipf(1.3, 30_000) % num_symbols])
  text = tmp_path / "text.txt"
  text.write_text("".join(symbols[i] for i in ids), encoding="utf-8")
  history = train.train_and_evaluate(tiny_config(text, epochs=1, lowercase=False,
                                                 steps_per_epoch=30), tmp_path / "run")
  assert np.isfinite(history[0]["val_loss"])
  if num_symbols == 2:
    assert history[0]["val_loss"] < 0.5  # the period-3 pattern is learnt
  sampler = sampler_lib.load_sampler(tmp_path / "run")
  assert sampler.vocab.size == num_symbols
  (sample,), = sampler.sample(symbols[0], [1.0], 50)
  assert len(sample) == 50 and set(sample) <= set(symbols)
