"""ModelSpec: the one saved description of a trained model, everything a reader needs to compute
it (vocabulary, shape, window, lowercasing, dtype, implementation). Checkpoints hold it once; the
sampler, scorer, exporter, server and --init_from build the model from it."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxchar.core.data import Vocab
from jaxchar.core.model import LSTM_IMPLS, CharLSTM, init_params

# Shape options added after format 1 began, with the values that checkpoints written before
# them were trained with (the reference's): history, so not tied to today's defaults.
LEGACY_DEFAULTS = {"num_layers": 1, "embed_dim": 0, "dtype": "float32",
                   "lstm_impl": LSTM_IMPLS[0]}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What a checkpoint's parameters are: the model's shape and what its ids mean."""

  vocab: str  # the characters, in id order
  hidden: int
  num_layers: int
  embed_dim: int  # 0 = one-hot inputs
  maxlen: int  # the training window: the context sampling and scoring use
  lowercase: bool
  dtype: str = "float32"  # computation dtype; parameters are float32
  lstm_impl: str = LSTM_IMPLS[0]

  @classmethod
  def of(cls, config: Any, vocab: Vocab) -> "ModelSpec":
    """The spec of a training Config's model over `vocab`."""
    return cls(vocab.chars, config.hidden, config.num_layers, config.embed_dim, config.maxlen,
               config.lowercase, config.dtype, config.lstm_impl)

  @classmethod
  def from_meta(cls, meta: dict) -> "ModelSpec":
    """The spec a checkpoint's metadata holds: its "spec" (format 2), or the flat keys and
    training config of format 1."""
    if "spec" in meta:
      return cls(**meta["spec"])
    config = {**LEGACY_DEFAULTS, **meta.get("config", {})}
    flat = {**LEGACY_DEFAULTS, **meta}
    return cls(meta["vocab"], flat["hidden"], flat["num_layers"], flat["embed_dim"],
               meta["maxlen"], meta["lowercase"], config["dtype"], config["lstm_impl"])

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def model(self, dropout: float = 0.0) -> CharLSTM:
    """The CharLSTM this spec describes (dropout applies in training only)."""
    return CharLSTM(self.vocab_size, self.hidden, self.num_layers, self.embed_dim, dropout,
                    dtype=jnp.dtype(self.dtype), lstm_impl=self.lstm_impl)

  def params_template(self) -> Any:
    """Host arrays shaped as this model's parameters (what a restore fills in)."""
    return jax.device_get(init_params(self.model(), jax.random.PRNGKey(0), self.maxlen))
