"""A request in progress in the batcher (a Job), and the ways it can end other than with its
text: each refusal carries the HTTP status that tells the client why."""

import concurrent.futures
import dataclasses
import itertools
from collections.abc import Callable

import numpy as np

from jaxchar.sampling.sampler import Row


class Refused(Exception):
  """A job the batcher will not run or finish; `status` is the HTTP status that says why."""

  status = 503


class QueueFull(Refused):
  pass


class ShuttingDown(Refused):
  pass


class WorkerFailed(Refused):
  pass


class DeadlineExceeded(Refused):
  status = 504


class Abandoned(Exception):
  """The job's client went away."""


_ORDER = itertools.count()


@dataclasses.dataclass(eq=False)
class Job:
  """Rows to write `length` characters for in `mode` (fewer if all write one of `stops`);
  `future` gets their ids [rows, length],
  `on_chunk` (if any) each chunk's ids [rows, n] as they are written, on the worker thread."""

  rows: list[Row]
  length: int
  mode: str
  deadline: float  # time.monotonic() after which the job fails with DeadlineExceeded
  on_chunk: Callable[[np.ndarray], None] | None = None
  future: concurrent.futures.Future = dataclasses.field(
      default_factory=concurrent.futures.Future)
  abandoned: bool = False  # set from the client's side: drop the job at the next round
  order: int = dataclasses.field(default_factory=lambda: next(_ORDER))
  state: tuple | None = None
  written: list[np.ndarray] = dataclasses.field(default_factory=list)
  chunks: int = 0
  finished: bool = False
  stops: tuple[str, ...] = ()  # the job ends once every row has written one of them
  stopped: set[int] = dataclasses.field(default_factory=set)  # rows that have

  def abandon(self) -> None:
    """Stops the job at the next chunk (its client is gone); safe from any thread."""
    self.abandoned = True


def settle(job: Job, result: np.ndarray | None = None,
           error: BaseException | None = None) -> None:
  """Hands the job its result or error, whatever its future's state."""
  try:
    if error is None:
      job.future.set_result(result)
    else:
      job.future.set_exception(error)
  except concurrent.futures.InvalidStateError:
    pass  # settled or cancelled already: nobody is waiting for it
