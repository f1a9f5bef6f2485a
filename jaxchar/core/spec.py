"""ModelSpec: the one description of a model, everything needed to compute it (vocabulary, shape,
window, lowercasing, dtype, implementation). Every model the project runs is built by
`ModelSpec.model` (training, evaluation, sampling, scoring, serving, export, the compile check,
the FLOP count); checkpoints hold it once, and `PREDATING` says what older ones were trained
with."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxchar.core.data import Vocab
from jaxchar.core.model import LSTM_IMPLS, CharLSTM, init_params

# Options added after format 1 began, with the values that checkpoints written before them were
# trained with (the reference's): history, so not tied to today's defaults. The one table: the
# spec's fields and the training options resume compares.
PREDATING = {"num_layers": 1, "embed_dim": 0, "dtype": "float32", "lstm_impl": LSTM_IMPLS[0],
             "carry_state": False, "optimizer": "rmsprop", "lr_schedule": "constant",
             "clip_norm": 0.0}


def placeholder_chars(size: int) -> str:
  """A vocabulary of `size` distinct characters, for programs built from a size alone."""
  return "".join(chr(0x10000 + i) for i in range(size))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What a checkpoint's parameters are: the model's shape and what its ids mean."""

  vocab: str  # the characters, in id order
  hidden: int
  num_layers: int
  embed_dim: int  # 0 = one-hot inputs
  maxlen: int  # the training window: the context sampling and scoring use
  lowercase: bool
  dtype: str  # computation dtype; parameters are float32
  lstm_impl: str
  carry_state: bool  # trained on streams with the state carried: read best that way too

  @classmethod
  def of(cls, config: Any, vocab: Vocab | int) -> "ModelSpec":
    """The spec of a training Config's model over `vocab` (or a vocabulary of that size)."""
    chars = vocab.chars if isinstance(vocab, Vocab) else placeholder_chars(vocab)
    return cls(chars, **{name: getattr(config, name) for name in OPTIONS})

  @classmethod
  def from_meta(cls, meta: dict) -> "ModelSpec":
    """The spec a checkpoint's metadata holds: its "spec" (format 2), or the flat keys and
    training config of format 1."""
    if "spec" in meta:
      return cls(**{**{k: PREDATING[k] for k in OPTIONS if k in PREDATING}, **meta["spec"]})
    config = {**PREDATING, **meta.get("config", {})}
    flat = {**PREDATING, **meta}
    return cls(meta["vocab"], flat["hidden"], flat["num_layers"], flat["embed_dim"],
               meta["maxlen"], meta["lowercase"], config["dtype"], config["lstm_impl"], False)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def model(self, dropout: float = 0.0, weight_drop: float = 0.0) -> CharLSTM:
    """The CharLSTM this spec describes (dropout and weight drop apply in training only)."""
    return CharLSTM(self.vocab_size, self.hidden, self.num_layers, self.embed_dim, dropout,
                    dtype=jnp.dtype(self.dtype), lstm_impl=self.lstm_impl,
                    weight_drop=weight_drop)

  def abstract_params(self) -> Any:
    """The parameters' shapes and dtypes, computed without computing them."""
    return jax.eval_shape(lambda key: init_params(self.model(), key, self.maxlen),
                          jax.random.PRNGKey(0))

  def params_template(self) -> Any:
    """Host arrays shaped as this model's parameters (what a restore fills in)."""
    return jax.tree_util.tree_map(lambda s: np.empty(s.shape, s.dtype), self.abstract_params())

  def options(self) -> dict:
    """The fields a training Config shares with the spec (all but the vocabulary)."""
    return {name: getattr(self, name) for name in OPTIONS}


# The spec's fields that are also training options (a Config's names).
OPTIONS = tuple(f.name for f in dataclasses.fields(ModelSpec) if f.name != "vocab")
# Those that fix what the parameters mean: --init_from takes them from its base and resume
# refuses a change; the dtype and the LSTM implementation compute the same parameters.
SHAPE = ("hidden", "num_layers", "embed_dim", "maxlen", "lowercase")
