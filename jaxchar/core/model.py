"""The model: stacked LSTM layers over the window, then Dense logits.

Two implementations of the same layers, with the same parameters: "flax" scans Flax's
`nn.OptimizedLSTMCell` over one-hot inputs (the reference), "fused" is `jaxchar.lstm.FusedLSTM`
(input rows looked up, weight gradients as one matmul after the time loop).

The reference is one layer on one-hot inputs. Initialisation follows Keras's LSTM/Dense defaults
where Flax allows it: input kernels are Glorot-uniform over Keras's fused [in, 4*hidden] shape,
biases zero with the forget gate at 1.0 (`unit_forget_bias`), output Dense Glorot-uniform. One
difference remains: Keras draws one orthogonal [hidden, 4*hidden] recurrent matrix, Flax an
orthogonal [hidden, hidden] one per gate.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct

from jaxchar.core.lstm import GATES, Array, Carry, FusedLSTM, lstm_cell

# The default first: fused measured faster on CPU (BENCHMARKS.md); flax is the reference.
LSTM_IMPLS = ("fused", "flax")


def keras_fused_glorot_uniform(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  """Glorot-uniform for one gate's [in, hidden] kernel, scaled as Keras's fused [in, 4*hidden]."""
  fan_in, fan_out = shape[0], 4 * shape[1]
  limit = np.sqrt(6.0 / (fan_in + fan_out))
  return jax.random.uniform(key, shape, dtype, -limit, limit)


def layer_name(layer: int) -> str:
  """Parameter-tree name of LSTM layer `layer` (0-based): lstm, lstm2, lstm3, ...

  The first layer keeps the reference's name, so one-layer checkpoints stay compatible."""
  return "lstm" if layer == 0 else f"lstm{layer + 1}"


class CharLSTM(nn.Module):
  """[Embed ->] LSTM(hidden) x num_layers -> Dense(vocab): next-character logits."""

  vocab_size: int
  hidden: int
  num_layers: int
  embed_dim: int  # 0 = one-hot inputs, as the reference
  dropout: float  # between layers and before the output layer, in training only
  dtype: jnp.dtype  # computation dtype; parameters stay float32
  lstm_impl: str  # fused; or flax: nn.RNN(nn.OptimizedLSTMCell), the reference
  weight_drop: float  # fused only (Config checks it): DropConnect on the recurrent kernels

  def setup(self):
    if self.embed_dim:
      self.embed = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name="embed")
    if self.lstm_impl == "fused":
      self.layers = [FusedLSTM(self.hidden, kernel_init=keras_fused_glorot_uniform,
                               dtype=self.dtype, weight_drop=self.weight_drop,
                               name=layer_name(i))
                     for i in range(self.num_layers)]
    else:
      cells = [nn.OptimizedLSTMCell(self.hidden, kernel_init=keras_fused_glorot_uniform,
                                    dtype=self.dtype, name=layer_name(i))
               for i in range(self.num_layers)]
      self.layers = [nn.RNN(cell, return_carry=True, name=f"rnn{i}")
                     for i, cell in enumerate(cells)]
    self.drop = nn.Dropout(self.dropout)
    self.head = nn.Dense(self.vocab_size, kernel_init=nn.initializers.glorot_uniform(),
                         dtype=self.dtype, name="head")

  def __call__(self, inputs: Array, lengths: Array | None = None, *, train: bool = False,
               every_position: bool = False) -> Array:
    """int ids [B, T] -> float32 logits [B, vocab] for the character after the window, or
    [B, T, vocab] for the character after every position when `every_position`.

    `lengths` [B] marks left-aligned windows shorter than T (a short sampling prime): the
    logits then follow position lengths-1, and later positions are ignored. `train` turns
    dropout on (it needs a "dropout" rng) and runs the fused layers' training path.
    """
    carries, outputs = self.run_layers(inputs, lengths, train)
    features = outputs if every_position else carries[-1][1]
    return self.head(self.drop(features, deterministic=not train)).astype(jnp.float32)

  def streamed(self, inputs: Array, carries: list[Carry], *,
               train: bool = False) -> tuple[Array, list[Carry]]:
    """A window of a stream: ids [B, T] read from every layer's carry (c, h) [B, H] -> logits
    [B, T, vocab] for the character after every position, and the carries after the window
    (--carry_state: the next window starts from them)."""
    carries, outputs = self.run_layers(inputs, None, train, carries)
    return self.head(self.drop(outputs, deterministic=not train)).astype(jnp.float32), carries

  def encode(self, inputs: Array, lengths: Array | None = None) -> tuple[list[Carry], Array]:
    """Every layer's carry after the window, and the logits [B, vocab] that follow it."""
    carries, _ = self.run_layers(inputs, lengths, train=False)
    return carries, self.head(carries[-1][1]).astype(jnp.float32)

  def stepper(self, params: dict) -> "Stepper":
    """This model one character at a time, with `params` (called unbound, outside apply)."""
    return Stepper.of(params, self.dtype)

  def run_layers(self, inputs: Array, lengths: Array | None, train: bool,
                 initial: list[Carry] | None = None) -> tuple[list[Carry], Array]:
    """Each layer's final carry, and the last layer's outputs [B, T, hidden]; each layer
    starts from its `initial` carry (zeros without)."""
    fused = self.lstm_impl == "fused"
    if self.embed_dim:
      x = self.embed(inputs)
    elif fused:
      x = inputs  # the first fused layer looks up its input-kernel rows by id
    else:
      x = jax.nn.one_hot(inputs, self.vocab_size, dtype=self.dtype)
    carries = []
    for i, layer in enumerate(self.layers):
      if i:
        x = self.drop(x, deterministic=not train)
      start = None if initial is None else initial[i]
      if fused:
        one_hot_ids = i == 0 and not self.embed_dim
        carry, x = layer(x, lengths, vocab_size=self.vocab_size if one_hot_ids else None,
                         train=train, initial_carry=start)
      else:
        carry, x = layer(x, initial_carry=start, seq_lengths=lengths)
      carries.append(carry)
    return carries, x


def over_stream_windows(model: CharLSTM, params: dict, inputs: Array, maxlen: int,
                        reduce, *extras: Array) -> Array:
  """Rows of ids [R, W] read as streams (--carry_state), window after window of `maxlen` from
  zero carries: reduce(logits [R, maxlen, vocab], *each extra's window) per window, stacked
  over windows, [W // maxlen, ...] each (reduced inside the scan: a row's logits are never all held at once)."""
  rows, width = inputs.shape
  by_window = [jnp.swapaxes(x.reshape(rows, width // maxlen, maxlen), 0, 1)
               for x in (inputs, *extras)]
  zeros = jnp.zeros((rows, model.hidden), jnp.float32)

  def window(carries, xs):
    logits, carries = model.apply({"params": params}, xs[0], carries, method="streamed")
    return carries, reduce(logits, *xs[1:])

  _, reduced = jax.lax.scan(window, [(zeros, zeros)] * model.num_layers, by_window)
  return reduced


def init_params(model: CharLSTM, key: Array, maxlen: int) -> dict:
  """Initial parameters, with forget-gate biases set to 1.0 as Keras's unit_forget_bias."""
  params = model.init(key, jnp.zeros((1, maxlen), jnp.int32))["params"]
  for i in range(model.num_layers):
    forget_bias = params[layer_name(i)]["hf"]["bias"]
    params[layer_name(i)]["hf"]["bias"] = jnp.ones_like(forget_bias)
  return params


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def fused_lstm_kernels(layer_params: dict) -> tuple[Array, Array, Array]:
  """One OptimizedLSTMCell's per-gate params as input kernel [in, 4H], recurrent kernel
  [H, 4H] and bias [4H], gates in the cell's order (i, f, g, o)."""
  w_in = jnp.concatenate([layer_params[f"i{g}"]["kernel"] for g in GATES], axis=-1)
  w_rec = jnp.concatenate([layer_params[f"h{g}"]["kernel"] for g in GATES], axis=-1)
  bias = jnp.concatenate([layer_params[f"h{g}"]["bias"] for g in GATES], axis=-1)
  return w_in, w_rec, bias


def num_layers_of(params: dict) -> int:
  """How many LSTM layers a parameter tree holds."""
  return sum(1 for name in params if name.startswith("lstm"))


def fused_tensors(params: dict) -> dict[str, np.ndarray]:
  """The model's weights by the names the exported JavaScript model reads: per layer the fused
  input kernel, recurrent kernel and bias; the embedding, if any; the output layer."""
  arrays = {}
  for i in range(num_layers_of(params)):
    w_in, w_rec, bias = fused_lstm_kernels(params[layer_name(i)])
    arrays.update({f"layer{i}.w_in": w_in, f"layer{i}.w_rec": w_rec, f"layer{i}.bias": bias})
  if "embed" in params:
    arrays["embed"] = params["embed"]["embedding"]
  arrays["head.kernel"] = params["head"]["kernel"]
  arrays["head.bias"] = params["head"]["bias"]
  return {name: np.asarray(a, np.float32) for name, a in arrays.items()}


class Stepper(struct.PyTreeNode):
  """The model one character at a time (sampling, serving): its weights laid out for single
  cell steps. Equal to CharLSTM's forward pass over a window, step by step."""

  input_table: Array  # [V, 4H]: the first layer's input projection of every symbol, bias in
  layers: tuple  # per layer (w_in [in, 4H], w_rec [H, 4H], bias [4H]), computation dtype
  head_kernel: Array  # [H, V]
  head_bias: Array  # [V]

  @classmethod
  def of(cls, params: dict, dtype=jnp.float32) -> "Stepper":
    """The stepper of a CharLSTM's parameters, computing in `dtype`."""
    layers = tuple(tuple(w.astype(dtype) for w in fused_lstm_kernels(params[layer_name(i)]))
                   for i in range(num_layers_of(params)))
    w_in, _, bias = layers[0]
    if "embed" in params:
      w_in = params["embed"]["embedding"].astype(dtype) @ w_in
    return cls(w_in + bias, layers, params["head"]["kernel"], params["head"]["bias"])

  @property
  def hidden(self) -> int:
    return self.layers[0][1].shape[0]

  @property
  def dtype(self):
    return self.input_table.dtype

  def initial_carries(self, batch_shape: tuple[int, ...]) -> list[Carry]:
    """Every layer's zero carry (c, h), each [*batch_shape, H]."""
    zeros = jnp.zeros((*batch_shape, self.hidden), self.dtype)
    return [(zeros, zeros) for _ in self.layers]

  def step_projected(self, carries: list[Carry], x_proj: Array) -> list[Carry]:
    """One cell step of every layer, given the first layer's input projection [..., 4H]."""
    new = []
    for i, (carry, (w_in, w_rec, bias)) in enumerate(zip(carries, self.layers)):
      if i:
        x_proj = new[-1][1] @ w_in + bias
      new.append(lstm_cell(*carry, x_proj, w_rec)[:2])
    return new

  def project(self, ids: Array) -> Array:
    """The first layer's input projection [..., 4H] of ids [...] (bias included)."""
    return self.input_table[ids]

  def step(self, carries: list[Carry], ids: Array) -> list[Carry]:
    """One cell step of every layer on input ids (shaped as the carries' batch)."""
    return self.step_projected(carries, self.project(ids))

  def readout(self, h: Array) -> Array:
    """The output layer: float32 logits from the last layer's hidden states h [..., H]."""
    return (h @ self.head_kernel.astype(h.dtype) + self.head_bias).astype(jnp.float32)
