"""A trained model restored for reading (sampling, scoring, exporting, serving, --init_from): the
checkpoint choice (best, latest, older ones when one fails), read from a private snapshot, and
its description. Never changes the run's folder."""

import dataclasses
import functools
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax

from jaxchar.core import checkpoint, lock, storage
from jaxchar.core.data import Vocab
from jaxchar.core.model import CharLSTM
from jaxchar.core.spec import ModelSpec
from jaxchar.core.terminal import shown
from jaxchar.errors import UserError
from jaxchar.options import option

LISTING_ROUNDS = 5  # times a live run's checkpoints are listed before giving up


@dataclasses.dataclass(frozen=True)
class CheckpointChoice:
  """Which trained model to restore: the options of every reader (sample, score, export, serve)."""

  workdir: str = option("ckpt/moe", "The training run's folder (the trainer's --workdir).")
  step: int | None = option(None, "The checkpoint to use, by the training step it was saved "
                            "at (as the trainer prints: 'checkpoint at step N'). Default: the "
                            "one with the best (lowest) validation loss; the latest if none "
                            "has one.")


@dataclasses.dataclass(frozen=True)
class Restored:
  """A checkpoint's parameters with its model description and metadata."""

  spec: ModelSpec
  params: Any
  step: int
  meta: dict

  # Built once: the server's batcher asks for them every round.
  @functools.cached_property
  def model(self) -> CharLSTM:
    return self.spec.model()

  @functools.cached_property
  def vocab(self) -> Vocab:
    return Vocab(self.spec.vocab)

  @property
  def maxlen(self) -> int:
    return self.spec.maxlen

  @property
  def lowercase(self) -> bool:
    return self.spec.lowercase

  @property
  def training_config(self) -> dict:
    """The training options the run was saved with (as saved: a JSON object)."""
    return self.meta.get("config", {})


def candidate_steps(metas: dict[int, dict]) -> list[int]:
  """The order to try checkpoints in: the best by validation loss, the latest, then older."""
  scored = [(meta["val_loss"], step) for step, meta in metas.items()
            if meta.get("val_loss") is not None]
  first = [min(scored)[1]] if scored else []
  return list(dict.fromkeys(first + sorted(metas, reverse=True)))


def _warn(message: str) -> None:
  print(shown(f"warning: {message}"), file=sys.stderr, flush=True)


def _read(workdir: Any, step: int, meta: dict, folder: Path | None = None) -> Restored:
  spec = ModelSpec.from_meta(meta)
  params = checkpoint.restore_params(workdir, step, spec.params_template(), folder)
  return Restored(spec, jax.device_put(params), step, meta)


def _finished_steps(workdir: Any, flag: str) -> list[int]:
  if not storage.is_dir(workdir):
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


def restore(workdir: str | Path, step: int | None = None, flag: str = "--workdir") -> Restored:
  """Restores parameters (not optimizer state) and metadata onto the default device.

  Without `step`: the best checkpoint, else the latest, else older ones, skipping with a
  warning any that fail to restore. Each is read from a private snapshot of hard links
  (checkpoint.snapshot), so a live run deleting it (--keep) cannot spoil the read; one that
  vanishes before its snapshot is as if never there. Errors name `workdir` as `flag` (the
  trainer's --init_from reads a run this way too).
  """
  workdir = storage.location(workdir)
  with storage.requests_to(workdir, "read"):
    return _restore(workdir, step, flag)


def _restore(workdir: Any, step: int | None, flag: str) -> Restored:
  steps = _finished_steps(workdir, flag)
  with tempfile.TemporaryDirectory(prefix="jaxchar-read-") as private:
    if step is not None:
      return _restore_step(workdir, step, steps, Path(private), flag)
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
          return _read(workdir, candidate, metas[candidate], folders[candidate])
        except Exception as e:  # noqa: BLE001 - reported, and the next checkpoint is tried
          _skip(workdir, candidate, e, failures, "it cannot be restored")
      steps = checkpoint.checkpoint_steps(workdir)
      if not set(steps) - tried:
        break
  if not failures:
    raise UserError(f"every checkpoint in {workdir} was deleted before it could be read; is a "
                    "trainer with a small --keep saving very often there? Retry.")
  raise UserError(f"none of the {len(tried)} checkpoints in {workdir} can be restored "
                  f"({'; '.join(failures)[:600]}). If they are damaged, rerun the trainer with "
                  f"--workdir={workdir}: it sets damaged checkpoints aside and resumes from the "
                  "newest good one.")


def _skip(workdir: Any, step: int, error: Exception, failures: list[str], what: str) -> None:
  """Records and warns of a checkpoint that failed to read, unless it was being deleted as it
  was linked (then it is as if never there)."""
  if not checkpoint.has_step(workdir, step):
    return
  cause = checkpoint.describe_error(error)
  failures.append(f"step {step}: {cause}")
  _warn(f"skipping the checkpoint at step {step} in {workdir}: {what} ({cause}); trying the "
        "next one.")


def _restore_step(workdir: Any, step: int, steps: list[int], private: Path,
                  flag: str) -> Restored:
  """The checkpoint at `step`, read from a snapshot in `private`."""
  asked = f"--step={step}" if flag == "--workdir" else f"{flag}={workdir}:{step}"
  if step not in steps:
    raise UserError(f"{asked} has no checkpoint in {workdir}; the steps saved are "
                    f"{', '.join(map(str, steps))}.")
  try:
    folder = checkpoint.snapshot(workdir, step, private)
    return _read(workdir, step, checkpoint.read_meta(workdir, step, folder), folder)
  except UserError:
    raise
  except Exception as e:  # orbax raises many types for missing or damaged files
    raise UserError(f"the checkpoint at step {step} in {workdir} cannot be restored "
                    f"({checkpoint.describe_error(e)}): it is damaged, or was deleted meanwhile "
                    "by a running trainer's --keep. Leave out the step to use the best one that "
                    "restores.") from None


def checkpoint_header(restored: Restored) -> str:
  """The first line of what the sampler, scorer and exporter print: which checkpoint."""
  val = restored.meta.get("val_loss")
  return (f"# checkpoint step {restored.step} (epoch {restored.meta.get('epoch')}"
          + (f", validation loss {val:.4f} nats)" if val is not None else ")"))
