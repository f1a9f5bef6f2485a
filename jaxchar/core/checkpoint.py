"""Orbax checkpoints: one host copy of the train state plus a JSON item with what sampling needs.

Layout: <workdir>/checkpoints/<step>/{params,optimizer,meta}: the parameters apart from the
optimizer's state and step, so that a reader downloads only what it uses (formats 1 to 3 hold
both in one "state" item, which is still read). The last `keep` checkpoints and the best by
validation loss are kept; the losses that decide it are read back from the checkpoints' own
metadata, so a resumed run keeps its best too. Only a checkpoint that is provably damaged
(files missing, truncated or unreadable) is moved to <workdir>/corrupt_checkpoints/ (never
deleted), and the next older one is used; any other failure to restore (an I/O error, memory, a
parameter tree that does not match) stops with an error and touches nothing. A checkpoint
counts once orbax has finished it (renamed from its temporary folder on a disk, marked by
commit_success.txt in a bucket); an unfinished one is never read, and the trainer removes it.
"""

import datetime
import errno
from collections.abc import Callable, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

import jaxchar
from jaxchar.core import storage
from jaxchar.errors import UserError

# 4: the parameters and the optimizer's state in items of their own. 3: the model's shape only in
# "spec", the rest of the training config in "config". 2: "spec", and the whole config (the shape
# again). 1: flat shape keys beside "config".
FORMAT_VERSION = 4
READABLE_FORMATS = (1, 2, 3, 4)
PARAMS, OPTIMIZER, STATE = "params", "optimizer", "state"  # STATE: both, formats 1 to 3
STREAM = "stream"  # --carry_state: the streams' LSTM carries, where the run resumes mid-epoch
CORRUPT = "corrupt_checkpoints"


def folder(workdir: Any) -> storage.Location:
  """<workdir>/checkpoints."""
  return storage.location(workdir).absolute() / "checkpoints"


def step_folder(workdir: Any, step: int) -> storage.Location:
  return folder(workdir) / str(step)


class LatestAndBest:
  """orbax's preservation policy: the latest `keep` checkpoints and the best by validation loss
  (`losses`: step -> loss, from the checkpoints' metadata and this run's saves)."""

  def __init__(self, keep: int, losses: dict[int, float]):
    self.keep, self.losses = keep, losses

  def should_preserve(self, checkpoints: Sequence[Any], *,
                      context: policies.PreservationContext) -> Sequence[bool]:
    steps = [c.step for c in checkpoints]
    kept = set(sorted(steps)[-self.keep:])
    scored = [(self.losses[s], s) for s in steps if s in self.losses]
    if scored:
      kept.add(min(scored)[1])
    return [s in kept for s in steps]


def saved_losses(workdir: Any) -> dict[int, float]:
  """step -> validation loss of the finished checkpoints in `workdir` that have one."""
  losses = {}
  for step in checkpoint_steps(workdir):
    try:
      loss = read_meta(workdir, step).get("val_loss")
    except UserError:
      raise
    except Exception:  # noqa: BLE001 - damaged: restoring decides what to do with it
      continue
    if loss is not None:
      losses[step] = loss
  return losses


class Checkpoints:
  """Saving and resuming a training run's checkpoints in `workdir`."""

  def __init__(self, workdir: Any, keep: int):
    self.workdir = storage.location(workdir)
    self.folder = folder(self.workdir)
    self.policy = LatestAndBest(keep, saved_losses(self.workdir))
    self.manager = self._manager()
    self.guard: Callable[[], None] = lambda: None  # raises UserError when saving must stop
    self._saving: Any = None  # the storage wait of the save in the background

  def _manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(preservation_policy=self.policy,
                                           cleanup_tmp_directories=True)
    with self.folder.waiting("opening the checkpoints in"):
      return ocp.CheckpointManager(self.folder.orbax, options=options)

  def save(self, step: int, state: dict, meta: dict, val_loss: float | None = None) -> None:
    """Starts an asynchronous save of host (numpy) `state` ({"params", "opt_state", "step"},
    and "carries" for a --carry_state run) and JSON `meta` at `step`.

    A failed write (this one, or the previous one still in the background) raises UserError."""
    meta = {**meta, "format_version": FORMAT_VERSION, "jaxchar_version": jaxchar.__version__}
    self.guard()
    if val_loss is not None:
      self.policy.losses[step] = val_loss
    self.wait()
    with self.folder.writing("a checkpoint"), self.folder.waiting(
        f"saving the checkpoint at step {step} to"):
      self.manager.save(step, args=ocp.args.Composite(**{
          PARAMS: ocp.args.PyTreeSave(state["params"]),
          OPTIMIZER: ocp.args.PyTreeSave(_optimizer_part(state)),
          **({STREAM: ocp.args.PyTreeSave(state["carries"])} if "carries" in state else {}),
          "meta": ocp.args.JsonSave(meta)}))
    self._saving = self.folder.begin_waiting(f"saving the checkpoint at step {step} to")

  def wait(self) -> None:
    """Waits for the save in progress; raises UserError if its write failed."""
    with self.folder.writing("a checkpoint"), self.folder.waiting("saving a checkpoint to"):
      self.manager.wait_until_finished()
    self.folder.end_waiting(self._saving)

  def close(self) -> None:
    with self.folder.writing("a checkpoint"), self.folder.waiting("saving a checkpoint to"):
      self.manager.close()
    self.folder.end_waiting(self._saving)

  def restore_latest(self, template: dict,
                     check: Callable[[dict], None]) -> tuple[dict, dict] | None:
    """(state, meta) of the newest checkpoint that restores; None when the workdir has never
    held one. `check(meta)` raises UserError, touching nothing, for a run with other settings.

    A provably damaged checkpoint is set aside and the previous one tried; any other failure
    raises UserError with its cause and changes nothing. When every checkpoint was damaged, or
    only set-aside ones remain, it raises too: a run never starts afresh over them unless
    --restart moves them aside."""
    while steps := checkpoint_steps(self.workdir):
      step = steps[-1]
      try:
        meta = read_meta(self.workdir, step)
      except UserError:
        raise
      except Exception as e:  # noqa: BLE001 - classified: damage or a stop
        self._damaged_or_raise(step, e)
        continue
      check(meta)
      try:
        with self.folder.waiting(f"restoring the checkpoint at step {step} from"):
          if meta["format_version"] >= 4:
            streams = {STREAM: ocp.args.PyTreeRestore(item=template["carries"])
                       } if "carries" in template else {}
            restored = self.manager.restore(step, args=ocp.args.Composite(**{
                PARAMS: ocp.args.PyTreeRestore(item=template["params"]),
                OPTIMIZER: ocp.args.PyTreeRestore(item=_optimizer_part(template)), **streams}))
            carries = {"carries": restored[STREAM]} if streams else {}
            return {"params": restored[PARAMS], **restored[OPTIMIZER], **carries}, meta
          restored = self.manager.restore(step, args=ocp.args.Composite(**{
              STATE: ocp.args.PyTreeRestore(item=template)}))
        return restored[STATE], meta
      except Exception as e:  # noqa: BLE001 - classified: damage, mismatch or a stop
        self._damaged_or_raise(step, e, probe=True)
    set_aside = (self.workdir / CORRUPT).names()
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
        read_raw(step_folder(self.workdir, step))
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

  def _set_aside(self, step: int) -> storage.Location:
    self.manager.close()
    dest = self.workdir / CORRUPT / f"{step}-{_now()}"
    if jax.process_index() == 0:
      with dest.writing("a damaged checkpoint set aside"):
        step_folder(self.workdir, step).move_to(dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"jaxchar: set aside checkpoint {step}")
    self.manager = self._manager()
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


def _optimizer_part(state: dict) -> dict:
  return {"opt_state": state["opt_state"], "step": state["step"]}


def params_item(checkpoint: storage.Location) -> str:
  """The item holding a checkpoint's parameters: their own, or (before format 4) the state."""
  return PARAMS if (checkpoint / PARAMS).is_dir() else STATE


def state_items(checkpoint: storage.Location) -> tuple[str, ...]:
  """The items a checkpoint holds its state in: (params, optimizer), or (state,) before
  format 4."""
  return (PARAMS, OPTIMIZER) if (checkpoint / PARAMS).is_dir() else (STATE,)


def read_raw(checkpoint: storage.Location) -> dict:
  """One checkpoint's state as saved ({"params", "opt_state", "step"}), without a template
  (numpy arrays): proof that its files are sound."""
  reader = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  with checkpoint.waiting("reading"):
    items = state_items(checkpoint)
    if items == (STATE,):
      return reader.restore((checkpoint / STATE).orbax)
    return {"params": reader.restore((checkpoint / PARAMS).orbax),
            **reader.restore((checkpoint / OPTIMIZER).orbax)}


def set_aside_run(workdir: Any) -> storage.Location | None:
  """Moves a run's outputs to <workdir>/replaced/<time>/ (for --restart); None if none."""
  workdir = storage.location(workdir)
  with workdir.writing("the previous run's outputs set aside"):
    present = [name for name in RUN_OUTPUTS if name in workdir.names()]
    if not present:
      return None
    dest = workdir / "replaced" / _now()
    for name in present:
      (workdir / name).move_to(dest / name)
  return dest


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def read_meta(workdir: Any, step: int, checkpoint: storage.Location | None = None) -> dict:
  """The JSON metadata of one checkpoint (read from `checkpoint`, its pinned copy, if given),
  checked for a compatible format.

  Read from its own folder, not through a CheckpointManager, which would list (and read) every
  checkpoint and fail when a running trainer deletes another one meanwhile."""
  checkpoint = checkpoint or step_folder(workdir, step)
  with checkpoint.waiting("reading"):
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
        (checkpoint / "meta").orbax, args=ocp.args.JsonRestore())
  if meta.get("format_version") not in READABLE_FORMATS:
    raise UserError(
        f"the checkpoint at step {step} in {workdir} was written by jaxchar "
        f"{meta.get('jaxchar_version', '(unknown)')} in checkpoint format "
        f"{meta.get('format_version')}; this jaxchar ({jaxchar.__version__}) reads formats "
        f"{', '.join(map(str, READABLE_FORMATS))}. Use that jaxchar version to sample from it, or retrain.")
  return meta


def checkpoint_steps(workdir: Any) -> list[int]:
  """Steps of the finished checkpoints in `workdir`, oldest first.

  Listed by orbax's rule for a finished step folder (no temporary name on a disk, its marker
  in a bucket), without reading them: a CheckpointManager reads each one's metadata and fails
  when a running trainer deletes one meanwhile."""
  checkpoints = folder(workdir)
  with checkpoints.reading("list the checkpoints in"), checkpoints.waiting("listing"):
    return sorted(ocp.path.step.checkpoint_steps(checkpoints.orbax))


def unfinished_checkpoints(workdir: Any) -> list[str]:
  """Checkpoints still being written (or left half-written by a stopped writer)."""
  checkpoints = folder(workdir)
  with checkpoints.reading("list the checkpoints in"), checkpoints.waiting("listing"):
    if not checkpoints.is_dir():
      return []
    return sorted(ocp.path.step.tmp_checkpoints(checkpoints.orbax))


def restore_params(checkpoint: storage.Location, params_template: Any) -> Any:
  """Only the parameters of one checkpoint, as host numpy arrays: their item alone (before
  format 4, the parameters' part of the state)."""
  reader = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  with checkpoint.waiting("reading the parameters of"):
    if state_items(checkpoint) == (PARAMS, OPTIMIZER):
      return reader.restore((checkpoint / PARAMS).orbax,
                            args=ocp.args.PyTreeRestore(item=params_template))
    restored = reader.restore(
        (checkpoint / STATE).orbax,
        args=ocp.args.PyTreeRestore(item={"params": params_template}, partial_restore=True))
  return restored["params"]


def is_finished(workdir: Any, step: int) -> bool:
  """Whether the checkpoint at `step` (still) exists, finished (a live run's --keep deletes
  old ones)."""
  checkpoint = step_folder(workdir, step)
  with checkpoint.reading("read"), checkpoint.waiting("reading"):
    return checkpoint.exists() and ocp.path.step.is_path_finalized(checkpoint.orbax)
