"""A restored model as the exported page and JSON carry it: the description, vocabulary and
weights (per layer the fused input kernel, recurrent kernel and bias; the embedding; the output
layer), as base64 little-endian float32 or float16."""

import base64
import math
from typing import Any

import numpy as np

from jaxchar.core.model import fused_lstm_kernels, layer_name, num_layers_of
from jaxchar.sampling.sampler import Sampler

FORMAT = "jaxchar-model"
FORMAT_VERSION = 1
MAX_BYTES = 100 * 2**20  # a page larger than this is refused: browsers choke on it


def tensors(params: Any) -> dict[str, np.ndarray]:
  """The arrays the JavaScript forward pass reads, by name."""
  arrays = {}
  for i in range(num_layers_of(params)):
    w_in, w_rec, bias = fused_lstm_kernels(params[layer_name(i)])
    arrays.update({f"layer{i}.w_in": w_in, f"layer{i}.w_rec": w_rec, f"layer{i}.bias": bias})
  if "embed" in params:
    arrays["embed"] = params["embed"]["embedding"]
  arrays["head.kernel"] = params["head"]["kernel"]
  arrays["head.bias"] = params["head"]["bias"]
  return {name: np.asarray(a, np.float32) for name, a in arrays.items()}


def encoded_bytes(sampler: Sampler, float16: bool) -> int:
  """About how many bytes the weights take in the file (base64: 4 characters per 3 bytes)."""
  count = sum(a.size for a in tensors(sampler.params).values())
  return math.ceil(count * (2 if float16 else 4) / 3) * 4


def describe(sampler: Sampler, float16: bool) -> dict:
  """The model as one JSON object: what it is, its vocabulary and its weights."""
  meta = sampler.meta
  dtype = np.float16 if float16 else np.float32
  little_endian = np.dtype(dtype).newbyteorder("<")
  arrays = tensors(sampler.params)
  return {
      "format": FORMAT, "version": FORMAT_VERSION, "dtype": np.dtype(dtype).name,
      "vocab": sampler.vocab.chars, "maxlen": sampler.maxlen, "lowercase": sampler.lowercase,
      "hidden": int(meta["hidden"]), "num_layers": num_layers_of(sampler.params),
      "embed_dim": int(meta.get("embed_dim", 0)), "step": sampler.step,
      "epoch": meta.get("epoch"), "val_loss": meta.get("val_loss"),
      "data": meta.get("config", {}).get("data"), "corpus_chars": meta.get("corpus_chars"),
      "objective": meta.get("config", {}).get("objective", "last"),
      "parameters": int(sum(a.size for a in arrays.values())),
      "tensors": {name: {"shape": list(a.shape),
                         "data": base64.b64encode(a.astype(little_endian).tobytes()).decode()}
                  for name, a in arrays.items()}}
