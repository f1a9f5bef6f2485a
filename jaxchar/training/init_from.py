"""Starting a new run from a trained one (--init_from): the base's model shape, vocabulary and
parameters, with rows for characters only the new text has initialised as a fresh model's."""

import dataclasses
from collections.abc import Collection
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxchar.core import checkpoint, storage
from jaxchar.core.data import Corpus, Vocab
from jaxchar.core.restore import restore
from jaxchar.core.spec import SHAPE, ModelSpec
from jaxchar.errors import UserError
from jaxchar.training import text
from jaxchar.training.config import Config, parse_init_from


@dataclasses.dataclass(frozen=True)
class Base:
  """The trained run a new one starts from: which checkpoint, its metadata and parameters."""

  spec: str  # --init_from as given
  workdir: Any  # a pathlib.Path, or an epath.Path for gs://
  step: int
  meta: dict
  params: Any  # host numpy arrays
  model_spec: ModelSpec

  @property
  def vocab(self) -> Vocab:
    return Vocab(self.model_spec.vocab)

  def shape(self, name: str) -> Any:
    return getattr(self.model_spec, name)


def load_base(spec: str) -> Base:
  """The checkpoint --init_from names: its best (as the sampler chooses) unless a step is given,
  with the sampler's fallback past damaged ones and its errors (naming --init_from)."""
  workdir, step = parse_init_from(spec)
  restored = restore(workdir, step, flag="--init_from")
  return Base(spec, storage.location(workdir), restored.step, restored.meta, jax.device_get(restored.params),
              restored.spec)


def adopt_shape(config: Config, base: Base, given: Collection[str]) -> Config:
  """`config` with the base's model shape; UserError naming both values where a flag in
  `given` (those set on the command line or in a flagfile) contradicts it."""
  clashes = [f"--{name}={_flag_value(getattr(config, name))} (flag) vs "
             f"{_flag_value(base.shape(name))} ({base.workdir})"
             for name in SHAPE if name in given and getattr(config, name) != base.shape(name)]
  if clashes:
    raise UserError(
        f"--init_from={base.spec}: the model's shape comes from its checkpoint, and "
        f"{'; '.join(clashes)}. Leave those flags out (a flagfile that sets them included), or "
        "give the base's values.")
  return dataclasses.replace(config, **{name: base.shape(name) for name in SHAPE})


def _flag_value(value: Any) -> str:
  return str(value).lower() if isinstance(value, bool) else str(value)


def vocabulary(base: Base, text: str, policy: str) -> tuple[Vocab, str]:
  """The new run's vocabulary for `text` (already lowercased if the model is): the base's ids
  kept, characters only `text` has appended; and those characters. UserError under strict."""
  vocab, new = base.vocab.extended(text)
  if new and policy == "strict":
    raise UserError(
        f"--init_vocab=strict: --data has {len(new)} character(s) that the model in "
        f"{base.workdir} never saw: {_listing(new)}. Remove them from the text, or leave out "
        "--init_vocab=strict to add them to the vocabulary (their rows start untrained).")
  return vocab, new


def _listing(chars: str, limit: int = 20) -> str:
  shown = ", ".join(repr(c) for c in chars[:limit])
  return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


def describe(base: Base, new: str) -> str:
  """The run's first line about where it starts from."""
  val = base.meta.get("val_loss")
  scored = f", validation loss {val:.4f} nats" if val is not None else ""
  added = f" + {len(new)} new ({_listing(new)})" if new else " (no new characters)"
  return (f"init_from: parameters of {base.workdir} step {base.step} (epoch "
          f"{base.meta.get('epoch')}{scored}); optimizer, schedule and step start fresh; "
          f"vocabulary: {base.vocab.size} from {base.workdir}{added}")


# New characters making up this share of the text (by count) leave little of the base to use.
NEW_SHARE_WARNING = 0.2


def carry_over_warning(base: Base, new: str, corpus: Corpus) -> str | None:
  """A warning when characters new to the base make up much of the new text: their rows start
  untrained, and the base's parameters have little to say about them."""
  if not new:
    return None
  share = corpus.share_from(base.vocab.size)
  if share < NEW_SHARE_WARNING and len(new) <= base.vocab.size:
    return None
  return (f"warning: {len(new):,} characters of --data are new to {base.workdir} (which knows "
          f"{base.vocab.size:,}), {share:.0%} of the text by count; their input and output rows start "
          "untrained, so little of the base carries over and this run may do no better than one "
          "from scratch (compare a run without --init_from).")


def origin(base: Base, new: str) -> dict:
  """What the new run's checkpoints record of where it started."""
  return {"spec": base.spec, "workdir": str(base.workdir), "step": base.step,
          "val_loss": base.meta.get("val_loss"), "base_vocab_size": base.vocab.size,
          "new_symbols": new}


def start_params(fresh: Any, base_params: Any, base_vocab_size: int) -> Any:
  """The base's parameters in the shapes of `fresh` (a fresh model with the extended
  vocabulary): every base row kept at its id; rows and columns for new characters from
  `fresh`."""
  def merge(path, new, old):
    new, old = np.asarray(new), np.asarray(old)
    if new.shape == old.shape:
      return old
    axes = [a for a, (n, o) in enumerate(zip(new.shape, old.shape)) if n != o]
    if (len(new.shape) != len(old.shape) or len(axes) != 1
        or old.shape[axes[0]] != base_vocab_size or new.shape[axes[0]] < base_vocab_size):
      raise ValueError(f"{jax.tree_util.keystr(path)}: {old.shape} cannot grow to {new.shape}")
    merged = new.copy()
    merged[(slice(None),) * axes[0] + (slice(0, base_vocab_size),)] = old
    return merged

  return jax.tree_util.tree_map_with_path(merge, fresh, base_params)


def check_workdir(workdir: Path, base: Base) -> dict | None:
  """The recorded origin of the run in `workdir`, None when it has no checkpoint; UserError
  when its run did not start from `base`'s folder (--init_from would be ignored)."""
  steps = checkpoint.checkpoint_steps(workdir)
  if not steps:
    return None
  try:
    recorded = checkpoint.read_meta(workdir, steps[-1]).get("init_from")
  except UserError:
    raise
  except Exception:  # noqa: BLE001 - a damaged latest checkpoint: the resume sets it aside
    return {}
  if recorded and (storage.location(recorded["workdir"]).absolute()
                   == storage.location(base.workdir).absolute()):
    return recorded
  began = f"from {recorded['workdir']}" if recorded else "from scratch"
  raise UserError(
      f"--workdir={workdir} already holds checkpoints of its own run (started {began}), so "
      f"--init_from={base.spec} would be ignored: a workdir with checkpoints resumes them. Use a "
      f"new --workdir for the fine-tuning run, or add --restart to move that run aside (kept "
      f"under {workdir}/replaced/) and start from {base.workdir}, or leave out --init_from to "
      "resume it.")


def preflight(config: Config, workdir: Path, base: Base, cache_dir=None) -> None:
  """The checks that must stop a run before it writes anything: a workdir whose run did not
  start from `base` (unless --restart), and new characters under --init_vocab=strict."""
  if not config.restart:
    check_workdir(workdir, base)
  if config.init_vocab == "strict":
    encoded, _ = text.encoded_text(config, text.cache_folder(workdir, cache_dir))
    vocabulary(base, encoded.present, config.init_vocab)
