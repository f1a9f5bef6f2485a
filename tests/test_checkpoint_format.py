"""Checkpoints saved before format 2 (one ModelSpec) still restore, sample and resume, with the
figures the code that wrote them gave (tests/data/README.md)."""

import shutil

import pytest

from helpers import FORMAT1_RUN, final_checkpoint, tiny_config, write_tiny_text
from jaxchar import train
from jaxchar.core import checkpoint, restore
from jaxchar.core.spec import ModelSpec
from jaxchar.sampling.config import SampleConfig
from jaxchar.sampling.sampler import run_sampling


def test_format1_checkpoint_restores_to_the_spec_it_describes():
  restored = restore.restore(FORMAT1_RUN)
  assert checkpoint.read_meta(FORMAT1_RUN, 90)["format_version"] == 1
  assert restored.step == 90 and restored.spec == ModelSpec(
      "\n !.:abehimnory", hidden=16, num_layers=1, embed_dim=0, maxlen=8, lowercase=True,
      dtype="float32", lstm_impl="fused", carry_state=False)


def test_format1_checkpoint_samples_what_the_old_code_sampled():
  for mode, expected in [("window", "moe: hm me.\nhhme r eiimmee.\n\naoooy    ..e\neee"),
                         ("stateful", "moe: hm me.mmommmm.mmmem.m..mmeeeeeenynnnnnee")]:
    text = run_sampling(SampleConfig(workdir=str(FORMAT1_RUN), prime="moe: ", length=40,
                                     temperatures=(0.5,), mode=mode))
    assert text.splitlines()[0] == "# checkpoint step 90 (epoch 2, validation loss 1.6582 nats)"
    assert text.split("sample 1\n", 1)[1] == expected


def test_format1_checkpoint_resumes_and_saves_the_current_format(tmp_path, capsys):
  text = write_tiny_text(tmp_path)
  shutil.copytree(FORMAT1_RUN, tmp_path / "old")
  train.train_and_evaluate(tiny_config(text, epochs=3, keep=1), tmp_path / "old")
  out = capsys.readouterr().out
  assert "resuming from the checkpoint at step 90 (the end of epoch 2)" in out
  state, meta = final_checkpoint(tmp_path / "old")
  # The old code gave 1.40794: since the window order became a seeded bijection (no permutation
  # array, for texts of any size), epoch 3 sees its windows in another order. The tolerance
  # covers float rounding, which differs with the CPU's instruction set (1.3317146 with AVX-512,
  # 1.3317156 without).
  assert meta["epoch"] == 3 and meta["val_loss"] == pytest.approx(1.33171, abs=2e-5)
  assert meta["epoch_losses"] and meta["val_loss"] < 1.6582  # it trained on from epoch 2's state
  assert meta["format_version"] == checkpoint.FORMAT_VERSION and ModelSpec.from_meta(meta) == restore.restore(
      FORMAT1_RUN).spec
