"""The jitted sampler, against fake deterministic models whose next-character law is known.

The fakes drive generate_window_rerun (any model); test_sample_cli checks that the fast
generate_window used for CharLSTM gives the same characters."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxchar.sampling import generate

VOCAB = 5
MAXLEN = 4


@dataclasses.dataclass(frozen=True)
class LastCharModel:
  """Logits = params['table'][last id of the window]."""

  def apply(self, variables, inputs, lengths):
    return variables["params"]["table"][inputs[jnp.arange(inputs.shape[0]), lengths - 1]]


@dataclasses.dataclass(frozen=True)
class WindowSumModel:
  """Puts (almost) all mass on (sum of the window) mod VOCAB: checks the window slides."""

  def apply(self, variables, inputs, lengths):
    valid = jnp.arange(inputs.shape[1])[None, :] < lengths[:, None]
    return 50.0 * jax.nn.one_hot(jnp.where(valid, inputs, 0).sum(axis=1) % VOCAB, VOCAB)


def table(seed: int = 0) -> jnp.ndarray:
  return jax.random.normal(jax.random.PRNGKey(seed), (VOCAB, VOCAB)) * 2.0


def test_tiny_temperature_returns_the_argmax_chain():
  params = {"table": table()}
  context = jnp.array([[0, 1, 2, 3], [3, 3, 3, 1]], jnp.int32)
  out = generate.generate_window_rerun(LastCharModel(), params, context, jnp.array([1e-4, 1e-4]),
                               jax.random.PRNGKey(0), 30)
  argmax_of = np.argmax(np.asarray(params["table"]), axis=1)
  for row in range(2):
    last, expected = int(context[row, -1]), []
    for _ in range(30):
      last = int(argmax_of[last])
      expected.append(last)
    assert np.asarray(out[row]).tolist() == expected


def test_top_k_1_is_argmax_at_temperature_1():
  params = {"table": table(3)}
  context = jnp.zeros((3, MAXLEN), jnp.int32)
  greedy = generate.generate_window_rerun(LastCharModel(), params, context, jnp.full(3, 1e-4),
                                  jax.random.PRNGKey(1), 20)
  top1 = generate.generate_window_rerun(LastCharModel(), params, context, jnp.ones(3),
                                jax.random.PRNGKey(2), 20, top_k=1)
  assert np.array_equal(np.asarray(greedy), np.asarray(top1))


def test_frequencies_follow_the_tempered_distribution():
  """Constant logits, 64 rows x 500 characters = 32,000 draws per temperature; a 4.5-sigma
  bound per character (binomial standard error), fixed seed."""
  logits = jnp.log(jnp.array([0.5, 0.25, 0.15, 0.07, 0.03]))
  params = {"table": jnp.broadcast_to(logits, (VOCAB, VOCAB))}
  rows, length = 64, 500
  for temperature in (1.0, 2.0):
    out = generate.generate_window_rerun(LastCharModel(), params, jnp.zeros((rows, MAXLEN), jnp.int32),
                                 jnp.full(rows, temperature), jax.random.PRNGKey(7), length)
    freq = np.bincount(np.asarray(out).reshape(-1), minlength=VOCAB) / (rows * length)
    expected = np.asarray(jax.nn.softmax(logits / temperature))
    bound = 4.5 * np.sqrt(expected * (1 - expected) / (rows * length))
    assert np.all(np.abs(freq - expected) < bound), (temperature, freq, expected)


def test_each_row_uses_its_own_temperature():
  logits = jnp.log(jnp.array([0.6, 0.1, 0.1, 0.1, 0.1]))
  params = {"table": jnp.broadcast_to(logits, (VOCAB, VOCAB))}
  out = np.asarray(generate.generate_window_rerun(
      LastCharModel(), params, jnp.zeros((2, MAXLEN), jnp.int32), jnp.array([1e-3, 5.0]),
      jax.random.PRNGKey(0), 400))
  assert np.all(out[0] == 0)
  assert 0.15 < np.mean(out[1] == 0) < 0.35  # T=5 flattens 0.6 towards 0.2


def test_window_slides_over_generated_characters():
  context = jnp.array([[1, 2, 0, 4]], jnp.int32)
  out = generate.generate_window_rerun(WindowSumModel(), {}, context, jnp.ones(1),
                               jax.random.PRNGKey(0), 12)
  window, expected = [1, 2, 0, 4], []
  for _ in range(12):
    nxt = sum(window) % VOCAB
    expected.append(nxt)
    window = window[1:] + [nxt]
  assert np.asarray(out[0]).tolist() == expected


def test_short_context_grows_then_slides():
  context = jnp.array([[3, 1, 0, 0]], jnp.int32)  # only the first 2 are the prime
  out = generate.generate_window_rerun(WindowSumModel(), {}, context, jnp.ones(1),
                                 jax.random.PRNGKey(0), 10, context_len=2)
  window, expected = [3, 1], []
  for _ in range(10):
    nxt = sum(window) % VOCAB
    expected.append(nxt)
    window = (window + [nxt])[-MAXLEN:]
  assert np.asarray(out[0]).tolist() == expected
