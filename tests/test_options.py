"""Training options beyond the reference: objective, layers, embedding, dropout, clipping,
schedules, AdamW and early stopping."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import jax_utils

from helpers import FORMAT1_RUN, StopAfterPolls, assert_same_run, char_lstm, tiny_config
from jaxchar.core import checkpoint, data
from jaxchar.sampling import generate
from jaxchar.training import loop, resume, steps
from jaxchar import train
from jaxchar.sampling import sampler as sampler_lib
from jaxchar.core.spec import ModelSpec
from jaxchar.errors import UserError
from jaxchar.core.model import count_params, init_params

MAXLEN = 8
DEEP = char_lstm(11, 16, num_layers=2, embed_dim=6, dropout=0.3)


def test_gather_every_position_targets_are_the_inputs_shifted_by_one():
  ids = jnp.arange(40, dtype=jnp.uint8)
  batch = data.gather_windows(ids, jnp.array([0, 7, 31]), MAXLEN, every_position=True)
  np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)
  last = data.gather_windows(ids, jnp.array([0, 7, 31]), MAXLEN)
  np.testing.assert_array_equal(batch["inputs"], last["inputs"])
  np.testing.assert_array_equal(batch["targets"][:, -1], last["targets"])


def test_two_layers_with_an_embedding_have_the_expected_parameter_count():
  params = init_params(char_lstm(65, 128, num_layers=2, embed_dim=32), jax.random.PRNGKey(0), 60)
  lstm = lambda inputs: 4 * (inputs * 128 + 128 * 128 + 128)  # noqa: E731
  assert count_params(params) == 65 * 32 + lstm(32) + lstm(128) + 128 * 65 + 65 == 224_481
  assert sorted(params) == ["embed", "head", "lstm", "lstm2"]
  assert np.all(params["lstm2"]["hf"]["bias"] == 1.0)  # unit forget bias in every layer


def test_every_position_logits_end_with_the_last_position_logits():
  params = init_params(DEEP, jax.random.PRNGKey(0), MAXLEN)
  inputs = jax.random.randint(jax.random.PRNGKey(1), (3, MAXLEN), 0, 11)
  every = DEEP.apply({"params": params}, inputs, every_position=True)
  assert every.shape == (3, MAXLEN, 11)
  np.testing.assert_allclose(every[:, -1], DEEP.apply({"params": params}, inputs), atol=1e-6)


def test_dropout_acts_only_in_training():
  params = init_params(DEEP, jax.random.PRNGKey(0), MAXLEN)
  inputs = jax.random.randint(jax.random.PRNGKey(1), (3, MAXLEN), 0, 11)
  run = lambda key: DEEP.apply({"params": params}, inputs, train=True,  # noqa: E731
                               rngs={"dropout": jax.random.PRNGKey(key)})
  assert not np.allclose(run(0), run(1))
  np.testing.assert_array_equal(run(0), run(0))
  plain = char_lstm(11, 16, num_layers=2, embed_dim=6)  # same parameters, no dropout
  np.testing.assert_array_equal(DEEP.apply({"params": params}, inputs),
                                plain.apply({"params": params}, inputs))


def test_every_position_step_minimises_the_mean_over_all_positions():
  model = char_lstm(11, 16)
  tx = steps.make_optimizer(0.01)
  state = steps.create_train_state(jax.random.PRNGKey(0), model, MAXLEN, tx)
  ids = jax.random.randint(jax.random.PRNGKey(2), (200,), 0, 11)
  batch = data.gather_windows(ids, jnp.arange(0, 160, 10), MAXLEN, every_position=True)
  p_train = jax.pmap(functools.partial(steps.train_step, lr_factor=1.0), axis_name=steps.AXIS,
                     devices=jax.local_devices()[:1])
  _, metrics = p_train(jax_utils.replicate(state, jax.local_devices()[:1]),
                       jax.tree_util.tree_map(lambda x: x[None], batch))
  logits = model.apply({"params": state.params}, batch["inputs"], every_position=True)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
  assert float(metrics["loss"][0]) == pytest.approx(float(expected), abs=1e-6)
  last_only = steps.cross_entropy(logits[:, -1], batch["targets"][:, -1]).mean()
  assert abs(float(expected) - float(last_only)) > 1e-3  # the two objectives differ


def test_clip_norm_clips_the_global_gradient_norm_before_the_optimizer():
  params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
  raw = [{"a": jnp.array([3.0, 4.0]) * (k + 1), "b": jnp.array([12.0 + 5.0 * k * k])}
         for k in range(4)]  # global norms 13 and up, different each step
  clipped = [jax.tree_util.tree_map(lambda g, n=optax.tree.norm(g): g / n, g) for g in raw]

  def updates(tx, grads_seq):
    state = tx.init(params)
    for grads in grads_seq:
      update, state = tx.update(grads, state, params)
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(update)])

  plain = steps.make_optimizer(0.1, "adamw", weight_decay=0.0)
  with_clip = updates(steps.make_optimizer(0.1, "adamw", clip_norm=1.0, weight_decay=0.0), raw)
  np.testing.assert_allclose(with_clip, updates(plain, clipped), rtol=1e-5)
  assert not np.allclose(with_clip, updates(plain, raw), rtol=1e-3)


def test_learning_rate_schedules():
  cosine = steps.learning_rate_schedule("cosine", 0.01, warmup_steps=10, total_steps=110)
  assert [float(cosine(s)) for s in (0, 5, 10)] == pytest.approx([0.0, 0.005, 0.01])
  assert float(cosine(60)) == pytest.approx(0.005, rel=1e-5)
  assert float(cosine(110)) == pytest.approx(0.0, abs=1e-9)
  exponential = steps.learning_rate_schedule("exponential", 0.01, warmup_steps=4,
                                             steps_per_epoch=20, decay_per_epoch=0.5)
  assert float(exponential(2)) == pytest.approx(0.005)
  assert float(exponential(4 + 20)) == pytest.approx(0.005)
  assert float(exponential(4 + 40)) == pytest.approx(0.0025)
  assert steps.learning_rate_schedule("constant", 0.01) == 0.01
  warm_constant = steps.learning_rate_schedule("constant", 0.01, warmup_steps=4)
  assert [float(warm_constant(s)) for s in (2, 100)] == pytest.approx([0.005, 0.01])


OPTIONS = dict(objective="every", num_layers=2, embed_dim=6, dropout=0.2, optimizer="adamw",
               learning_rate=0.005, clip_norm=1.0, lr_schedule="cosine", warmup_steps=5)


def test_every_option_trains_and_the_loss_falls(tiny_file, tmp_path):
  history = train.train_and_evaluate(tiny_config(tiny_file, epochs=3, **OPTIONS),
                                     tmp_path / "run")
  losses = [h["val_loss"] for h in history]
  assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.3, losses
  sampler = sampler_lib.load_sampler(tmp_path / "run")
  assert sampler.model.num_layers == 2 and sampler.model.embed_dim == 6
  text = sampler.sample("moe: ", [0.2], 30, mode="window")[0][0]
  assert len(text) == 30


def test_resume_mid_epoch_with_every_option_is_bit_exact(tiny_file, tmp_path, monkeypatch):
  """Dropout masks, the schedule's position and AdamW's state all continue exactly."""
  config = tiny_config(tiny_file, epochs=2, **OPTIONS)
  train.train_and_evaluate(config, tmp_path / "full")
  monkeypatch.setattr(loop, "StopRequests", lambda: StopAfterPolls(30))  # epoch 1 has 45 steps
  with pytest.raises(SystemExit):
    train.train_and_evaluate(config, tmp_path / "resumed")
  monkeypatch.undo()
  assert [h["epoch"] for h in train.train_and_evaluate(config, tmp_path / "resumed")] == [1, 2]
  assert_same_run(tmp_path / "full", tmp_path / "resumed")


@pytest.mark.parametrize("top_k", [1, 3])
def test_fast_samplers_match_the_model_with_layers_and_embedding(top_k):
  """The staggered window sampler equals rerunning the model; stateful equals the model run
  over the whole growing text (no window limit)."""
  model = char_lstm(11, 16, num_layers=2, embed_dim=6)
  params = init_params(model, jax.random.PRNGKey(3), MAXLEN)
  params = jax.tree_util.tree_map(lambda x: x * 3.0, params)  # sharper, less tie-prone logits
  context = jax.random.randint(jax.random.PRNGKey(4), (2, MAXLEN), 0, 11)
  args = (model, params, context, jnp.array([1.0, 0.7]), jax.random.PRNGKey(5), 25, top_k)
  fast = generate.generate_window(*args)
  np.testing.assert_array_equal(fast, generate.generate_window_rerun(*args))
  stateful = np.asarray(generate.generate_stateful(*args))
  if top_k == 1:  # greedy: the next id is the argmax of the model on everything so far
    # One shape for every prefix (the model reads the first `lengths` ids): one compile.
    apply = jax.jit(lambda ids, lengths: model.apply({"params": params}, ids, lengths))
    text = np.zeros((2, MAXLEN + 25), np.int32)
    text[:, :MAXLEN] = np.asarray(context)
    for k in range(25):
      logits = apply(jnp.asarray(text), jnp.full(2, MAXLEN + k, jnp.int32))
      np.testing.assert_array_equal(stateful[:, k], np.argmax(logits, axis=1))
      text[:, MAXLEN + k] = stateful[:, k]


def test_patience_stops_early_and_keeps_the_best_checkpoint(tiny_file, tmp_path, capsys):
  # A learning rate this high makes validation loss stop improving within a few epochs.
  config = tiny_config(tiny_file, epochs=40, patience=2, learning_rate=0.05)
  history = train.train_and_evaluate(config, tmp_path / "run")
  losses = [h["val_loss"] for h in history]
  best = int(np.argmin(losses))
  assert len(history) == best + 3 < 40  # stopped after 2 epochs without a new best
  assert "early stopping: no better validation loss for 2 epochs" in capsys.readouterr().out
  sampler = sampler_lib.load_sampler(tmp_path / "run")
  assert sampler.meta["epoch"] == best + 1 and sampler.meta["val_loss"] == losses[best]
  assert train.train_and_evaluate(config, tmp_path / "run") == []
  assert "stopped early" in capsys.readouterr().out


def test_resume_with_a_different_optimizer_is_refused(tiny_file, tmp_path):
  train.train_and_evaluate(tiny_config(tiny_file, epochs=1), tmp_path / "run")
  with pytest.raises(UserError, match=r"optimizer 'rmsprop' \(checkpoint\) vs 'adamw' \(now\)"):
    train.train_and_evaluate(tiny_config(tiny_file, epochs=2, optimizer="adamw"), tmp_path / "run")
  assert not (tmp_path / "run" / "corrupt_checkpoints").exists()  # refused, nothing moved
  assert checkpoint.checkpoint_steps(tmp_path / "run") == [45]


def test_checkpoints_from_before_the_options_still_resume(tiny_file, tmp_path):
  old = checkpoint.read_meta(FORMAT1_RUN, 90)  # format 1, written before this change
  old["config"] = {k: v for k, v in old["config"].items()
                   if k not in ("num_layers", "embed_dim", "optimizer", "lr_schedule", "clip_norm")}
  meta = resume.run_metadata(tiny_config(tiny_file), _tiny_corpus(tiny_file))
  assert resume.check_resumable(old, meta, tmp_path) == ["--keep=3 (was 1)"]
  wider = {**meta, "spec": {**meta["spec"], "num_layers": 2}}
  with pytest.raises(UserError, match="num_layers 1 .checkpoint. vs 2"):
    resume.check_resumable(old, wider, tmp_path)


def test_the_shape_is_saved_once_and_format_2_checkpoints_still_compare(tiny_file, tmp_path):
  meta = resume.run_metadata(tiny_config(tiny_file, hidden=24), _tiny_corpus(tiny_file))
  assert "hidden" not in meta["config"] and meta["spec"]["hidden"] == 24  # one place
  assert resume.saved_config(meta)["hidden"] == 24
  # Format 2 saved the whole config, the shape included, beside the same spec.
  format2 = {**meta, "config": {**meta["config"], **ModelSpec(**meta["spec"]).options()}}
  assert resume.saved_config(format2) == resume.saved_config(meta)
  assert resume.check_resumable(format2, meta, tmp_path) == []
  with pytest.raises(UserError, match="hidden 24 .checkpoint. vs 32"):
    resume.check_resumable(format2, resume.run_metadata(
        tiny_config(tiny_file, hidden=32), _tiny_corpus(tiny_file)), tmp_path)


def _tiny_corpus(path):
  return data.build_corpus(path.read_text(), maxlen=MAXLEN, stride=2, val_fraction=0.1)


@pytest.mark.parametrize("overrides", [
    {"objective": "sideways"}, {"num_layers": 0}, {"dropout": 1.0}, {"clip_norm": -1.0},
    {"optimizer": "sgd"}, {"lr_schedule": "linear"}, {"lr_decay": 0.0}, {"patience": -1},
    {"embed_dim": -2}, {"patience": 2, "val_fraction": 0.0}])
def test_bad_option_values_are_refused(tiny_file, overrides):
  with pytest.raises(UserError, match="--"):
    tiny_config(tiny_file, **overrides)

