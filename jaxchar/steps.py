"""Pure train and eval steps; the loop wraps them in `jax.pmap` over the axis named AXIS."""

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxchar.model import CharLSTM, init_params

AXIS = "batch"


class TrainState(train_state.TrainState):
  """Flax's TrainState (step, params, opt_state, apply_fn, tx)."""


def make_optimizer(learning_rate: float) -> optax.GradientTransformation:
  """optax RMSprop behaving as Keras's RMSprop(lr, rho=0.9, epsilon=1e-7).

  Keras (2.x standalone and 3.x) divides by sqrt(v) + epsilon, with v starting at 0; optax's
  default puts epsilon inside the square root, so eps_in_sqrt=False is what matches.
  """
  return optax.rmsprop(learning_rate, decay=0.9, eps=1e-7, initial_scale=0.0, eps_in_sqrt=False)


def create_train_state(key: jax.Array, model: CharLSTM, maxlen: int,
                       learning_rate: float) -> TrainState:
  """A fresh, unreplicated train state."""
  params = init_params(model, key, maxlen)
  return TrainState.create(apply_fn=model.apply, params=params,
                           tx=make_optimizer(learning_rate))


def cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """Per-example cross-entropy in nats."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One RMSprop step on this device's share of the batch; gradients averaged over AXIS."""

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, batch["inputs"])
    return cross_entropy(logits, batch["targets"]).mean()

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  state = state.apply_gradients(grads=grads)
  return state, {"loss": jax.lax.pmean(loss, AXIS)}


def eval_step(state: TrainState, batch: dict) -> dict:
  """Summed cross-entropy and count of weighted windows, summed over AXIS."""
  logits = state.apply_fn({"params": state.params}, batch["inputs"])
  losses = cross_entropy(logits, batch["targets"]) * batch["weights"]
  return jax.lax.psum({"loss_sum": losses.sum(), "count": batch["weights"].sum()}, AXIS)
