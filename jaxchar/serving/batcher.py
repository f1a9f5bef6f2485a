"""Many users on one accelerator: requests that arrive together share one jitted generation call,
each a row with its own prime, temperature, top-k and key.

A worker thread takes the first waiting job, gathers the jobs that follow it each within
`max_wait_s` of the last (up to 4 x max_wait_s and `max_batch` rows), and runs one call per
(mode, length bucket). Lengths round up to a
power of two (from 64) and batches to 1, 4, 16, 64, ... rows, so few shapes are ever compiled:
len(length_buckets) x len(batch_buckets) per mode.
"""

import concurrent.futures
import dataclasses
import queue
import threading
import time

from jaxchar.sampling.sampler import Row, Sampler

MIN_LENGTH_BUCKET = 64
MAX_WAIT_FACTOR = 4  # a burst of requests is gathered for at most 4 x max_wait_s


def length_buckets(max_length: int) -> list[int]:
  """Generated lengths that are compiled: powers of two from 64 up to cover max_length."""
  buckets = [MIN_LENGTH_BUCKET]
  while buckets[-1] < max_length:
    buckets.append(buckets[-1] * 2)
  return buckets


def batch_buckets(max_batch: int) -> list[int]:
  """Batch sizes that are compiled: 1, 4, 16, ... below max_batch, then max_batch."""
  buckets = [1]
  while buckets[-1] * 4 < max_batch:
    buckets.append(buckets[-1] * 4)
  return sorted(set(buckets + [max_batch]))


def _bucket(value: int, buckets: list[int]) -> int:
  return next(b for b in buckets if b >= value)


@dataclasses.dataclass
class Job:
  """Rows to generate `length` characters for in `mode`; `future` gets ids [rows, length]."""

  rows: list[Row]
  length: int
  mode: str
  future: concurrent.futures.Future = dataclasses.field(
      default_factory=concurrent.futures.Future)


class Batcher:
  """Runs submitted jobs on a worker thread, batching the ones that arrive together."""

  def __init__(self, sampler: Sampler, max_batch: int, max_length: int,
               max_wait_s: float = 0.005):
    self.sampler = sampler
    self.max_batch = max_batch
    self.max_wait_s = max_wait_s
    self.length_buckets = length_buckets(max_length)
    self.batch_buckets = batch_buckets(max_batch)
    self.calls = 0  # generation calls so far (one per batch)
    self.rows_generated = 0
    self._queue: queue.Queue[Job | None] = queue.Queue()
    self._thread = threading.Thread(target=self._work, name="jaxchar-batcher", daemon=True)
    self._thread.start()

  def submit(self, rows: list[Row], length: int, mode: str) -> concurrent.futures.Future:
    """Queues `rows` (at most max_batch) and returns a future of their ids [rows, length]."""
    job = Job(rows, length, mode)
    self._queue.put(job)
    return job.future

  def warm_up(self, mode: str, length: int) -> None:
    """Compiles `mode` at `length`'s bucket for every batch bucket (start-up, not first use)."""
    row = self.sampler.row("", 1.0)
    for size in self.batch_buckets:
      self.sampler.generate_rows([row], _bucket(length, self.length_buckets), mode, pad_to=size)

  def close(self) -> None:
    self._queue.put(None)
    self._thread.join(timeout=10)

  def _gather(self, first: Job) -> list[Job]:
    """`first` and the jobs that follow it closely: each new one extends the wait by
    max_wait_s, up to MAX_WAIT_FACTOR times max_wait_s in all, or until max_batch rows."""
    jobs, rows = [first], len(first.rows)
    start = time.monotonic()
    while rows < self.max_batch:
      timeout = min(self.max_wait_s, start + MAX_WAIT_FACTOR * self.max_wait_s - time.monotonic())
      try:
        job = self._queue.get(timeout=max(timeout, 0))
      except queue.Empty:
        break
      if job is None:  # closing: finish what was gathered first
        self._queue.put(None)
        break
      jobs.append(job)
      rows += len(job.rows)
    return jobs

  def _work(self) -> None:
    while (first := self._queue.get()) is not None:
      groups: dict[tuple[str, int], list[Job]] = {}
      for job in self._gather(first):
        groups.setdefault((job.mode, _bucket(job.length, self.length_buckets)), []).append(job)
      for (mode, length), jobs in groups.items():
        while jobs:  # at most max_batch rows per call; jobs are never split
          batch, size = [], 0
          while jobs and (not batch or size + len(jobs[0].rows) <= self.max_batch):
            size += len(jobs[0].rows)
            batch.append(jobs.pop(0))
          self._run(batch, mode, length, size)

  def _run(self, jobs: list[Job], mode: str, length: int, size: int) -> None:
    rows = [row for job in jobs for row in job.rows]
    try:
      ids = self.sampler.generate_rows(rows, length, mode,
                                       pad_to=_bucket(size, self.batch_buckets))
    except Exception as e:  # noqa: BLE001 - handed to the waiting requests
      for job in jobs:
        job.future.set_exception(e)
      return
    self.calls += 1
    self.rows_generated += len(rows)
    start = 0
    for job in jobs:
      job.future.set_result(ids[start:start + len(job.rows), :job.length])
      start += len(job.rows)
