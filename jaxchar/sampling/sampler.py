"""Sampling from a restored model: prime handling, one batched generation call for many rows,
and the CLI's report. Used by `jaxchar.sample` and `jaxchar.serve`."""

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxchar.core.restore import Restored, checkpoint_header, restore
from jaxchar.core.terminal import shown
from jaxchar.errors import UserError
from jaxchar.sampling import generate
from jaxchar.sampling.config import SampleConfig
from jaxchar.sampling.controls import Bounds, Controls, check_controls
from jaxchar.sampling.generate import GENERATORS

CHUNK = 64  # characters a row writes per generation call in generate_rows and the server


@dataclasses.dataclass(frozen=True)
class Sampler(Restored):
  """A restored model with the operations that sample from it."""

  @classmethod
  def of(cls, restored: Restored) -> "Sampler":
    return cls(**{f.name: getattr(restored, f.name) for f in dataclasses.fields(Restored)})

  def clean_prime(self, prime: str, unknown: str = "error") -> str:
    """The prime as the model sees it: lowercased if it was trained so, characters it never
    saw an error (`unknown="error"`) or dropped ("skip")."""
    if self.lowercase:
      prime = prime.lower()
    missing = self.vocab.unknown(prime)
    if missing and unknown == "error":
      raise UserError(
          f"the prime has characters the model never saw in training: "
          f"{', '.join(repr(c) for c in missing)}. Remove them, or pass --unknown=skip to drop "
          "them.")
    return "".join(c for c in prime if c not in missing)

  def encode_prime(self, prime: str, unknown: str = "error") -> tuple[np.ndarray, int]:
    """The context window [maxlen] (left-aligned) and how many of its ids are real."""
    prime = self.clean_prime(prime, unknown)
    if not prime:  # start as from a line break, or the first symbol if the text has none
      prime = "\n" if "\n" in self.vocab.chars else self.vocab.chars[0]
    ids = self.vocab.encode(prime[-self.maxlen:])
    window = np.zeros(self.maxlen, np.int32)
    window[:len(ids)] = ids
    return window, len(ids)

  def sample(self, prime: str, temperatures: Sequence[float], length: int, num_samples: int = 1,
             seed: int = 0, top_k: int = 0, unknown: str = "error",
             mode: str = "window", top_p: float = 1.0,
             stops: Sequence[str] = ()) -> list[list[str]]:
    """`num_samples` continuations of `prime` per temperature: result[t][n], each ending right
    after the first of `stops` it writes (cut_at_stop), if any."""
    check_controls(Controls(tuple(temperatures), length, num_samples, top_k, top_p, tuple(stops),
                            mode, unknown, seed), Bounds(vocab_size=self.vocab.size))
    window, filled = self.encode_prime(prime, unknown)
    temps = np.repeat(np.asarray(temperatures, np.float32), num_samples)
    context = np.broadcast_to(window, (len(temps), self.maxlen))
    out = np.asarray(GENERATORS[mode](self.model, self.params, jnp.asarray(context),
                                      jnp.asarray(temps), jax.random.PRNGKey(seed), length,
                                      top_k, filled, top_p))
    texts = [cut_at_stop(self.vocab.decode(row), stops)[0] for row in out]
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(temperatures))]

  def row(self, prime: str, temperature: float, top_k: int = 0, seed: int = 0,
          index: int = 0, unknown: str = "error", top_p: float = 1.0) -> "Row":
    """One row for `generate_rows`. Its keys come from (seed, index) alone, so its text does
    not depend on the other rows it is batched with."""
    window, filled = self.encode_prime(prime, unknown)
    return Row(window, filled, temperature, top_k, seed, index, top_p)

  def start_rows(self, rows: Sequence["Row"], mode: str) -> tuple:
    """The rows' generation state after their primes (numpy, first axis the row)."""
    state = generate.start_rows(self.model, self.params, mode, np.stack([r.window for r in rows]),
                                np.asarray([r.filled for r in rows], np.int32))
    return tuple(np.asarray(a) for a in state)

  def advance_rows(self, rows: Sequence["Row"], mode: str, state: tuple,
                   chunks: Sequence[int]) -> tuple[tuple, np.ndarray]:
    """The rows' next CHUNK ids [len(rows), CHUNK], row i writing its chunk number chunks[i],
    and their new state."""
    state, ids = generate.advance_rows(
        self.model, self.params, mode, state,
        np.asarray([r.temperature for r in rows], np.float32),
        np.asarray([r.top_k for r in rows], np.int32),
        np.asarray([r.top_p for r in rows], np.float32),
        *(np.asarray([getattr(r, f) for r in rows], np.uint32) for f in ("seed", "index")),
        np.asarray(chunks, np.uint32), CHUNK)
    return tuple(np.asarray(a) for a in state), np.asarray(ids)

  def generate_rows(self, rows: Sequence["Row"], length: int, mode: str = "window",
                    pad_to: int | None = None) -> np.ndarray:
    """Ids [len(rows), length], chunk by chunk as the server writes them, every row in each
    call, padded with copies of the first row to `pad_to` rows (so a few batch shapes serve
    every request count)."""
    padded = list(rows) + [rows[0]] * ((pad_to or len(rows)) - len(rows))
    state, written = self.start_rows(padded, mode), []
    for chunk in range(-(-length // CHUNK)):
      state, ids = self.advance_rows(padded, mode, state, [chunk] * len(padded))
      written.append(ids)
    return np.concatenate(written, axis=1)[:len(rows), :length]


@dataclasses.dataclass(frozen=True)
class Row:
  """One sequence to generate: its context window (left-aligned) and how much of it is real,
  its temperature, top-k (0 = off) and top-p (1 = off), and what its keys derive from."""

  window: np.ndarray
  filled: int
  temperature: float
  top_k: int
  seed: int
  index: int
  top_p: float = 1.0


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
  """`text` up to and including the first occurrence of any of `stops` (the one that ends
  first), and that stop; `text` and None when none occurs."""
  ends = [(found + len(stop), i) for i, stop in enumerate(stops)
          if (found := text.find(stop)) >= 0]
  if not ends:
    return text, None
  end, i = min(ends)
  return text[:end], stops[i]


def load_sampler(workdir: str | Path, step: int | None = None) -> Sampler:
  """The checkpoint `restore` chooses in `workdir` (or the one at `step`), ready to sample."""
  return Sampler.of(restore(workdir, step))


def run_sampling(config: SampleConfig) -> str:
  """Restores the checkpoint and returns the samples as printable text (control characters
  the model wrote or the prime holds escaped, core.terminal.shown)."""
  sampler = load_sampler(config.workdir, config.step)
  samples = sampler.sample(config.prime, config.temperatures, config.length, config.num_samples,
                           config.seed, config.top_k, config.unknown, config.mode, config.top_p)
  shown_prime = sampler.clean_prime(config.prime, config.unknown)  # as the model saw it
  lines = [checkpoint_header(sampler)]
  for temperature, texts in zip(config.temperatures, samples):
    for n, whole in enumerate(texts, 1):
      text, stop = cut_at_stop(whole, config.stops)  # as sample(stops=...) cuts it
      ended = ""
      if config.stops:
        ended = (f" (stopped after {stop!r})" if stop is not None
                 else f" (no stop string in {config.length} characters)")
      lines.append(f"----- temperature {temperature}, sample {n}{ended}\n{shown_prime}{text}")
  return shown("\n".join(lines))
