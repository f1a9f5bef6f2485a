"""--init_from: a new run starts from a trained one's parameters, appending new characters, and
every way to ask for it wrongly is one clear error that writes nothing."""

import re
import shutil

import jax
import numpy as np
import pytest

from helpers import TINY_TEXT, damage_checkpoint, run_main, tiny_config
from jaxchar import train
from jaxchar.core import checkpoint
from jaxchar.core.model import init_params
from jaxchar.errors import UserError
from jaxchar.sampling import sampler as sampler_lib
from jaxchar.training import init_from, loop, metrics, plots, steps
from jaxchar.training.startup import start_run

NEW_TEXT = TINY_TEXT.replace("beer", "bière").replace("hi moe", "hï moe—")
SMALL = ["--stride=2", "--batch_size=16", "--eval_batch_size=64", "--sample_len=0"]


@pytest.fixture
def new_text(tmp_path):
  path = tmp_path / "new.txt"
  path.write_text(NEW_TEXT, encoding="utf-8")
  return path


def fine_tune_config(base, data, **overrides):
  """The config the entry point builds for --init_from with no shape flags given."""
  return init_from.adopt_shape(tiny_config(data, hidden=64, maxlen=4, **overrides), base, set())


def test_new_symbols_get_fresh_rows_and_old_rows_start_as_the_base(tiny_run, new_text,
                                                                  tmp_path):
  base = init_from.load_base(str(tiny_run))
  config = fine_tune_config(base, new_text, epochs=1, seed=5)
  assert (config.hidden, config.maxlen) == (16, 8)  # the base's, not the config's 64 and 4
  run, run_state = start_run(config, tmp_path / "ft", base)
  try:
    state = steps.first_replica(run_state.train)
  finally:
    loop.close(run)
  old = base.vocab.size
  assert run.corpus.vocab.chars[:old] == base.vocab.chars  # the base's ids kept
  assert run.corpus.vocab.chars[old:] == "èï—"
  assert int(state.step) == 0 and run.run_meta["init_from"]["step"] == base.step
  fresh = jax.device_get(init_params(run.model, jax.random.PRNGKey(5), config.maxlen))
  grown = 0
  for (path, start), base_leaf, fresh_leaf in zip(
      jax.tree_util.tree_leaves_with_path(state.params),
      jax.tree_util.tree_leaves(base.params), jax.tree_util.tree_leaves(fresh)):
    name = jax.tree_util.keystr(path)
    if start.shape == base_leaf.shape:
      np.testing.assert_array_equal(start, base_leaf, err_msg=name)
      continue
    grown += 1
    axis = next(a for a, (n, o) in enumerate(zip(start.shape, base_leaf.shape)) if n != o)
    old_rows, new_rows = np.split(start, [old], axis=axis)
    np.testing.assert_array_equal(old_rows, base_leaf, err_msg=name)
    np.testing.assert_array_equal(new_rows, np.split(fresh_leaf, [old], axis=axis)[1],
                                  err_msg=name)
  assert grown == 6  # 4 one-hot input kernels (gate rows), the head's kernel and its bias
  assert all(np.all(v == 0) for v in jax.tree_util.tree_leaves(state.opt_state)
             if np.ndim(v))  # a fresh optimizer


def test_the_fine_tuned_run_trains_resumes_samples_and_records_its_origin(tiny_run, new_text,
                                                                          tmp_path, capsys):
  base = init_from.load_base(str(tiny_run))
  workdir = tmp_path / "ft"
  first = train.train_and_evaluate(fine_tune_config(base, new_text, epochs=1), workdir, base)
  lines = capsys.readouterr().out.splitlines()
  assert lines[2] == (f"init_from: parameters of {tiny_run} step {base.step} (epoch 2, "
                      f"validation loss {base.meta['val_loss']:.4f} nats); optimizer, schedule "
                      f"and step start fresh; vocabulary: {base.vocab.size} from {tiny_run} + 3 "
                      "new ('è', 'ï', '—')")
  assert lines[3].startswith("before training: val loss ")  # the base's loss on this text
  # Rerunning the same command with more epochs resumes the new run.
  second = train.train_and_evaluate(fine_tune_config(base, new_text, epochs=2), workdir, base)
  out = capsys.readouterr().out
  assert [h["epoch"] for h in first + second] == [1, 2]
  assert f"this run started from {tiny_run} step {base.step}" in out
  assert "before training" not in out
  starts = [r for r in metrics.read_metrics(workdir) if r["kind"] == "start"]
  assert len(starts) == 1 and starts[0]["step"] == 0
  assert float(lines[3].split()[4]) == pytest.approx(starts[0]["val_loss"], abs=1e-4)
  assert starts[0]["val_loss"] > first[0]["val_loss"]  # one epoch on the new text improved it
  plot = plots.write_comparison_plot([workdir], tmp_path / "runs.png", "linear")
  assert plot.stat().st_size > 10_000
  meta = checkpoint.read_meta(workdir, checkpoint.checkpoint_steps(workdir)[-1])
  assert meta["init_from"] == {"spec": str(tiny_run), "workdir": str(tiny_run),
                               "step": base.step, "val_loss": base.meta["val_loss"],
                               "base_vocab_size": base.vocab.size, "new_symbols": "èï—"}
  sampler = sampler_lib.load_sampler(workdir)
  text = sampler.sample("bière hï", [0.5], 40)[0][0]
  assert len(text) == 40 and set(text) <= set(sampler.vocab.chars)


def test_a_workdir_with_its_own_run_is_refused_unless_restarted(tiny_run, new_text, tmp_path,
                                                               capsys):
  own = tmp_path / "own"
  shutil.copytree(tiny_run, own)
  base = init_from.load_base(str(tiny_run))
  before = sorted(p.name for p in own.rglob("*"))
  with pytest.raises(UserError, match=r"already holds checkpoints of its own run \(started from "
                     r"scratch\), so --init_from=.* would be ignored.*--restart"):
    train.train_and_evaluate(fine_tune_config(base, new_text, epochs=1), own, base)
  assert sorted(p.name for p in own.rglob("*")) == before
  train.train_and_evaluate(fine_tune_config(base, new_text, epochs=1, restart=True), own, base)
  assert "--restart: moved the previous run's outputs" in capsys.readouterr().out
  assert checkpoint.read_meta(own, checkpoint.checkpoint_steps(own)[-1])["init_from"]


def test_shape_flags_that_contradict_the_base_are_refused_and_matching_ones_pass(tiny_run):
  base = init_from.load_base(str(tiny_run))
  config = tiny_config(tiny_run.parent / "tiny.txt", hidden=32, lowercase=False)
  with pytest.raises(UserError, match=r"--hidden=32 \(flag\) vs 16 .*; --lowercase=false "
                     r"\(flag\) vs true"):
    init_from.adopt_shape(config, base, {"hidden", "lowercase", "maxlen"})
  assert init_from.adopt_shape(config, base, {"maxlen"}).hidden == 16  # 8 = 8: no clash


def test_start_params_refuses_a_tree_that_is_not_the_base_grown(tiny_run):
  base = init_from.load_base(str(tiny_run))
  shrunk = jax.tree_util.tree_map(lambda x: np.zeros([max(1, d - 1) for d in x.shape]),
                                  base.params)
  with pytest.raises(ValueError, match="cannot grow"):
    init_from.start_params(shrunk, base.params, base.vocab.size)


def damaged_copy(run, tmp_path):
  copy = tmp_path / "damaged"
  shutil.copytree(run, copy)
  for step in checkpoint.checkpoint_steps(copy):
    damage_checkpoint(copy / "checkpoints" / str(step), "truncated data files")
  return copy


def unfinished_only(tmp_path):
  folder = tmp_path / "unfinished" / "checkpoints" / "45.orbax-checkpoint-tmp-1"
  folder.mkdir(parents=True)
  return folder.parent.parent


@pytest.mark.parametrize("case, message", [
    ("missing", "--init_from=.*missing does not exist; point it at a training run's folder"),
    ("unfinished", "has no finished checkpoint yet"),
    ("damaged", "none of the 2 checkpoints in .* can be restored"),
    ("no step", "has no checkpoint in .*; the steps saved are 45, 90"),
    ("bad step", "the part after ':' must be a checkpoint step"),
    ("strict", r"--init_vocab=strict: --data has 3 character\(s\) that the model in .* never "
               "saw: 'è', 'ï', '—'"),
    ("contradiction", r"--hidden=64 \(flag\) vs 16"),
])
def test_every_bad_init_from_exits_2_with_one_paragraph_and_writes_nothing(
    case, message, tiny_run, new_text, tmp_path, capsys):
  spec = {"missing": str(tmp_path / "missing"), "unfinished": str(unfinished_only(tmp_path)),
          "damaged": str(damaged_copy(tiny_run, tmp_path)) if case == "damaged" else "",
          "no step": f"{tiny_run}:7", "bad step": f"{tiny_run}:x7"}.get(case, str(tiny_run))
  flags = {"strict": ["--init_vocab=strict"], "contradiction": ["--hidden=64"]}.get(case, [])
  workdir = tmp_path / "ft"
  code = run_main([f"--data={new_text}", f"--workdir={workdir}", f"--init_from={spec}",
                   "--epochs=1", *SMALL, *flags])
  err = capsys.readouterr().err
  assert code == 2, err
  error = err[err.find("error: "):]  # after the sampler's warnings about damaged ones
  assert err.count("error: ") == 1 and "Traceback" not in err and "\n\n" not in error.strip()
  assert re.search(message, " ".join(error.split())), err
  assert not workdir.exists()


def test_every_step_of_a_run_can_be_a_base(tiny_run):
  first = checkpoint.checkpoint_steps(tiny_run)[0]
  base = init_from.load_base(f"{tiny_run}:{first}")
  assert base.step == first
  restored = checkpoint.restore_params(checkpoint.step_folder(tiny_run, first), base.params)
  for x, y in zip(jax.tree_util.tree_leaves(base.params), jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(x, y)
