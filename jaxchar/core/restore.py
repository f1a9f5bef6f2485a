"""A trained model restored for reading (sampling, scoring, exporting, serving, --init_from): the
checkpoint choice (best, latest, older ones when one fails), read from a pinned copy, and
its description. Never changes the run's folder."""

import dataclasses
import functools
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax

from jaxchar.core import checkpoint, storage
from jaxchar.core.data import Vocab
from jaxchar.core.model import CharLSTM
from jaxchar.core.spec import ModelSpec
from jaxchar.core.terminal import shown
from jaxchar.errors import UserError

LISTING_ROUNDS = 5  # times a live run's checkpoints are listed before giving up


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


def _pin(workdir: storage.Location, step: int, private: Path, item: str) -> storage.Location:
  """The checkpoint at `step`'s `item` ("meta", or "params": what holds its parameters) as
  Location.pinned keeps it in `private` (hard links on a disk, a download from a bucket), so
  that a live run's --keep deleting it meanwhile cannot spoil the read. OSError if it vanished
  first."""
  source = checkpoint.step_folder(workdir, step)
  name = checkpoint.params_item(source) if item == "params" else item
  pinned = source.pinned(private, (name,))
  if not (pinned / name).is_dir():  # the trainer's deletion had begun before the listing
    raise FileNotFoundError(f"the checkpoint at step {step} has no {name}")
  return pinned


def _read(workdir: storage.Location, step: int, meta: dict, private: Path) -> Restored:
  """The parameters of the checkpoint at `step` (only their item is read)."""
  spec = ModelSpec.from_meta(meta)
  params = checkpoint.restore_params(_pin(workdir, step, private, "params"),
                                     spec.params_template())
  return Restored(spec, jax.device_put(params), step, meta)


def _finished_steps(workdir: storage.Location, flag: str) -> list[int]:
  if not workdir.is_dir():
    raise UserError(f"{flag}={workdir} does not exist; point it at a training run's folder "
                    "(the trainer's --workdir, default ckpt/moe).")
  steps = checkpoint.checkpoint_steps(workdir)
  if not steps and (trainer := workdir.lock_holder()):
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


def restore(workdir: Any, step: int | None = None, flag: str = "--workdir") -> Restored:
  """Restores parameters (not optimizer state) and metadata onto the default device.

  Without `step`: the best checkpoint, else the latest, else older ones, skipping with a
  warning any that fail to restore. What is read is pinned first (Location.pinned: hard links
  on a disk, a download from a bucket), so a live run deleting it (--keep) cannot spoil the
  read; one that vanishes first is as if never there. Only the candidates' metadata (small
  JSON) is read to choose, then the chosen one's parameters: nothing else is downloaded.
  Errors name `workdir` as `flag` (the trainer's --init_from reads a run this way too).
  """
  workdir = storage.location(workdir)
  with workdir.reading("read"):
    return _restore(workdir, step, flag)


def _restore(workdir: storage.Location, step: int | None, flag: str) -> Restored:
  steps = _finished_steps(workdir, flag)
  with tempfile.TemporaryDirectory(prefix="jaxchar-read-") as private:
    if step is not None:
      return _restore_step(workdir, step, steps, Path(private), flag)
    failures, tried = [], set()
    for _ in range(LISTING_ROUNDS):  # a live run may have saved new ones while we read
      metas = {}
      for candidate in sorted(set(steps) - tried):
        tried.add(candidate)
        try:
          pinned = _pin(workdir, candidate, Path(private), "meta")
        except OSError:
          continue  # deleted since listed (a live run's --keep): as if never there
        try:
          metas[candidate] = checkpoint.read_meta(workdir, candidate, pinned)
        except UserError:
          raise
        except Exception as e:  # noqa: BLE001 - reported, and the next checkpoint is tried
          _skip(workdir, candidate, e, failures, "its metadata cannot be read")
      for candidate in candidate_steps(metas):
        try:
          return _read(workdir, candidate, metas[candidate], Path(private))
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


def _skip(workdir: storage.Location, step: int, error: Exception, failures: list[str],
          what: str) -> None:
  """Records and warns of a checkpoint that failed to read, unless it was being deleted as it
  was read (then it is as if never there)."""
  if not checkpoint.is_finished(workdir, step):
    return
  cause = checkpoint.describe_error(error)
  failures.append(f"step {step}: {cause}")
  _warn(f"skipping the checkpoint at step {step} in {workdir}: {what} ({cause}); trying the "
        "next one.")


def _restore_step(workdir: storage.Location, step: int, steps: list[int], private: Path,
                  flag: str) -> Restored:
  """The checkpoint at `step`, read from a copy pinned in `private`."""
  asked = f"--step={step}" if flag == "--workdir" else f"{flag}={workdir}:{step}"
  if step not in steps:
    raise UserError(f"{asked} has no checkpoint in {workdir}; the steps saved are "
                    f"{', '.join(map(str, steps))}.")
  try:
    meta = checkpoint.read_meta(workdir, step, _pin(workdir, step, private, "meta"))
    return _read(workdir, step, meta, private)
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
