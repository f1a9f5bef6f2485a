"""Optimizer, train state and the pure train and eval steps, and the one place that wraps the
steps in `jax.pmap` over the axis named AXIS."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import jax_utils
from flax.training import train_state

from jaxchar.core import data
from jaxchar.training import distributed
from jaxchar.core.model import CharLSTM, init_params, over_stream_windows

AXIS = "batch"


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the base key for dropout (a function of the seed, so not saved)."""

  dropout_key: jax.Array


def learning_rate_schedule(kind: str, peak: float, *, warmup_steps: int = 0,
                           total_steps: int = 1, steps_per_epoch: int = 1,
                           decay_per_epoch: float = 1.0) -> float | optax.Schedule:
  """The learning rate: a float for the constant reference, else an optax schedule.

  cosine: linear warmup to `peak`, then cosine decay to 0 at `total_steps`; exponential:
  warmup, then times `decay_per_epoch` every epoch (continuously); constant with warmup ramps
  up and stays."""
  if kind == "constant" and not warmup_steps:
    return peak
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps,
                                              max(total_steps, warmup_steps + 1))
  decay = (optax.exponential_decay(peak, steps_per_epoch, decay_per_epoch)
           if kind == "exponential" else optax.constant_schedule(peak))
  if not warmup_steps:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup_steps), decay],
                              [warmup_steps])


def make_optimizer(learning_rate: float | optax.Schedule, name: str = "rmsprop",
                   clip_norm: float = 0.0, weight_decay: float = 1e-4
                   ) -> optax.GradientTransformation:
  """optax RMSprop behaving as Keras's RMSprop(lr, rho=0.9, epsilon=1e-7), or AdamW; with
  global-norm gradient clipping first when clip_norm > 0.

  Keras (2.x standalone and 3.x) divides by sqrt(v) + epsilon, with v starting at 0; optax's
  default puts epsilon inside the square root, so eps_in_sqrt=False is what matches.
  """
  if name == "adamw":
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)
  else:
    tx = optax.rmsprop(learning_rate, decay=0.9, eps=1e-7, initial_scale=0.0,
                       eps_in_sqrt=False)
  return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm > 0 else tx


def create_train_state(key: jax.Array, model: CharLSTM, maxlen: int,
                       tx: optax.GradientTransformation) -> TrainState:
  """A fresh, unreplicated train state, computed as one compiled program: a persistent
  compilation cache keeps it (run eagerly, its dozens of small ops each compiled at every start;
  the values are the same to the bit)."""
  def create(key: jax.Array) -> TrainState:
    params = init_params(model, key, maxlen)
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                             dropout_key=jax.random.fold_in(key, 1))
  return jax.jit(create)(key)


def train_state_template(key: jax.Array, model: CharLSTM, maxlen: int,
                         tx: optax.GradientTransformation) -> dict:
  """Host arrays shaped as a train state's saved part (what a restore fills in), computed
  from shapes alone (jax.eval_shape)."""
  shapes = jax.eval_shape(lambda k: saved_part(create_train_state(k, model, maxlen, tx)), key)
  return jax.tree_util.tree_map(lambda s: np.empty(s.shape, s.dtype), shapes)


def saved_part(state: TrainState) -> dict:
  """What a checkpoint holds of a train state (the dropout key is a function of the seed)."""
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def restored_train_state(key: jax.Array, model: CharLSTM, tx: optax.GradientTransformation,
                         saved: dict) -> TrainState:
  """The train state a checkpoint's saved part (saved_part) describes."""
  return TrainState(step=saved["step"], apply_fn=model.apply, params=saved["params"], tx=tx,
                    opt_state=saved["opt_state"], dropout_key=jax.random.fold_in(key, 1))


def replicate(tree, devices=None):
  """`tree` copied to every local device (or `devices`), sharded over AXIS as the pmapped steps
  return it: the first step's input then matches every later one's, so it compiles once."""
  return jax_utils.replicate(tree, devices, axis_name=AXIS)


def cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """Per-example (per-position) cross-entropy in nats."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def train_step(state: TrainState, batch: dict, lr_factor: jax.Array) -> tuple[TrainState, dict]:
  """One optimizer step on this device's share of the batch; gradients averaged over AXIS.

  targets [B] train on the character after each window (the reference); targets [B, T] on the
  character after every position of it. lr_factor scales the optimizer's update, through
  optax (--time_budget's schedule follows the clock; 1 otherwise, which changes nothing)."""
  every_position = batch["targets"].ndim == 2

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, batch["inputs"], train=True,
                            every_position=every_position, rngs={"dropout": _dropout_key(state)})
    return cross_entropy(logits, batch["targets"]).mean()

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return _apply(state, grads, lr_factor), {"loss": jax.lax.pmean(loss, AXIS)}


def stream_train_step(state: TrainState, batch: dict, carries: list, lr_factor: jax.Array
                      ) -> tuple[TrainState, list, dict]:
  """train_step on windows of streams (--carry_state): every layer's carry (c, h) [B, H] a
  row's last window ended with starts its next one (no gradient flows back into it); the
  carries after this window come back beside the new state."""

  def loss_fn(params):
    logits, after = state.apply_fn({"params": params}, batch["inputs"], carries, train=True,
                                   rngs={"dropout": _dropout_key(state)}, method="streamed")
    return cross_entropy(logits, batch["targets"]).mean(), after

  (loss, after), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  after = [(c.astype(jnp.float32), h.astype(jnp.float32)) for c, h in after]
  return _apply(state, grads, lr_factor), after, {"loss": jax.lax.pmean(loss, AXIS)}


def _dropout_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(state.dropout_key, state.step),
                            jax.lax.axis_index(AXIS))


def _apply(state: TrainState, grads, lr_factor: jax.Array) -> TrainState:
  """The optimizer's update for gradients averaged over AXIS, scaled by lr_factor."""
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  updates, _ = optax.scale(lr_factor).update(updates, optax.EmptyState())
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state)


def eval_step(state: TrainState, batch: dict) -> dict:
  """Summed cross-entropy and count of weighted windows, summed over AXIS."""
  logits = state.apply_fn({"params": state.params}, batch["inputs"])
  losses = cross_entropy(logits, batch["targets"]) * batch["weights"]
  return jax.lax.psum({"loss_sum": losses.sum(), "count": batch["weights"].sum()}, AXIS)


def stream_eval_step(state: TrainState, batch: dict, *, model: CharLSTM, maxlen: int) -> dict:
  """eval_step on validation streams: rows of inputs [B, S] read window after window of
  `maxlen` from zero carries, summing the cross-entropy of the targets `batch["mask"]` marks."""
  def window_sums(logits, targets, mask):
    return (cross_entropy(logits, targets) * mask).sum(), mask.sum()

  sums, counts = over_stream_windows(model, state.params, batch["inputs"], maxlen, window_sums,
                                     batch["targets"], batch["mask"])
  return jax.lax.psum({"loss_sum": sums.sum(), "count": counts.sum()}, AXIS)


def optimizer_from_config(config, steps_per_epoch: int
                          ) -> tuple[optax.GradientTransformation, float | optax.Schedule]:
  """The optimizer a Config describes, and its learning rate (a float or a schedule).

  With --time_budget, cosine decay follows the clock (the loop's lr_factor): the optimizer keeps
  the warmup and the peak, and its step count, as with a cosine schedule."""
  if config.time_budget and config.lr_schedule == "cosine":
    schedule = learning_rate_schedule("constant", config.learning_rate,
                                      warmup_steps=config.warmup_steps)
    schedule = schedule if callable(schedule) else optax.constant_schedule(schedule)
    return (make_optimizer(schedule, config.optimizer, config.clip_norm, config.weight_decay),
            schedule)
  schedule = learning_rate_schedule(
      config.lr_schedule, config.learning_rate, warmup_steps=config.warmup_steps,
      total_steps=steps_per_epoch * config.epochs, steps_per_epoch=steps_per_epoch,
      decay_per_epoch=config.lr_decay)
  return make_optimizer(schedule, config.optimizer, config.clip_norm, config.weight_decay), schedule


def _train_on_starts(state, ids, starts, lr_factor, *, maxlen: int, every_position: bool):
  """`ids`: this device's windows end to end (data.device_batch), `starts`: where each begins."""
  return train_step(state, data.gather_windows(ids, starts, maxlen, every_position), lr_factor)


def _eval_on_starts(state, ids, starts, weights, *, maxlen: int):
  return eval_step(state, {**data.gather_windows(ids, starts, maxlen), "weights": weights})


def _stream_train_on_starts(state, ids, starts, carries, lr_factor, *, maxlen: int):
  return stream_train_step(state, data.gather_windows(ids, starts, maxlen, True), carries,
                           lr_factor)


def _stream_eval_on_starts(state, ids, starts, low, high, weights, *, model: CharLSTM,
                           maxlen: int, width: int):
  """`low`/`high`: each row's first and past-last target scored, as offsets in its targets."""
  batch = data.gather_windows(ids, starts, width, True)
  offsets = jnp.arange(width)[None, :]
  mask = (offsets >= low[:, None]) & (offsets < high[:, None]) & (weights[:, None] > 0)
  return stream_eval_step(state, {**batch, "mask": mask.astype(jnp.float32)}, model=model,
                          maxlen=maxlen)


def pmapped_stream_steps(model: CharLSTM, maxlen: int, width: int, devices=None):
  """The --carry_state train and eval steps, pmapped as pmapped_steps' (`width`: the
  validation rows' input width)."""
  p_train_step = jax.pmap(functools.partial(_stream_train_on_starts, maxlen=maxlen),
                          axis_name=AXIS, donate_argnums=(0, 3), devices=devices,
                          in_axes=(0, 0, 0, 0, None))
  p_eval_step = jax.pmap(functools.partial(_stream_eval_on_starts, model=model, maxlen=maxlen,
                                           width=width), axis_name=AXIS, devices=devices)
  return p_train_step, p_eval_step


def pmapped_steps(maxlen: int, every_position: bool = False, devices=None):
  """The train and eval steps, pmapped over all local devices, or `devices` (the compile
  check's TPU topology): the one place they are wrapped. The train step's last argument is the
  learning-rate factor, the same on every device."""
  p_train_step = jax.pmap(functools.partial(_train_on_starts, maxlen=maxlen,
                                            every_position=every_position),
                          axis_name=AXIS, donate_argnums=(0,), devices=devices,
                          in_axes=(0, 0, 0, None))
  p_eval_step = jax.pmap(functools.partial(_eval_on_starts, maxlen=maxlen), axis_name=AXIS,
                         devices=devices)
  return p_train_step, p_eval_step


def first_replica(tree):
  """Host (numpy) copies of device 0's replica of a pmapped output: each array's own shard,
  read without an indexing computation (JAX's pmap migration guide: `x[0]` is one)."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x.addressable_data(0)).reshape(x.shape[1:]), tree)


def zero_carries(model: CharLSTM, rows: int) -> list:
  """Every layer's zero carry (c, h), [rows, hidden] each, on the host: where streams start."""
  zeros = np.zeros((rows, model.hidden), np.float32)
  return [(zeros, zeros)] * model.num_layers


def rows_to_devices(tree):
  """Per-row host arrays [global rows, ...] (all processes' rows) as the pmapped steps take
  them: this process's rows, split over its devices in order."""
  def put(rows: np.ndarray) -> np.ndarray:
    by_device = rows.reshape(jax.device_count(), -1, *rows.shape[1:])
    return distributed.process_slice(by_device)
  return _spread(jax.tree_util.tree_map(put, tree))


_spread = jax.pmap(lambda tree: tree, axis_name=AXIS)  # each device's slice onto it


def rows_from_devices(tree):
  """rows_to_devices undone: every row of every process, on the host (a collective in
  multi-process runs: all processes call it)."""
  def get(x) -> np.ndarray:
    local = np.asarray(x)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      local = np.asarray(multihost_utils.process_allgather(local))
    return local.reshape(-1, *local.shape[-1:])
  return jax.tree_util.tree_map(get, tree)

