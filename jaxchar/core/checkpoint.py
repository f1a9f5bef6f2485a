"""Orbax checkpoints: one host copy of the train state plus a JSON item with what sampling needs.

Layout: <workdir>/checkpoints/<step>/{state,meta}. The last `keep` checkpoints and the best by
validation loss are kept. Only a checkpoint that is provably damaged (files missing, truncated
or unreadable) is moved to <workdir>/corrupt_checkpoints/ (never deleted), and the next older
one is used; any other failure to restore (an I/O error, memory, a parameter tree that does not
match) stops with an error and touches nothing.
"""

import datetime
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

import jaxchar
from jaxchar.core import storage
from jaxchar.core.storage import writing
from jaxchar.errors import UserError

# 3: the model's shape only in "spec", the rest of the training config in "config". 2: "spec",
# and the whole config (the shape again). 1: flat shape keys beside "config".
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
CORRUPT = "corrupt_checkpoints"
# On object storage orbax writes a checkpoint in place and adds this file once it is complete
# (locally it renames a temporary folder instead).
COMMITTED_MARKER = "commit_success.txt"


def _checkpoint_dir(workdir: Any) -> Any:
  return storage.absolute(workdir) / "checkpoints"


def _manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
  best = policies.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                        keep_checkpoints_without_metrics=False)
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policies.AnyPreservationPolicy([policies.LatestN(keep), best]))
  return ocp.CheckpointManager(_checkpoint_dir(workdir), options=options,
                               item_names=("state", "meta"))


class Checkpoints:
  """Saving and resuming a training run's checkpoints in `workdir`."""

  def __init__(self, workdir: Any, keep: int):
    self.workdir = storage.location(workdir)
    self.keep = keep
    self.manager = _manager(self.workdir, keep)
    self.guard: Callable[[], None] = lambda: None  # raises UserError when saving must stop

  def save(self, step: int, state: dict, meta: dict, val_loss: float | None = None) -> None:
    """Starts an asynchronous save of host (numpy) `state` and JSON `meta` at `step`.

    A failed write (this one, or the previous one still in the background) raises UserError."""
    meta = {**meta, "format_version": FORMAT_VERSION, "jaxchar_version": jaxchar.__version__}
    self.guard()
    metrics = {"val_loss": val_loss} if val_loss is not None else None
    with writing("a checkpoint", _checkpoint_dir(self.workdir)):
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)), metrics=metrics)

  def wait(self) -> None:
    """Waits for the save in progress; raises UserError if its write failed."""
    with writing("a checkpoint", _checkpoint_dir(self.workdir)):
      self.manager.wait_until_finished()

  def close(self) -> None:
    with writing("a checkpoint", _checkpoint_dir(self.workdir)):
      self.manager.close()

  def restore_latest(self, template: dict,
                     check: Callable[[dict], None]) -> tuple[dict, dict] | None:
    """(state, meta) of the newest checkpoint that restores; None when the workdir has never
    held one. `check(meta)` raises UserError, touching nothing, for a run with other settings.

    A provably damaged checkpoint is set aside and the previous one tried; any other failure
    raises UserError with its cause and changes nothing. When every checkpoint was damaged, or
    only set-aside ones remain, it raises too: a run never starts afresh over them unless
    --restart moves them aside."""
    while self.manager.all_steps():
      step = self.manager.latest_step()
      try:
        meta = read_meta(self.workdir, step)
      except UserError:
        raise
      except Exception as e:  # noqa: BLE001 - classified: damage or a stop
        self._damaged_or_raise(step, e)
        continue
      check(meta)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=template)))
        return restored.state, meta
      except Exception as e:  # noqa: BLE001 - classified: damage, mismatch or a stop
        self._damaged_or_raise(step, e, probe=True)
    set_aside = storage.names_in(self.workdir / CORRUPT)
    if set_aside:
      raise UserError(
          f"{self.workdir} holds no checkpoint that restores: {len(set_aside)} damaged one(s) "
          f"were moved to {self.workdir / CORRUPT}. Rather than start over silently, the run "
          "stops: add --restart to start afresh (the earlier run's outputs are moved aside, not "
          "deleted), or use a new --workdir.")
    return None

  def _damaged_or_raise(self, step: int, error: Exception, probe: bool = False) -> None:
    """Sets the checkpoint at `step` aside if `error` shows it damaged; else raises UserError.

    With `probe`, the checkpoint is read again without this run's parameter tree: if that
    works, its files are sound and the tree does not match (a stop, not damage)."""
    if probe and is_damage(error):
      try:
        read_raw(self.workdir, step)
      except Exception as raw_error:  # noqa: BLE001 - classified below
        error = raw_error
      else:
        raise UserError(
            f"the checkpoint at step {step} in {self.workdir} is readable, but its parameters "
            f"do not match this run's model ({describe_error(error)}). It was written by "
            "another jaxchar version or model code. Nothing was changed: resume it with the "
            "jaxchar that wrote it, or start afresh with --restart or a new --workdir.") from None
    if not is_damage(error):
      raise UserError(
          f"the checkpoint at step {step} in {self.workdir} could not be read "
          f"({describe_error(error)}). That is not damage to the checkpoint (an I/O error, "
          "permissions or memory), so nothing was moved or changed: fix the cause and rerun the "
          "same command to resume.") from None
    moved = self._set_aside(step)
    if jax.process_index() == 0:
      print(f"warning: the checkpoint at step {step} is damaged ({describe_error(error)}); "
            f"moved it to {moved} and falling back to the previous one.", flush=True)

  def _set_aside(self, step: int) -> Any:
    self.manager.close()
    dest = self.workdir / CORRUPT / f"{step}-{_now()}"
    if jax.process_index() == 0:
      with writing("a damaged checkpoint set aside", dest):
        storage.move(_checkpoint_dir(self.workdir) / str(step), dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"jaxchar: set aside checkpoint {step}")
    self.manager = _manager(self.workdir, self.keep)
    return dest


RUN_OUTPUTS = ("checkpoints", CORRUPT, "metrics.jsonl", "tensorboard", "samples.md",
               "loss.png")

# Failures that say something about the machine, not the checkpoint's files (tensorstore's
# status codes and the OS's messages): never a reason to set a checkpoint aside.
_ENVIRONMENT_FAILURES = ("PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
                         "DEADLINE_EXCEEDED", "CANCELLED", "ABORTED", "Input/output error",
                         "No space left", "Permission denied", "Cannot allocate memory",
                         "out of memory", "Stale file handle")


def is_damage(error: BaseException) -> bool:
  """Whether a failure to read a checkpoint shows its files missing, truncated or unreadable
  (rather than an I/O error, permissions or memory)."""
  if isinstance(error, MemoryError):
    return False
  if isinstance(error, OSError):
    return error.errno == errno.ENOENT or isinstance(error, FileNotFoundError)
  return not any(code in str(error) for code in _ENVIRONMENT_FAILURES)


def describe_error(error: BaseException) -> str:
  return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"


def read_raw(workdir: Any, step: int) -> Any:
  """One checkpoint's state as saved, without a template (numpy arrays): proof that its files
  are sound."""
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
      _checkpoint_dir(workdir) / str(step) / "state")


def set_aside_run(workdir: Any) -> Any:
  """Moves a run's outputs to <workdir>/replaced/<time>/ (for --restart); None if none."""
  workdir = storage.location(workdir)
  with writing("the previous run's outputs set aside", workdir):
    present = [name for name in RUN_OUTPUTS if name in storage.names_in(workdir)]
    if not present:
      return None
    dest = workdir / "replaced" / _now()
    for name in present:
      storage.move(workdir / name, dest / name)
  return dest


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _link_or_copy(source: str, target: str) -> None:
  try:
    os.link(source, target)
  except OSError:  # another file system, or links not allowed: a copy
    shutil.copy2(source, target)


def snapshot(workdir: Any, step: int, into: Path) -> Path:
  """A private copy of one checkpoint's folder inside `into`, made of hard links (copies
  across file systems; downloaded from a bucket): its files outlive a running trainer
  deleting the checkpoint, so a reader cannot lose the race however often it saves. Raises
  OSError if the checkpoint vanished (or was being deleted) while it was being linked."""
  target = Path(into) / str(step)
  try:
    if storage.is_remote(workdir):
      try:
        storage.download(_checkpoint_dir(workdir) / str(step), target)
      except FileNotFoundError:
        raise  # deleted since listed
      except Exception as e:  # noqa: BLE001 - the network or the bucket: not the checkpoint
        raise storage.bucket_error(workdir, "read a checkpoint from", e) from None
    else:
      shutil.copytree(_checkpoint_dir(workdir) / str(step), target, copy_function=_link_or_copy)
  except shutil.Error as e:  # some files vanished midway: the checkpoint is gone
    raise FileNotFoundError(f"the checkpoint at step {step} changed while it was read "
                            f"({str(e)[:200]})") from None
  missing = [item for item in ("state", "meta") if not (target / item).is_dir()]
  if missing:  # the trainer's deletion had begun before the listing
    raise FileNotFoundError(f"the checkpoint at step {step} has no {' or '.join(missing)}")
  return target


def read_meta(workdir: Any, step: int, folder: Path | None = None) -> dict:
  """The JSON metadata of one checkpoint (read from `folder`, its snapshot, if given), checked
  for a compatible format.

  Read from its own folder, not through a CheckpointManager, which would list (and read) every
  checkpoint and fail when a running trainer deletes another one meanwhile."""
  folder = _checkpoint_dir(workdir) / str(step) if folder is None else Path(folder)
  meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
      folder / "meta", args=ocp.args.JsonRestore())
  if meta.get("format_version") not in READABLE_FORMATS:
    raise UserError(
        f"the checkpoint at step {step} in {workdir} was written by jaxchar "
        f"{meta.get('jaxchar_version', '(unknown)')} in checkpoint format "
        f"{meta.get('format_version')}; this jaxchar ({jaxchar.__version__}) reads formats "
        f"{', '.join(map(str, READABLE_FORMATS))}. Use that jaxchar version to sample from it, or retrain.")
  return meta


def read_metas(workdir: Any, steps: list[int]) -> dict[int, dict]:
  """The JSON metadata of several checkpoints."""
  return {step: read_meta(workdir, step) for step in steps}


def checkpoint_steps(workdir: Any) -> list[int]:
  """Steps of the finished checkpoints in `workdir`, oldest first.

  Listed directly rather than through orbax, which reads each one's metadata and fails when a
  running trainer deletes one meanwhile. Orbax writes <step>.orbax-checkpoint-tmp-* and renames
  it to <step> once complete, so a folder named by a number alone is finished."""
  folder = _checkpoint_dir(workdir)
  if storage.is_remote(workdir):  # a numbered folder is complete once it holds the marker
    with storage.requests_to(workdir, "list the checkpoints in"):
      return sorted(int(name) for name in storage.names_in(folder)
                    if name.isdigit() and storage.exists(folder / name / COMMITTED_MARKER))
  try:
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())
  except FileNotFoundError:
    return []


def has_step(workdir: Any, step: int) -> bool:
  """Whether the checkpoint at `step` still exists (a live run's --keep deletes old ones)."""
  if storage.is_remote(workdir):
    return storage.exists(_checkpoint_dir(workdir) / str(step) / COMMITTED_MARKER)
  return (_checkpoint_dir(workdir) / str(step)).is_dir()


def unfinished_checkpoints(workdir: Any) -> list[str]:
  """Checkpoints still being written (or left half-written): orbax's temporary folders, or
  on a bucket the numbered folders without their marker."""
  folder = _checkpoint_dir(workdir)
  if storage.is_remote(workdir):
    finished = set(map(str, checkpoint_steps(workdir)))
    return sorted(name for name in storage.names_in(folder) if name.isdigit()
                  and name not in finished)
  return sorted(p.name for p in folder.glob("*.orbax-checkpoint-tmp*")) if folder.is_dir() else []


def restore_params(workdir: Any, step: int, params_template: Any,
                   folder: Path | None = None) -> Any:
  """Only the parameters of one checkpoint (read from `folder`, its snapshot, if given; no
  optimizer state), as host numpy arrays."""
  folder = _checkpoint_dir(workdir) / str(step) if folder is None else Path(folder)
  restored = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
      folder / "state",
      args=ocp.args.PyTreeRestore(item={"params": params_template}, partial_restore=True))
  return restored["params"]
