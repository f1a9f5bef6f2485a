"""--time_budget: durations, the clock-driven schedule, a run that stops at its budget with its
best checkpoint, and a resumed run that counts the time already spent. The run's clock is
conftest's fake_clock: no test depends on this machine's speed."""

import jax
import numpy as np
import pytest

from helpers import char_lstm, read_metas, tiny_config
from jaxchar import train
from jaxchar.core import checkpoint
from jaxchar.errors import UserError
from jaxchar.sampling import sampler as sampler_lib
from jaxchar.training import budget, steps

@pytest.mark.parametrize("text, seconds", [("10m", 600), ("90s", 90), ("1h30m", 5400),
                                           ("2.5m", 150), ("45", 45), ("2min", 120)])
def test_durations_as_a_user_writes_them(text, seconds):
  assert budget.parse_duration(text) == seconds
  assert budget.parse_duration("") is None


@pytest.mark.parametrize("text", ["ten minutes", "10x", "m", "0s", "-5m"])
def test_a_bad_duration_names_the_forms_that_work(text):
  with pytest.raises(UserError, match=r"--time_budget=.*(10m, 90s|longer than 0)"):
    budget.parse_duration(text)


def test_the_cosine_follows_the_clock_to_zero_at_the_budget():
  cosine = budget.Budget(600.0, cosine=True)
  assert cosine.lr_factor(0.0) == 1.0
  assert cosine.lr_factor(300.0) == pytest.approx(0.5)
  assert cosine.lr_factor(600.0) == pytest.approx(0.0, abs=1e-12)
  assert cosine.lr_factor(900.0) == pytest.approx(0.0, abs=1e-12)  # never negative past it
  assert budget.Budget(600.0, cosine=False).lr_factor(300.0) == 1.0
  end_s = budget.first_end_s(validation_s=8.0)  # training stops early enough for it to fit
  assert not cosine.spent(600.0 - 1.25 * 8.0 - 5.0 - 0.1, end_s)
  assert cosine.spent(600.0 - 1.25 * 8.0 - 5.0, end_s)
  assert budget.next_end_s(10.0) == 1.25 * 10.0 + 1.0


def test_the_learning_rate_factor_scales_the_update_and_zero_stops_it():
  """One path for every run: the factor scales the optimizer's update (1 is the plain step),
  and the optimizer's state advances whatever it is."""
  model = char_lstm(vocab_size=11, hidden=16)
  tx = steps.make_optimizer(0.01)
  state = steps.create_train_state(jax.random.PRNGKey(0), model, 8, tx)
  batch = {"inputs": jax.random.randint(jax.random.PRNGKey(1), (1, 4, 8), 0, 11),
           "targets": jax.random.randint(jax.random.PRNGKey(2), (1, 4), 0, 11)}
  step = jax.pmap(steps.train_step, axis_name=steps.AXIS, in_axes=(0, 0, None),
                  devices=jax.local_devices()[:1])
  p_state = steps.replicate(state, jax.local_devices()[:1])
  (full, _), (half, _), (none, _) = (step(p_state, batch, np.float32(f)) for f in (1, 0.5, 0))
  for x, h, z, start in zip(*(jax.tree_util.tree_leaves(s.params)
                              for s in (full, half, none, p_state))):
    assert not np.array_equal(x, start)
    np.testing.assert_allclose(h - start, 0.5 * (x - start), rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(z, start)
  for a, b in zip(jax.tree_util.tree_leaves(full.opt_state), jax.tree_util.tree_leaves(none.opt_state)):
    np.testing.assert_array_equal(a, b)  # the same gradients' statistics, whatever the factor
  assert int(full.step[0]) == int(none.step[0]) == 1  # the step count the schedules read moves


def _best_step_and_metas(workdir):
  found = checkpoint.checkpoint_steps(workdir)
  metas = read_metas(workdir, found)
  return min((m["val_loss"], s) for s, m in metas.items())[1], metas


def test_a_budgeted_run_stops_at_its_budget_with_its_best_checkpoint(tiny_file, tmp_path,
                                                                     fake_clock, capsys):
  config = tiny_config(tiny_file, epochs=0, time_budget="40s", lr_schedule="cosine",
                       learning_rate=0.02, dropout=0.1, weight_drop=0.2)
  history = train.train_and_evaluate(config, tmp_path / "run")
  out = capsys.readouterr().out
  assert "time budget: 40s of training (--time_budget), no epoch limit" in out
  assert "time budget: 40s (--time_budget) reached at" in out, out
  assert len(history) >= 2  # more than one epoch: no epoch limit
  best, metas = _best_step_and_metas(tmp_path / "run")
  latest = metas[max(metas)]
  assert latest["elapsed_s"] <= 40.0  # by the run's own clock, saving included
  assert latest["epoch_complete"] is False  # the budget ended an epoch part-way
  sampler = sampler_lib.load_sampler(tmp_path / "run")
  assert sampler.step == best
  assert len(sampler.sample("moe", [0.5], 20)[0][0]) == 20  # weight drop is training-only
  assert all(np.isfinite(m["val_loss"]) for m in metas.values())


def test_a_resumed_budgeted_run_stops_at_the_budget_overall(tiny_file, tmp_path, fake_clock,
                                                            capsys):
  config = tiny_config(tiny_file, epochs=0, time_budget="20s", lr_schedule="cosine")
  train.train_and_evaluate(config, tmp_path / "run")
  first = checkpoint.checkpoint_steps(tmp_path / "run")
  capsys.readouterr()
  train.train_and_evaluate(config, tmp_path / "run")  # the same command again: nothing to do
  assert "nothing to train: this run has spent its time budget" in capsys.readouterr().out
  assert checkpoint.checkpoint_steps(tmp_path / "run") == first
  longer = tiny_config(tiny_file, epochs=0, time_budget="35s", lr_schedule="cosine")
  train.train_and_evaluate(longer, tmp_path / "run")
  assert "time budget: 35s (--time_budget) reached" in capsys.readouterr().out
  later = checkpoint.checkpoint_steps(tmp_path / "run")
  metas = read_metas(tmp_path / "run", later)
  assert max(later) > max(first)
  assert 20.0 < metas[max(later)]["elapsed_s"] <= 35.0
  # Validation keeps the window count the budget chose at the start of the run.
  sized = {m.get("budget_val_windows") for m in metas.values()} - {None}
  assert len(sized) <= 1


def test_a_budget_composes_with_an_epoch_limit(tiny_file, tmp_path, fake_clock, capsys):
  config = tiny_config(tiny_file, epochs=1, time_budget="1h")
  history = train.train_and_evaluate(config, tmp_path / "run")
  assert len(history) == 1 and "reached" not in capsys.readouterr().out
  meta = checkpoint.read_meta(tmp_path / "run", checkpoint.checkpoint_steps(tmp_path / "run")[-1])
  assert meta["epoch_complete"] is True
