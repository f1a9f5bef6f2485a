"""Analytic matmul FLOPs and a lower bound on memory traffic of a run's programs, from the model
shape alone: every time step of every loop counted (XLA's cost analysis counts a loop body once).
Elementwise work (gates, softmax, optimizer) is left out of the FLOPs."""

import dataclasses

from jaxchar.core.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class Shape:
  """What the counts depend on."""

  vocab: int
  hidden: int
  num_layers: int
  embed_dim: int
  maxlen: int
  every_position: bool
  fused: bool
  dtype_bytes: int

  @classmethod
  def of(cls, spec: ModelSpec, every_position: bool = False) -> "Shape":
    """The shape of `spec`'s model, trained on every position's next character or the last's."""
    return cls(spec.vocab_size, spec.hidden, spec.num_layers, spec.embed_dim, spec.maxlen,
               every_position, spec.lstm_impl == "fused", 2 if spec.dtype == "bfloat16" else 4)

  def input_width(self, layer: int) -> int:
    if layer:
      return self.hidden
    return self.embed_dim or self.vocab


def _one_hot_lookup(shape: Shape, layer: int) -> bool:
  """The fused first layer on one-hot inputs gathers kernel rows: no input matmul."""
  return layer == 0 and not shape.embed_dim and shape.fused


def forward_flops(shape: Shape, windows: int, positions: int, head_positions: int) -> float:
  """Matmul FLOPs of the model over `windows` x `positions`, with the output layer at
  `head_positions` per window."""
  h, total = shape.hidden, 0.0
  for layer in range(shape.num_layers):
    x_in = 0 if _one_hot_lookup(shape, layer) else 2 * shape.input_width(layer) * 4 * h
    total += windows * positions * (x_in + 2 * h * 4 * h)
  return total + windows * head_positions * 2 * h * shape.vocab


def train_step_flops(shape: Shape, batch: int) -> float:
  """One optimizer step on `batch` windows: forward, then about twice that backward (the
  gradients of inputs and of weights), less the input gradient of the first layer."""
  t = shape.maxlen
  forward = forward_flops(shape, batch, t, t if shape.every_position else 1)
  first_input = 0 if _one_hot_lookup(shape, 0) else 2 * shape.input_width(0) * 4 * shape.hidden
  return 3 * forward - batch * t * first_input


def eval_step_flops(shape: Shape, batch: int) -> float:
  return forward_flops(shape, batch, shape.maxlen, 1)


def generation_flops(shape: Shape, rows: int, length: int, mode: str) -> float:
  """Generating `length` characters per row: window mode steps all maxlen overlapping windows
  per character (and primes them), stateful one cell step per character (after the prime)."""
  h = shape.hidden
  cell = sum((2 * shape.input_width(i) * 4 * h if i else 0) + 2 * h * 4 * h
             for i in range(shape.num_layers))
  head = 2 * h * shape.vocab
  windows = shape.maxlen if mode == "window" else 1
  return rows * ((length + shape.maxlen) * windows * cell + length * head)


def train_step_bytes(shape: Shape, batch: int, num_params: int) -> float:
  """A lower bound on one step's memory traffic: the recurrent kernels read at every time step
  forward and backward, each position's residuals (gates, cell and hidden state) written
  forward and read backward, and parameters, gradients and optimizer state read and written
  once (float32)."""
  h, t = shape.hidden, shape.maxlen
  recurrent = shape.num_layers * h * 4 * h * shape.dtype_bytes * t * 3
  residuals = shape.num_layers * batch * t * 6 * h * shape.dtype_bytes * 2
  state = num_params * 4 * 5  # read params, grads and RMSprop's v; write v and params
  return recurrent + residuals + state
