"""Orbax checkpoints: one host copy of the train state plus a JSON item with what sampling needs.

Layout: <workdir>/checkpoints/<step>/{state,meta}. The last `keep` checkpoints and the best by
validation loss are kept. A checkpoint that fails to restore is moved to
<workdir>/corrupt_checkpoints/ (never deleted) and the next older one is used.
"""

import datetime
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

import jaxchar
from jaxchar.core.data import Corpus
from jaxchar.errors import UserError, writing

FORMAT_VERSION = 1  # bump when the saved layout changes incompatibly


def _checkpoint_dir(workdir: Path) -> Path:
  return Path(workdir).resolve() / "checkpoints"


def _manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
  best = policies.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                        keep_checkpoints_without_metrics=False)
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policies.AnyPreservationPolicy([policies.LatestN(keep), best]))
  return ocp.CheckpointManager(_checkpoint_dir(workdir), options=options,
                               item_names=("state", "meta"))


class Checkpoints:
  """Saving and resuming a training run's checkpoints in `workdir`."""

  def __init__(self, workdir: Path, keep: int):
    self.workdir = Path(workdir)
    self.keep = keep
    self.manager = _manager(self.workdir, keep)

  def save(self, step: int, state: dict, meta: dict, val_loss: float | None = None) -> None:
    """Starts an asynchronous save of host (numpy) `state` and JSON `meta` at `step`.

    A failed write (this one, or the previous one still in the background) raises UserError."""
    meta = {**meta, "format_version": FORMAT_VERSION, "jaxchar_version": jaxchar.__version__}
    metrics = {"val_loss": val_loss} if val_loss is not None else None
    with writing("a checkpoint", _checkpoint_dir(self.workdir)):
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)), metrics=metrics)

  def wait(self) -> None:
    """Waits for the save in progress; raises UserError if its write failed."""
    with writing("a checkpoint", _checkpoint_dir(self.workdir)):
      self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()

  def restore_latest(self, template: dict, run_meta: dict) -> tuple[dict, dict] | None:
    """(state, meta) of the newest checkpoint that restores; None when there is none.

    Raises UserError, touching nothing, when it is from a run with other settings."""
    while self.manager.all_steps():
      step = self.manager.latest_step()
      try:
        meta = read_meta(self.workdir, step)
        check_resumable(meta, run_meta, self.workdir)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=template)))
        return restored.state, meta
      except UserError:
        raise
      except Exception as e:  # orbax raises many types for truncated or missing files
        moved = self._set_aside(step)
        if jax.process_index() == 0:
          print(f"warning: the checkpoint at step {step} is incomplete or corrupt "
                f"({type(e).__name__}: {str(e)[:200]}); moved it to {moved} and falling back "
                "to the previous one.", flush=True)
    return None

  def _set_aside(self, step: int) -> Path:
    self.manager.close()
    dest = self.workdir / "corrupt_checkpoints" / f"{step}-{_now()}"
    if jax.process_index() == 0:
      dest.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(_checkpoint_dir(self.workdir) / str(step)), dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"jaxchar: set aside checkpoint {step}")
    self.manager = _manager(self.workdir, self.keep)
    return dest


RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "samples.md", "loss.png")


def set_aside_run(workdir: Path) -> Path | None:
  """Moves a run's outputs to <workdir>/replaced/<time>/ (for --restart); None if none."""
  present = [Path(workdir) / name for name in RUN_OUTPUTS if (Path(workdir) / name).exists()]
  if not present:
    return None
  dest = Path(workdir) / "replaced" / _now()
  dest.mkdir(parents=True)
  for path in present:
    shutil.move(str(path), dest / path.name)
  return dest


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _link_or_copy(source: str, target: str) -> None:
  try:
    os.link(source, target)
  except OSError:  # another file system, or links not allowed: a copy
    shutil.copy2(source, target)


def snapshot(workdir: Path, step: int, into: Path) -> Path:
  """A private copy of one checkpoint's folder inside `into`, made of hard links (copies
  across file systems): its files outlive a running trainer deleting the checkpoint, so a
  reader cannot lose the race however often it saves. Raises OSError if the checkpoint
  vanished (or was being deleted) while it was being linked."""
  target = Path(into) / str(step)
  try:
    shutil.copytree(_checkpoint_dir(workdir) / str(step), target, copy_function=_link_or_copy)
  except shutil.Error as e:  # some files vanished midway: the checkpoint is gone
    raise FileNotFoundError(f"the checkpoint at step {step} changed while it was read "
                            f"({str(e)[:200]})") from None
  missing = [item for item in ("state", "meta") if not (target / item).is_dir()]
  if missing:  # the trainer's deletion had begun before the listing
    raise FileNotFoundError(f"the checkpoint at step {step} has no {' or '.join(missing)}")
  return target


def read_meta(workdir: Path, step: int, folder: Path | None = None) -> dict:
  """The JSON metadata of one checkpoint (read from `folder`, its snapshot, if given), checked
  for a compatible format.

  Read from its own folder, not through a CheckpointManager, which would list (and read) every
  checkpoint and fail when a running trainer deletes another one meanwhile."""
  folder = _checkpoint_dir(workdir) / str(step) if folder is None else Path(folder)
  meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
      folder / "meta", args=ocp.args.JsonRestore())
  if meta.get("format_version") != FORMAT_VERSION:
    raise UserError(
        f"the checkpoint at step {step} in {workdir} was written by jaxchar "
        f"{meta.get('jaxchar_version', '(unknown)')} in checkpoint format "
        f"{meta.get('format_version')}; this jaxchar ({jaxchar.__version__}) reads format "
        f"{FORMAT_VERSION}. Use that jaxchar version to sample from it, or retrain.")
  return meta


def read_metas(workdir: Path, steps: list[int]) -> dict[int, dict]:
  """The JSON metadata of several checkpoints."""
  return {step: read_meta(workdir, step) for step in steps}


def checkpoint_steps(workdir: Path) -> list[int]:
  """Steps of the finished checkpoints in `workdir`, oldest first.

  Listed directly rather than through orbax, which reads each one's metadata and fails when a
  running trainer deletes one meanwhile. Orbax writes <step>.orbax-checkpoint-tmp-* and renames
  it to <step> once complete, so a folder named by a number alone is finished."""
  try:
    return sorted(int(p.name) for p in _checkpoint_dir(workdir).iterdir()
                  if p.name.isdigit() and p.is_dir())
  except FileNotFoundError:
    return []


def has_step(workdir: Path, step: int) -> bool:
  """Whether the checkpoint at `step` still exists (a live run's --keep deletes old ones)."""
  return (_checkpoint_dir(workdir) / str(step)).is_dir()


def unfinished_checkpoints(workdir: Path) -> list[Path]:
  """Checkpoints still being written (or left half-written): orbax's temporary folders."""
  folder = _checkpoint_dir(workdir)
  return sorted(folder.glob("*.orbax-checkpoint-tmp*")) if folder.is_dir() else []


def restore_params(workdir: Path, step: int, params_template: Any,
                   folder: Path | None = None) -> Any:
  """Only the parameters of one checkpoint (read from `folder`, its snapshot, if given; no
  optimizer state), as host numpy arrays."""
  folder = _checkpoint_dir(workdir) / str(step) if folder is None else Path(folder)
  restored = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
      folder / "state",
      args=ocp.args.PyTreeRestore(item={"params": params_template}, partial_restore=True))
  return restored["params"]


# Settings added after format 1 began, with the values that checkpoints written before them
# were trained with (the reference's): history, so not tied to today's defaults.
OPTION_DEFAULTS = {"num_layers": 1, "embed_dim": 0, "optimizer": "rmsprop",
                    "lr_schedule": "constant", "clip_norm": 0.0}
_OPTION_KEYS = tuple(OPTION_DEFAULTS)
# Settings that fix the meaning of a checkpoint's parameters and data position.
_RESUME_KEYS = ("vocab", "corpus_sha256", "lowercase", "maxlen", "hidden", "step", "batch_size",
                "val_fraction", "seed") + _OPTION_KEYS


def run_metadata(config, corpus: Corpus) -> dict:
  """What a checkpoint must carry besides the state (given the run's training Config): enough
  to sample and to resume safely."""
  return {"vocab": corpus.vocab.chars, "corpus_sha256": corpus.sha256,
          "corpus_chars": corpus.num_chars,
          "lowercase": config.lowercase, "maxlen": config.maxlen, "hidden": config.hidden,
          "vocab_size": corpus.vocab.size, "step": config.step, "batch_size": config.batch_size,
          "val_fraction": config.val_fraction, "seed": config.seed,
          **{key: getattr(config, key) for key in _OPTION_KEYS}, "config": asdict(config)}


def check_resumable(saved: dict, run_meta: dict, workdir: Path) -> None:
  """Raises UserError when the saved run's settings differ from this run's in _RESUME_KEYS."""
  saved = {**OPTION_DEFAULTS, **saved}
  diffs = [f"{k} {_short(saved.get(k))} (checkpoint) vs {_short(run_meta[k])} (now)"
           for k in _RESUME_KEYS if saved.get(k) != run_meta[k]]
  if diffs:
    raise UserError(
        f"{workdir} holds checkpoints of a different run, so it cannot be resumed: "
        f"{'; '.join(diffs)}. Rerun with the same settings, or start afresh with --restart "
        "(existing checkpoints are moved aside, not deleted) or a new --workdir.")


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 24 else text[:21] + "...'"
