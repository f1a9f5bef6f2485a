"""A restored model as the exported page and JSON carry it: the description, vocabulary and
weights (per layer the fused input kernel, recurrent kernel and bias; the embedding; the output
layer), as base64 little-endian float32 or float16."""

import base64
import math

import numpy as np

from jaxchar.core.model import fused_tensors
from jaxchar.core.restore import Restored

FORMAT = "jaxchar-model"
FORMAT_VERSION = 1
MAX_BYTES = 100 * 2**20  # a page larger than this is refused: browsers choke on it


def encoded_bytes(restored: Restored, float16: bool) -> int:
  """About how many bytes the weights take in the file (base64: 4 characters per 3 bytes)."""
  count = sum(a.size for a in fused_tensors(restored.params).values())
  return math.ceil(count * (2 if float16 else 4) / 3) * 4


def describe(restored: Restored, float16: bool) -> dict:
  """The model as one JSON object: what it is, its vocabulary and its weights."""
  meta, spec, trained = restored.meta, restored.spec, restored.training_config
  dtype = np.float16 if float16 else np.float32
  little_endian = np.dtype(dtype).newbyteorder("<")
  arrays = fused_tensors(restored.params)
  return {
      "format": FORMAT, "version": FORMAT_VERSION, "dtype": np.dtype(dtype).name,
      "vocab": spec.vocab, "maxlen": spec.maxlen, "lowercase": spec.lowercase,
      "hidden": spec.hidden, "num_layers": spec.num_layers, "embed_dim": spec.embed_dim,
      "step": restored.step, "epoch": meta.get("epoch"), "val_loss": meta.get("val_loss"),
      "data": trained.get("data"), "corpus_chars": meta.get("corpus_chars"),
      "objective": trained.get("objective", "last"),
      "parameters": int(sum(a.size for a in arrays.values())),
      "tensors": {name: {"shape": list(a.shape),
                         "data": base64.b64encode(a.astype(little_endian).tobytes()).decode()}
                  for name, a in arrays.items()}}
