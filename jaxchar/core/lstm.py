"""The fused LSTM layer: the recurrence as cuDNN computes it, with the same parameters as Flax's
`nn.OptimizedLSTMCell`.

Inside the time loop only `h @ W_rec` and the gate math run. The input projection of every
position is computed before the loop (a gather of kernel rows for one-hot inputs, so its cost
does not grow with the vocabulary; one matmul otherwise), and the weight gradients after the
backward loop, as one large matmul over all batch x time positions (`lstm_recurrence`'s custom
VJP) instead of one small matmul per time step. Nothing here is CPU-specific.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.recurrent import DenseParams

Array = jnp.ndarray
Carry = tuple[Array, Array]  # an LSTM layer's (c, h)
GATES = ("i", "f", "g", "o")  # OptimizedLSTMCell's gate order


def _gate_affine(hidden: int, dtype) -> tuple[Array, Array]:
  """(scale, shift) with sigmoid(z) = tanh(z/2)/2 + 1/2 on the i, f, o gates, tanh on g."""
  half, one = jnp.full((hidden,), 0.5, dtype), jnp.ones((hidden,), dtype)
  return (jnp.concatenate([half, half, one, half]),
          jnp.concatenate([half, half, 1 - one, half]))


def _activations(z: Array, hidden: int) -> Array:
  """The four gates' activations [.., 4H] from pre-activations z [.., 4H].

  One tanh over all 4H columns: XLA CPU runs it several times faster than a sigmoid or tanh
  on each gate's slice (measured 1.4 ms against 8.3 ms for the gate math of 60 steps)."""
  scale, shift = _gate_affine(hidden, z.dtype)
  return jnp.tanh(z * scale) * scale + shift


def lstm_cell(c: Array, h: Array, z_in: Array, w_rec: Array) -> tuple[Array, Array, Array]:
  """OptimizedLSTMCell's update given z_in = x @ W_in + b (one row per carry): the new (c, h)
  and the gate activations [..., 4H]. Training, validation and sampling all step with it."""
  hidden = w_rec.shape[0]
  act = _activations(z_in + h.astype(w_rec.dtype) @ w_rec, hidden)
  i, f, g, o = (act[..., k * hidden:(k + 1) * hidden] for k in range(4))
  c = f * c + i * g
  return c, o * jnp.tanh(c), act


def _forward(x_proj: Array, bias: Array, w_rec: Array, c0: Array, h0: Array,
             keep_residuals: bool):
  """The training loop over time. x_proj [T, B, 4H]: the input projection without bias.
  Returns the final carry, hidden states [T, B, H] and, with keep_residuals, cell states
  [T, B, H] and the gate activations [T, B, 4H] (written over x_proj's buffer: no new
  [T, B, 4H] allocation)."""
  if not keep_residuals:
    def step(carry, xp):
      c, h, _ = lstm_cell(*carry, xp + bias, w_rec)
      return (c, h), h
    carry, hs = jax.lax.scan(step, (c0, h0), x_proj)
    return carry, hs, None

  def step_keeping(carry, t):
    c, h, buffer = carry
    c, h, act = lstm_cell(c, h, buffer[t] + bias, w_rec)
    return (c, h, jax.lax.dynamic_update_index_in_dim(buffer, act, t, 0)), (h, c)

  (c, h, acts), stacked = jax.lax.scan(step_keeping, (c0, h0, x_proj),
                                       jnp.arange(x_proj.shape[0]))
  return (c, h), stacked, acts


@jax.custom_vjp
def lstm_recurrence(x_proj: Array, bias: Array, w_rec: Array, c0: Array,
                    h0: Array) -> tuple[Array, Array]:
  """Hidden states [T, B, H] and the final cell state [B, H] of one LSTM layer.

  x_proj: [T, B, 4H], the input projection x @ W_in of every position (time-major), without
  the bias [4H]; w_rec: [H, 4H]; c0, h0: [B, H] initial carry."""
  (c, _), hs, _ = _forward(x_proj, bias, w_rec, c0, h0, keep_residuals=False)
  return hs, c


def _recurrence_fwd(x_proj, bias, w_rec, c0, h0):
  (c, _), (hs, cs), acts = _forward(x_proj, bias, w_rec, c0, h0, keep_residuals=True)
  # The local derivatives the backward loop needs, computed here for all steps at once as
  # whole-width arrays (XLA CPU is slow on elementwise code that concatenates gate slices).
  hidden = w_rec.shape[0]
  scale, shift = _gate_affine(hidden, acts.dtype)
  t = (acts - shift) / scale  # tanh of the scaled pre-activations
  c_prev = jnp.concatenate([c0[None], cs[:-1]])
  tanh_c = jnp.tanh(cs)
  # dz = [dc, dc, dc, dh] * dz_factor, per gate (i, f, g, o): dc*g*i', dc*c_prev*f', dc*i*g',
  # dh*tanh(c)*o', with each gate's derivative scale^2 * (1 - t^2).
  partner = jnp.concatenate([acts[..., 2 * hidden:3 * hidden], c_prev, acts[..., :hidden], tanh_c],
                            -1)
  dz_factor = partner * (scale * scale * (1 - t * t))
  o = acts[..., 3 * hidden:]
  f = acts[..., hidden:2 * hidden]
  dc_by_dh = o * (1 - tanh_c * tanh_c)  # dc_t += dh_t * this
  h_prev = jnp.concatenate([h0[None], hs[:-1]])
  return (hs, c), (h_prev, f, dc_by_dh, dz_factor, w_rec)


def _recurrence_bwd(residuals, cotangents):
  h_prev, f, dc_by_dh, dz_factor, w_rec = residuals
  d_hs, d_c_last = cotangents
  hidden = w_rec.shape[0]
  w_rec_t = w_rec.T
  is_output_gate = (jnp.arange(4) == 3)[:, None]

  def step(carry, t):
    dh_next, dc_next, buffer = carry
    dh = d_hs[t] + dh_next
    dc = dc_next + dh * dc_by_dh[t]
    # [dc, dc, dc, dh] without a concatenate, as one [B, 4, H] select.
    by_gate = jnp.where(is_output_gate, dh[:, None, :], dc[:, None, :]).reshape(dh.shape[0], -1)
    dz = by_gate * buffer[t]
    buffer = jax.lax.dynamic_update_index_in_dim(buffer, dz, t, 0)  # dz over its own factor
    return ((dz.astype(w_rec.dtype) @ w_rec_t).astype(dh.dtype), dc * f[t], buffer), None

  (dh0, dc0, dz), _ = jax.lax.scan(step, (jnp.zeros_like(h_prev[0]), d_c_last, dz_factor),
                                   jnp.arange(dz_factor.shape[0]), reverse=True)
  # All time steps' weight gradients as one reduction over T*B rows each.
  dz = dz.astype(w_rec.dtype)  # the compute dtype, as x_proj's
  d_w_rec = jnp.dot(h_prev.reshape(-1, hidden).astype(w_rec.dtype).T, dz.reshape(-1, 4 * hidden),
                    preferred_element_type=jnp.float32)
  d_bias = dz.sum((0, 1), dtype=jnp.float32)
  return dz, d_bias.astype(w_rec.dtype), d_w_rec.astype(w_rec.dtype), dc0, dh0


lstm_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _infer(xs: Array, project: Callable[[Array], Array], bias: Array, w_rec: Array,
           lengths: Array | None, carry: Carry) -> tuple[Carry, Array]:
  """The inference loop over xs [T, B, ...]: each step's input projection `project(x_t)` is
  made inside the loop, so no [T, B, 4H] array exists (validation batches are large). With
  `lengths` [B], a row's carry stops changing after its last real position (left-aligned
  windows, as nn.RNN's seq_lengths). `carry`: the (c, h) [B, H] it starts from."""

  def step(carry, inputs):
    x, t = inputs
    c, h, _ = lstm_cell(*carry, project(x) + bias, w_rec)
    if lengths is not None:
      live = (t < lengths)[:, None]
      c, h = jnp.where(live, c, carry[0]), jnp.where(live, h, carry[1])
    return (c, h), h

  return jax.lax.scan(step, carry, (xs, jnp.arange(xs.shape[0])))


class FusedLSTM(nn.Module):
  """One LSTM layer over whole windows; parameters named and initialised as
  nn.OptimizedLSTMCell's (ii..io input kernels, hi..ho recurrent kernels with biases)."""

  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  recurrent_kernel_init: Callable = nn.initializers.orthogonal()
  dtype: jnp.dtype = jnp.float32
  weight_drop: float = 0.0  # DropConnect on the recurrent kernel, in training only

  @nn.compact
  def __call__(self, inputs: Array, lengths: Array | None = None, vocab_size: int | None = None,
               train: bool = False, initial_carry: Carry | None = None) -> tuple[Carry, Array]:
    """inputs: int ids [B, T] (one-hot inputs over `vocab_size` symbols) or floats [B, T, E].
    Returns the final carry (c, h) and the outputs [B, T, H].

    train: the projection of all positions before the loop and the custom VJP (memory
    O(T x B x 4H)), and weight drop (one mask over the recurrent kernel for the whole batch
    and window, as AWD-LSTM's: it needs a "dropout" rng); otherwise the inference loop
    (`lengths` is for inference only). `initial_carry`: the (c, h) [B, H] it starts from
    (zeros without); no gradient flows into it (truncated backpropagation through time)."""
    one_hot = vocab_size is not None
    w_in, w_rec, bias = self.kernels(vocab_size if one_hot else inputs.shape[-1])
    w_in, w_rec, bias = ([w.astype(self.dtype) for w in w_in], w_rec.astype(self.dtype),
                         bias.astype(self.dtype))
    xs = inputs.T.astype(jnp.uint32) if one_hot else inputs.astype(self.dtype).transpose(1, 0, 2)
    if initial_carry is None:
      zeros = jnp.zeros((inputs.shape[0], self.features), jnp.float32)
      initial_carry = (zeros, zeros)
    c0, h0 = jax.lax.stop_gradient(initial_carry)
    if not train or lengths is not None:
      table = jnp.concatenate(w_in, -1)
      project = ((lambda ids: table.at[ids].get(mode="promise_in_bounds")) if one_hot
                 else (lambda x: x @ table))
      carry, hs = _infer(xs, project, bias, w_rec, lengths, (c0, h0))
      return carry, hs.transpose(1, 0, 2)
    if self.weight_drop:  # outside the custom VJP: autodiff carries the mask to w_rec's gradient
      w_rec = nn.Dropout(self.weight_drop, name="weight_drop")(w_rec, deterministic=False)
    if one_hot:  # one_hot(x) @ W_in is row x of W_in: gather the rows, time-major
      # Per gate kernel: gathering from a concatenated [V, 4H] kernel would copy it (and
      # slice its gradient) every step, which costs more than the gather at large V.
      x_proj = jnp.concatenate([w.at[xs].get(mode="promise_in_bounds") for w in w_in], -1)
    else:
      x_proj = xs @ jnp.concatenate(w_in, -1)
    hs, c = lstm_recurrence(x_proj, bias, w_rec, c0, h0)
    return (c, hs[-1]), hs.transpose(1, 0, 2)

  def kernels(self, in_features: int) -> tuple[list[Array], Array, Array]:
    """Input kernels [in, H] per gate, recurrent kernel [H, 4H] and bias [4H], gates i, f, g,
    o."""
    w_in, w_rec, bias = [], [], []
    for gate in GATES:  # created in OptimizedLSTMCell's order and with its names
      w_in.append(DenseParams(self.features, use_bias=False, kernel_init=self.kernel_init,
                              name=f"i{gate}")(jax.ShapeDtypeStruct((in_features,), jnp.float32))[0])
      kernel, b = DenseParams(self.features, use_bias=True,
                              kernel_init=self.recurrent_kernel_init, name=f"h{gate}")(
                                  jax.ShapeDtypeStruct((self.features,), jnp.float32))
      w_rec.append(kernel)
      bias.append(b)
    return w_in, jnp.concatenate(w_rec, -1), jnp.concatenate(bias, -1)
