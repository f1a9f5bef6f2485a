"""Options several commands share, each defined once and mixed into their configs."""

import dataclasses

from jaxchar.core import storage
from jaxchar.options import option

DEFAULT_WORKDIR = "ckpt/moe"  # the reference run's folder: every command's default


@dataclasses.dataclass(frozen=True)
class StorageChoice:
  """How long a command waits on a bucket (`storage.configure` applies and checks it)."""

  storage_timeout_s: float = option(
      storage.STALL_S, "Seconds a gs:// bucket may leave a request unanswered (no reply and no "
      "byte arriving, retries included) before the command stops with an error, so that a "
      "bucket that stops answering never hangs it; a transfer that is moving is never "
      "unanswered. After SIGTERM or Ctrl-C the wait is 10 s.")


@dataclasses.dataclass(frozen=True)
class CheckpointChoice(StorageChoice):
  """Which trained model to restore: the options of every reader (sample, score, export, serve)."""

  workdir: str = option(DEFAULT_WORKDIR,
                        "The training run's folder (the trainer's --workdir).")
  step: int | None = option(None, "The checkpoint to use, by the training step it was saved "
                            "at (as the trainer prints: 'checkpoint at step N'). Default: the "
                            "one with the best (lowest) validation loss; the latest if none "
                            "has one.")


@dataclasses.dataclass(frozen=True)
class CompilationCacheChoice:
  """Where compiled programs are kept from one run to the next."""

  compilation_cache: str = option("", "Folder for JAX's persistent compilation cache: a rerun "
                                  "loads what an earlier one compiled instead of compiling it "
                                  "again; empty = off. launch/*.flags turn it on for training "
                                  "(ckpt/jax_cache).")
