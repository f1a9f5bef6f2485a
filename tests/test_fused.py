"""The fused LSTM (--lstm_impl=fused) against the Flax reference (nn.RNN(OptimizedLSTMCell)):
same parameters, same losses and gradients, one-hot inputs by lookup at any vocabulary size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import char_lstm
from jaxchar.errors import UserError
from jaxchar.training.config import Config
from jaxchar.training import steps
from jaxchar.core.lstm import lstm_recurrence
from jaxchar.core.model import CharLSTM, init_params

MAXLEN = 8


def models(**kwargs) -> tuple[CharLSTM, CharLSTM]:
  return (char_lstm(lstm_impl="flax", **kwargs), char_lstm(lstm_impl="fused", **kwargs))


def batch(vocab: int, batch_size: int = 12, every: bool = False, seed: int = 1) -> dict:
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  inputs = jax.random.randint(k1, (batch_size, MAXLEN), 0, vocab)
  shape = (batch_size, MAXLEN) if every else (batch_size,)
  return {"inputs": inputs, "targets": jax.random.randint(k2, shape, 0, vocab)}


def loss_and_grads(model: CharLSTM, params, b: dict, train: bool = True):
  """Loss and gradients through the training path (train=True: dropout, if any, and the fused
  layer's custom VJP)."""
  def loss_fn(p):
    logits = model.apply({"params": p}, b["inputs"], train=train,
                         every_position=b["targets"].ndim == 2,
                         rngs={"dropout": jax.random.PRNGKey(7)})
    return steps.cross_entropy(logits, b["targets"]).mean()
  return jax.value_and_grad(loss_fn)(params)


@pytest.mark.parametrize("kwargs", [dict(vocab_size=11, hidden=16),
                                    dict(vocab_size=11, hidden=16, num_layers=2, embed_dim=6)])
def test_same_parameter_tree_and_initial_values(kwargs):
  flax_model, fused_model = models(**kwargs)
  a = init_params(flax_model, jax.random.PRNGKey(0), MAXLEN)
  b = init_params(fused_model, jax.random.PRNGKey(0), MAXLEN)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


CASES = {  # model, and whether the loss is on every position
    "reference": (dict(vocab_size=11, hidden=16), False),
    "every position": (dict(vocab_size=11, hidden=16), True),
    "2 layers, embedding, every position": (
        dict(vocab_size=11, hidden=16, num_layers=2, embed_dim=6), True),
    "2 layers one-hot": (dict(vocab_size=11, hidden=16, num_layers=2), False),
    "2 layers one-hot, dropout (the same draw in both)": (
        dict(vocab_size=11, hidden=16, num_layers=2, dropout=0.3), False),
    "vocabulary above 256": (dict(vocab_size=300, hidden=16), False),
    "vocabulary above 256, every position": (dict(vocab_size=300, hidden=16), True),
}


@pytest.mark.parametrize("name", CASES)
def test_loss_and_every_gradient_equal_the_flax_reference(name):
  kwargs, every = CASES[name]
  flax_model, fused_model = models(**kwargs)
  params = init_params(flax_model, jax.random.PRNGKey(0), MAXLEN)
  b = batch(kwargs["vocab_size"], every=every)
  loss_ref, grads_ref = loss_and_grads(flax_model, params, b)
  loss, grads = loss_and_grads(fused_model, params, b)
  np.testing.assert_allclose(  # and the inference path, as validation and sampling run it
      fused_model.apply({"params": params}, b["inputs"], every_position=every),
      flax_model.apply({"params": params}, b["inputs"], every_position=every), atol=2e-6)
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
  flat_ref = jax.tree_util.tree_leaves_with_path(grads_ref)
  for (path, g_ref), g in zip(flat_ref, jax.tree_util.tree_leaves(grads)):
    assert np.abs(g_ref).max() > 0, jax.tree_util.keystr(path)  # every parameter is trained
    np.testing.assert_allclose(g, g_ref, atol=2e-6, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_dropout_is_the_same_draw_in_both():
  flax_model, fused_model = models(vocab_size=11, hidden=16, num_layers=2, dropout=0.5)
  params = init_params(flax_model, jax.random.PRNGKey(0), MAXLEN)
  b = batch(11)
  with_dropout = loss_and_grads(fused_model, params, b)[0]
  np.testing.assert_allclose(with_dropout, loss_and_grads(flax_model, params, b)[0], rtol=1e-6)
  assert abs(float(with_dropout) - float(loss_and_grads(fused_model, params, b, False)[0])) > 1e-4


def test_bfloat16_compute_matches_float32_reference_loosely():
  flax_model, _ = models(vocab_size=11, hidden=16)
  fused16 = char_lstm(11, 16, dtype=jnp.bfloat16, lstm_impl="fused")
  flax16 = char_lstm(11, 16, dtype=jnp.bfloat16, lstm_impl="flax")
  params = init_params(flax_model, jax.random.PRNGKey(0), MAXLEN)
  b = batch(11, every=True)
  loss32, grads32 = loss_and_grads(flax_model, params, b)
  for model in (fused16, flax16):
    loss, grads = loss_and_grads(model, params, b)
    np.testing.assert_allclose(loss, loss32, rtol=2e-2)
    for g, g32 in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads32)):
      assert g.dtype == jnp.float32  # parameters (and their gradients) stay float32
      np.testing.assert_allclose(g, g32, atol=0.1 * float(np.abs(g32).max()) + 1e-4)


def test_short_windows_match_the_reference_lengths():
  flax_model, fused_model = models(vocab_size=11, hidden=16, num_layers=2)
  params = init_params(flax_model, jax.random.PRNGKey(0), MAXLEN)
  inputs = batch(11, batch_size=4)["inputs"]
  lengths = jnp.array([1, 3, 8, 5])
  np.testing.assert_allclose(fused_model.apply({"params": params}, inputs, lengths),
                             flax_model.apply({"params": params}, inputs, lengths), atol=1e-6)
  ref, _ = flax_model.apply({"params": params}, inputs, lengths, method=CharLSTM.encode)
  ours, _ = fused_model.apply({"params": params}, inputs, lengths, method=CharLSTM.encode)
  for x, y in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(x, y, atol=1e-6)


def test_recurrence_vjp_matches_autodiff_of_its_forward():
  """The hand-written backward (weight gradients after the loop) against JAX's own autodiff of
  a plain scan, for every input including the initial carry."""
  key = jax.random.PRNGKey(0)
  t, b, h = 5, 3, 4
  x_proj, bias, w_rec, c0, h0 = (jax.random.normal(k, s) for k, s in zip(
      jax.random.split(key, 5), [(t, b, 4 * h), (4 * h,), (h, 4 * h), (b, h), (b, h)]))

  def plain(x_proj, bias, w_rec, c0, h0):
    def step(carry, xp):
      c, hh = carry
      i, f, g, o = jnp.split(xp + bias + hh @ w_rec, 4, -1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      hh = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (c, hh), hh
    (c, _), hs = jax.lax.scan(step, (c0, h0), x_proj)
    return hs, c

  weights = jax.random.normal(jax.random.PRNGKey(1), (t, b, h))

  def objective(fn):
    return lambda *args: jnp.sum(fn(*args)[0] * weights) + jnp.sum(fn(*args)[1] ** 2)
  ours = jax.grad(objective(lstm_recurrence), argnums=range(5))(x_proj, bias, w_rec, c0, h0)
  ref = jax.grad(objective(plain), argnums=range(5))(x_proj, bias, w_rec, c0, h0)
  for name, g, r in zip(("x_proj", "bias", "w_rec", "c0", "h0"), ours, ref):
    np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5, err_msg=name)


def test_weight_drop_is_the_model_with_a_masked_recurrent_kernel_and_training_only():
  """--weight_drop: the loss and gradients equal those of the plain model whose recurrent
  kernels are masked and rescaled by 1/(1-p); inference is unchanged."""
  rate, kwargs = 0.5, dict(vocab_size=11, hidden=16, num_layers=2)
  dropped, plain = char_lstm(weight_drop=rate, **kwargs), char_lstm(**kwargs)
  params = init_params(plain, jax.random.PRNGKey(0), MAXLEN)
  b = batch(11, every=True)
  loss, grads = loss_and_grads(dropped, params, b)
  masked = jax.tree_util.tree_map(lambda x: x, params)
  masks = {}
  for layer in ("lstm", "lstm2"):
    for gate in "ifgo":
      kernel_grad = grads[layer][f"h{gate}"]["kernel"]
      masks[layer, gate] = (kernel_grad != 0).astype(np.float32)  # dropped weights: no gradient
      masked[layer][f"h{gate}"]["kernel"] = (params[layer][f"h{gate}"]["kernel"]
                                             * masks[layer, gate] / (1 - rate))
  kept = np.mean([np.mean(m) for m in masks.values()])
  assert 0.4 < kept < 0.6  # about 1 - rate of the recurrent weights kept
  plain_loss, plain_grads = loss_and_grads(plain, masked, b)
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
  for layer in ("lstm", "lstm2"):
    for gate in "ifgo":
      np.testing.assert_allclose(
          grads[layer][f"h{gate}"]["kernel"],
          plain_grads[layer][f"h{gate}"]["kernel"] * masks[layer, gate] / (1 - rate),
          rtol=1e-4, atol=1e-7)
      np.testing.assert_allclose(grads[layer][f"i{gate}"]["kernel"],
                                 plain_grads[layer][f"i{gate}"]["kernel"], rtol=1e-4, atol=1e-7)
  inference = [m.apply({"params": params}, b["inputs"]) for m in (dropped, plain)]
  np.testing.assert_array_equal(*inference)
  with pytest.raises(UserError, match="needs --lstm_impl=fused"):
    Config(weight_drop=rate, lstm_impl="flax").validate()
