"""Model shape, initialisation, optimizer and the pure train/eval steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

from helpers import char_lstm, epoch_order, train_starts, val_starts
from jaxchar.core import data
from jaxchar.training import steps
from jaxchar.core.model import count_params, init_params

TINY = {"vocab_size": 11, "hidden": 16}
MAXLEN = 8
REFERENCE_TX = steps.make_optimizer(0.01)  # RMSprop(lr=0.01)


def p_steps(num_devices: int):
  """pmapped train/eval steps over the first `num_devices` CPU devices."""
  devices = jax.local_devices()[:num_devices]
  train = jax.pmap(functools.partial(steps.train_step, lr_factor=1.0), axis_name=steps.AXIS,
                   devices=devices)
  evaluate = jax.pmap(steps.eval_step, axis_name=steps.AXIS, devices=devices)
  return train, evaluate, devices


def replicate(tree, devices):
  return jax_utils.replicate(tree, devices)


def tiny_batch(key, batch_size: int, vocab_size: int = 11):
  k1, k2 = jax.random.split(key)
  return {"inputs": jax.random.randint(k1, (batch_size, MAXLEN), 0, vocab_size),
          "targets": jax.random.randint(k2, (batch_size,), 0, vocab_size)}


def shard(batch, num_devices):
  return jax.tree_util.tree_map(lambda x: x.reshape(num_devices, -1, *x.shape[1:]), batch)


def test_reference_model_has_107713_parameters():
  params = init_params(char_lstm(65, 128), jax.random.PRNGKey(0), 60)
  assert count_params(params) == 107_713
  assert params["lstm"]["ii"]["kernel"].shape == (65, 128)  # OptimizedLSTMCell's layout
  assert params["head"]["kernel"].shape == (128, 65)


def test_init_follows_keras():
  params = init_params(char_lstm(65, 128), jax.random.PRNGKey(0), 60)
  assert np.all(params["lstm"]["hf"]["bias"] == 1.0)
  for gate in ("hi", "hg", "ho"):
    assert np.all(params["lstm"][gate]["bias"] == 0.0)
  limit = np.sqrt(6.0 / (65 + 4 * 128))
  kernel = np.asarray(params["lstm"]["ii"]["kernel"])
  assert kernel.max() <= limit and kernel.min() >= -limit and kernel.std() > limit / 3
  recurrent = np.asarray(params["lstm"]["hi"]["kernel"])
  np.testing.assert_allclose(recurrent.T @ recurrent, np.eye(128), atol=1e-5)


def test_rmsprop_matches_keras_formula():
  tx = steps.make_optimizer(0.01)
  param = jnp.array([1.0, -2.0])
  grads = [jnp.array([0.5, -1e-4]), jnp.array([0.25, 3.0])]
  state = tx.init(param)
  v = np.zeros(2)
  expected = np.array([1.0, -2.0])
  for g in grads:
    updates, state = tx.update(g, state, param)
    param = param + updates
    v = 0.9 * v + 0.1 * np.asarray(g) ** 2
    expected = expected - 0.01 * np.asarray(g) / (np.sqrt(v) + 1e-7)
  np.testing.assert_allclose(np.asarray(param), expected, rtol=1e-6)


def test_one_step_changes_every_parameter_and_matches_the_golden_loss():
  model = char_lstm(**TINY)
  state = steps.create_train_state(jax.random.PRNGKey(0), model, MAXLEN, REFERENCE_TX)
  train, _, devices = p_steps(1)
  batch = tiny_batch(jax.random.PRNGKey(1), 32)
  new_state, metrics = train(replicate(state, devices), shard(batch, 1))
  loss = float(metrics["loss"][0])
  assert loss == pytest.approx(np.log(11), abs=0.15)  # near-uniform at init
  assert loss == pytest.approx(2.4192269, abs=1e-5)  # golden: pins init, model and loss
  before = jax.tree_util.tree_leaves_with_path(state.params)
  after = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: x[0], new_state.params))
  for (path, old), new in zip(before, after):
    assert np.all(np.asarray(old) != np.asarray(new)), f"{jax.tree_util.keystr(path)} unchanged"
  assert int(new_state.step[0]) == 1


def test_loss_falls_on_a_tiny_corpus(tiny_text):
  corpus = data.build_corpus(tiny_text, maxlen=MAXLEN, stride=1, val_fraction=0.2)
  model = char_lstm(corpus.vocab.size, 16)
  state = steps.create_train_state(jax.random.PRNGKey(0), model, MAXLEN, REFERENCE_TX)
  train, evaluate, devices = p_steps(1)
  ids = jnp.asarray(corpus.read(0, corpus.num_chars))

  def val_loss(p_state):
    sums = [evaluate(p_state, shard({**data.gather_windows(ids, jnp.asarray(s[0]), MAXLEN),
                                     "weights": jnp.asarray(w[0])}, 1))
            for s, w in data.eval_batches(val_starts(corpus), 64, 1)]
    return sum(float(x["loss_sum"][0]) for x in sums) / sum(float(x["count"][0]) for x in sums)

  p_state = replicate(state, devices)
  initial = val_loss(p_state)
  for epoch in range(1, 6):
    order = epoch_order(corpus.num_train_windows, 0, epoch)
    for batch in range(len(order) // 32):
      starts = train_starts(corpus)[order[batch * 32:(batch + 1) * 32]]
      p_state, _ = train(p_state, shard(data.gather_windows(ids, jnp.asarray(starts),
                                                            MAXLEN), 1))
  final = val_loss(p_state)
  assert initial > 2.0
  assert final < 0.5 * initial


@pytest.mark.parametrize("num_devices", [2, 4])
def test_pmapped_step_on_n_devices_equals_one_device(num_devices):
  """Same global batch: e.g. 4 x 8 examples vs 1 x 32. Tolerance 1e-5 relative: float32 summation
  order differs between a pmean of per-device means and one mean; over 3 steps it stays ~1e-7."""
  model = char_lstm(**TINY)
  state = steps.create_train_state(jax.random.PRNGKey(0), model, MAXLEN, REFERENCE_TX)
  results = {}
  for n in (1, num_devices):
    train, evaluate, devices = p_steps(n)
    p_state = replicate(state, devices)
    losses = []
    for i in range(3):
      batch = tiny_batch(jax.random.PRNGKey(10 + i), 32)
      p_state, metrics = train(p_state, shard(batch, n))
      losses.append(float(metrics["loss"][0]))
    eval_batch = {**tiny_batch(jax.random.PRNGKey(99), 32), "weights": jnp.ones(32)}
    eval_sums = evaluate(p_state, shard(eval_batch, n))
    results[n] = (losses, jax.tree_util.tree_map(lambda x: np.asarray(x[0]), p_state.params),
                  float(eval_sums["loss_sum"][0]), float(eval_sums["count"][0]))
  one, many = results[1], results[num_devices]
  np.testing.assert_allclose(many[0], one[0], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(one[1]), jax.tree_util.tree_leaves(many[1])):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
  assert many[3] == one[3] == 32
  np.testing.assert_allclose(many[2], one[2], rtol=1e-5)


def test_short_windows_equal_the_model_run_on_the_prefix():
  model = char_lstm(**TINY)
  params = init_params(model, jax.random.PRNGKey(0), MAXLEN)
  inputs = jax.random.randint(jax.random.PRNGKey(5), (3, MAXLEN), 0, 11)
  padded = model.apply({"params": params}, inputs, jnp.array([3, 8, 5]))
  for row, n in enumerate([3, 8, 5]):
    alone = model.apply({"params": params}, inputs[row:row + 1, :n])
    np.testing.assert_allclose(padded[row], alone[0], rtol=1e-5, atol=1e-6)
  full = model.apply({"params": params}, inputs)
  np.testing.assert_allclose(padded[1], full[1], rtol=1e-6, atol=1e-7)


def test_bfloat16_computes_in_bf16_but_keeps_float32_parameters():
  state32 = steps.create_train_state(jax.random.PRNGKey(0), char_lstm(**TINY), MAXLEN, REFERENCE_TX)
  state16 = steps.create_train_state(jax.random.PRNGKey(0),
                                     char_lstm(**TINY, dtype=jnp.bfloat16), MAXLEN, REFERENCE_TX)
  train, _, devices = p_steps(1)
  batch = shard(tiny_batch(jax.random.PRNGKey(1), 32), 1)
  new32, m32 = train(replicate(state32, devices), batch)
  new16, m16 = train(replicate(state16, devices), batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(new16.params))
  assert float(m16["loss"][0]) == pytest.approx(float(m32["loss"][0]), abs=0.02)
  assert float(m16["loss"][0]) != float(m32["loss"][0])  # really computed in bfloat16
