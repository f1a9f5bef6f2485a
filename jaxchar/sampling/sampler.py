"""A trained model restored from a checkpoint, ready to sample: prime handling, the checkpoint
choice (best, latest, older ones when one fails), and one batched generation call for many rows.
Used by `jaxchar.sample` and `jaxchar.serve`."""

import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxchar.core import checkpoint, lock
from jaxchar.core.data import Vocab
from jaxchar.core.model import CharLSTM, init_params
from jaxchar.core.terminal import shown
from jaxchar.errors import UserError
from jaxchar.sampling import generate
from jaxchar.sampling.config import SampleConfig
from jaxchar.sampling.generate import GENERATORS

CHUNK = 64  # characters a row writes per generation call in generate_rows and the server


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A restored model, ready to sample: parameters plus the checkpoint's metadata."""

  model: CharLSTM
  params: Any
  vocab: Vocab
  maxlen: int
  lowercase: bool
  step: int
  meta: dict

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
    if top_k > self.vocab.size:
      raise UserError(f"--top_k={top_k} is larger than the vocabulary ({self.vocab.size} "
                      f"characters); use 0 (off) to {self.vocab.size}.")
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


LISTING_ROUNDS = 5  # times the sampler lists a live run's checkpoints before giving up


def candidate_steps(metas: dict[int, dict]) -> list[int]:
  """The order to try checkpoints in: the best by validation loss, the latest, then older."""
  scored = [(meta["val_loss"], step) for step, meta in metas.items()
            if meta.get("val_loss") is not None]
  first = [min(scored)[1]] if scored else []
  return list(dict.fromkeys(first + sorted(metas, reverse=True)))


def _describe(error: Exception) -> str:
  return f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"


def _warn(message: str) -> None:
  print(shown(f"warning: {message}"), file=sys.stderr, flush=True)


def _restore_sampler(workdir: Path, step: int, meta: dict,
                     folder: Path | None = None) -> "Sampler":
  model = CharLSTM(meta["vocab_size"], meta["hidden"], meta.get("num_layers", 1),
                   meta.get("embed_dim", 0))
  template = jax.device_get(init_params(model, jax.random.PRNGKey(0), meta["maxlen"]))
  params = jax.device_put(checkpoint.restore_params(workdir, step, template, folder))
  return Sampler(model, params, Vocab(meta["vocab"]), meta["maxlen"], meta["lowercase"], step,
                 meta)


def _finished_steps(workdir: Path, flag: str) -> list[int]:
  if not workdir.is_dir():
    raise UserError(f"{flag}={workdir} does not exist; point it at a training run's folder "
                    "(the trainer's --workdir, default ckpt/moe).")
  steps = checkpoint.checkpoint_steps(workdir)
  if not steps and (trainer := lock.holder(workdir)):
    raise UserError(f"{flag}={workdir} has no finished checkpoint yet: a trainer is running "
                    f"there ({trainer}) and saves its first at the end of epoch 1 (or every "
                    "--save_every_steps). Wait for that save and retry.")
  if not steps and checkpoint.unfinished_checkpoints(workdir):
    raise UserError(f"{flag}={workdir} has no finished checkpoint yet: the first one is still "
                    "being written (or its writer stopped midway). Wait for the trainer's first "
                    "save (end of epoch 1, or every --save_every_steps) and retry.")
  if not steps:
    raise UserError(f"{flag}={workdir} holds no checkpoint; train first, e.g. "
                    f"`python -m jaxchar.train --flagfile=launch/moe.flags --workdir={workdir}`.")
  return steps


def load_sampler(workdir: str | Path, step: int | None = None,
                 flag: str = "--workdir") -> Sampler:
  """Restores parameters (not optimizer state) and metadata onto the default device.

  Without `step`: the best checkpoint, else the latest, else older ones, skipping with a
  warning any that fail to restore. Each is read from a private snapshot of hard links
  (checkpoint.snapshot), so a live run deleting it (--keep) cannot spoil the read; one that
  vanishes before its snapshot is as if never there. Never changes `workdir`. Errors name it
  as `flag` (the trainer's --init_from reads a run this way too).
  """
  workdir = Path(workdir)
  steps = _finished_steps(workdir, flag)
  with tempfile.TemporaryDirectory(prefix="jaxchar-read-") as private:
    if step is not None:
      return _load_step(workdir, step, steps, Path(private), flag)
    failures, tried = [], set()
    for _ in range(LISTING_ROUNDS):  # a live run may have saved new ones while we read
      metas, folders = {}, {}
      for candidate in sorted(set(steps) - tried):
        tried.add(candidate)
        try:
          folders[candidate] = checkpoint.snapshot(workdir, candidate, Path(private))
        except OSError:
          continue  # deleted since listed (a live run's --keep): as if never there
        try:
          metas[candidate] = checkpoint.read_meta(workdir, candidate, folders[candidate])
        except UserError:
          raise
        except Exception as e:  # noqa: BLE001 - reported, and the next checkpoint is tried
          _skip(workdir, candidate, e, failures, "its metadata cannot be read")
      for candidate in candidate_steps(metas):
        try:
          return _restore_sampler(workdir, candidate, metas[candidate], folders[candidate])
        except Exception as e:  # noqa: BLE001 - reported, and the next checkpoint is tried
          _skip(workdir, candidate, e, failures, "it cannot be restored")
      steps = checkpoint.checkpoint_steps(workdir)
      if not set(steps) - tried:
        break
  if not failures:
    raise UserError(f"every checkpoint in {workdir} was deleted before it could be read; is a "
                    "trainer with a small --keep saving very often there? Retry.")
  raise UserError(f"none of the {len(tried)} checkpoints in {workdir} can be restored "
                  f"({'; '.join(failures)[:600]}). They are damaged; rerun the trainer with "
                  f"--workdir={workdir} (it sets damaged checkpoints aside and resumes from the "
                  "newest good one, or starts afresh).")


def _skip(workdir: Path, step: int, error: Exception, failures: list[str], what: str) -> None:
  """Records and warns of a checkpoint that failed to read, unless it was being deleted as it
  was linked (then it is as if never there)."""
  if not checkpoint.has_step(workdir, step):
    return
  failures.append(f"step {step}: {_describe(error)}")
  _warn(f"skipping the checkpoint at step {step} in {workdir}: {what} ({_describe(error)}); "
        "trying the next one.")


def _load_step(workdir: Path, step: int, steps: list[int], private: Path,
               flag: str) -> Sampler:
  """The checkpoint at `step`, read from a snapshot in `private`."""
  asked = f"--step={step}" if flag == "--workdir" else f"{flag}={workdir}:{step}"
  if step not in steps:
    raise UserError(f"{asked} has no checkpoint in {workdir}; the steps saved are "
                    f"{', '.join(map(str, steps))}.")
  try:
    folder = checkpoint.snapshot(workdir, step, private)
    return _restore_sampler(workdir, step, checkpoint.read_meta(workdir, step, folder), folder)
  except UserError:
    raise
  except Exception as e:  # orbax raises many types for missing or damaged files
    raise UserError(f"the checkpoint at step {step} in {workdir} cannot be restored "
                    f"({_describe(e)}): it is damaged, or was deleted meanwhile by a running "
                    "trainer's --keep. Leave out the step to use the best one that "
                    "restores.") from None


def checkpoint_header(sampler: Sampler) -> str:
  """The first line of what the sampler, scorer and exporter print: which checkpoint."""
  val = sampler.meta.get("val_loss")
  return (f"# checkpoint step {sampler.step} (epoch {sampler.meta.get('epoch')}"
          + (f", validation loss {val:.4f} nats)" if val is not None else ")"))


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
