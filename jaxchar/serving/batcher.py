"""Many users on one accelerator: every waiting request's rows share each jitted generation call,
and the batch is formed again after every chunk of characters.

A worker thread holds the requests in progress ("jobs"). Each round it drops the jobs whose
client went away or whose deadline passed, turns new jobs' primes into generation states, then
writes the next CHUNK characters for the jobs that have had the fewest chunks so far (one mode,
at most `max_batch` rows): a short request that arrives while a long one runs waits for at most
one chunk of it, not its whole length. Batches round up to 1, 4, 16, 64, ... rows, so few shapes
are compiled: len(batch_buckets) per mode and per call kind (start, advance).

Nothing a job or its client does can stop the worker: each job's failure is its own. If the
worker itself fails, `failure` says why, every waiting job fails with WorkerFailed, and
`on_failure` is called (the server then exits non-zero, see server.py).
"""

import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from jaxchar.sampling.sampler import CHUNK, Row, Sampler
from jaxchar.serving.jobs import (Abandoned, DeadlineExceeded, Job, QueueFull, ShuttingDown,
                                  WorkerFailed, settle)

MAX_WAIT_FACTOR = 4  # an idle worker gathers a burst of requests for at most 4 x max_wait_s
log = logging.getLogger("jaxchar.serve")


def batch_buckets(max_batch: int) -> list[int]:
  """Batch sizes that are compiled: 1, 4, 16, ... below max_batch, then max_batch."""
  buckets = [1]
  while buckets[-1] * 4 < max_batch:
    buckets.append(buckets[-1] * 4)
  return sorted(set(buckets + [max_batch]))


def _bucket(value: int, buckets: list[int]) -> int:
  return next(b for b in buckets if b >= value)


class Batcher:
  """Runs submitted jobs on a worker thread, chunk by chunk, batching all that are waiting."""

  def __init__(self, sampler: Sampler, max_batch: int, max_wait_s: float = 0.005,
               max_queue: int = 256, on_failure: Callable[[BaseException], None] | None = None):
    self.sampler = sampler
    self.max_batch = max_batch
    self.max_wait_s = max_wait_s
    self.max_queue = max_queue
    self.batch_buckets = batch_buckets(max_batch)
    self.on_failure = on_failure
    self.calls = 0  # generation calls (one per chunk of a batch) so far
    self.rows_generated = 0  # rows of requests finished
    self.failure: BaseException | None = None
    self._inbox: queue.Queue[Job | None] = queue.Queue()
    self._lock = threading.Lock()
    self._in_flight = 0
    self._stop_at: float | None = None  # time.monotonic() at which unfinished jobs fail
    self._thread = threading.Thread(target=self._work, name="jaxchar-batcher", daemon=True)
    self._thread.start()

  @property
  def healthy(self) -> bool:
    return self.failure is None and self._thread.is_alive()

  def past_stop_deadline(self) -> bool:
    """Whether stop() was called and its grace period is over."""
    return self._stop_at is not None and time.monotonic() > self._stop_at

  @property
  def in_flight(self) -> int:
    """Jobs accepted and not yet finished."""
    return self._in_flight

  def submit(self, rows: list[Row], length: int, mode: str, timeout_s: float,
             on_chunk: Callable[[np.ndarray], None] | None = None,
             stops: tuple[str, ...] = ()) -> Job:
    """Queues `rows` (at most max_batch); raises a Refused error if it cannot take them. With
    `stops`, the job ends at the chunk where every row has written one of them."""
    job = Job(rows, length, mode, time.monotonic() + timeout_s, on_chunk, stops=stops)
    with self._lock:
      if self.failure is not None or not self._thread.is_alive():
        raise WorkerFailed("the generation worker has failed; the server is restarting.")
      if self._stop_at is not None:
        raise ShuttingDown("the server is shutting down.")
      if self._in_flight >= self.max_queue:
        raise QueueFull(f"the server has {self._in_flight} requests in progress, its limit "
                        "(--max_queue); retry in a moment.")
      self._in_flight += 1
    self._inbox.put(job)
    return job

  def warm_up(self, mode: str, compiled=lambda programs: None) -> None:
    """Compiles `mode`'s start and advance for every batch bucket (start-up, not first use),
    calling `compiled(2)` after each bucket's two programs."""
    row = self.sampler.row("", 1.0)
    for size in self.batch_buckets:
      self.sampler.generate_rows([row], 1, mode, pad_to=size)
      compiled(2)

  def stop(self, grace_s: float) -> None:
    """Takes no new jobs; the ones in progress may finish within grace_s, then fail."""
    with self._lock:
      if self._stop_at is None:
        self._stop_at = time.monotonic() + grace_s
    self._inbox.put(None)  # wakes an idle worker

  def close(self, grace_s: float = 0.0) -> None:
    self.stop(grace_s)
    self._thread.join(timeout=grace_s + 10)

  def _work(self) -> None:
    active: list[Job] = []
    try:
      while True:
        self._admit(active)
        active[:] = self._prune(active)
        self._start(active)
        active[:] = [job for job in active if not job.finished]
        if active:
          self._advance(self._pick(active))
        elif self._stop_at is not None and self._inbox.empty():
          return
    except BaseException as e:  # noqa: BLE001 - reported, then every waiting job fails
      self.failure = e
      if self.on_failure is None:  # else on_failure reports it
        log.error("the generation worker failed (%s: %s); failing every waiting request",
                  type(e).__name__, e)
      while True:
        try:
          job = self._inbox.get_nowait()
        except queue.Empty:
          break
        if job is not None:
          active.append(job)
      for job in active:
        self._finish(job, error=WorkerFailed(f"the generation worker failed ({e})."))
      if self.on_failure is not None:
        self.on_failure(e)

  def _admit(self, active: list[Job]) -> None:
    """Moves submitted jobs into `active`. An idle worker waits for one, then gathers the jobs
    that follow it closely: each new one extends the wait by max_wait_s, up to MAX_WAIT_FACTOR
    times max_wait_s in all, or until max_batch rows."""
    idle = not active
    if idle:
      job = self._inbox.get()
      if job is None:
        return
      active.append(job)
    start, rows = time.monotonic(), sum(len(j.rows) for j in active)
    while True:
      try:
        if idle and rows < self.max_batch:
          wait = min(self.max_wait_s, start + MAX_WAIT_FACTOR * self.max_wait_s
                     - time.monotonic())
          job = self._inbox.get(timeout=max(wait, 0))
        else:
          job = self._inbox.get_nowait()
      except queue.Empty:
        return
      if job is not None:
        active.append(job)
        rows += len(job.rows)

  def _prune(self, active: list[Job]) -> list[Job]:
    """The jobs to go on with; the others are finished with the reason."""
    now, kept = time.monotonic(), []
    for job in active:
      if job.finished:
        continue
      if job.abandoned or job.future.cancelled():
        self._finish(job, error=Abandoned())
      elif now > job.deadline:
        self._finish(job, error=DeadlineExceeded(
            "the request took longer than the server's --request_timeout_s."))
      elif self.past_stop_deadline():
        self._finish(job, error=ShuttingDown("the server shut down before the request "
                                             "finished."))
      else:
        kept.append(job)
    return kept

  def _start(self, active: list[Job]) -> None:
    """Turns the primes of jobs that have none into states, a batch per mode."""
    for mode in {job.mode for job in active if job.state is None}:
      new = [job for job in active if job.state is None and job.mode == mode]
      while new:
        batch, rows = self._fill(new)
        try:
          state = self.sampler.start_rows(self._pad(rows), mode)
        except Exception as e:  # noqa: BLE001 - this batch's requests fail, the worker goes on
          for job in batch:
            self._finish(job, error=e)
          continue
        for job, part in self._split(batch, state):
          job.state = part

  def _pick(self, active: list[Job]) -> list[Job]:
    """This round's jobs: those with the fewest chunks so far (then the oldest), in the first
    one's mode, up to max_batch rows."""
    waiting = sorted(active, key=lambda job: (job.chunks, job.order))
    mode = waiting[0].mode
    return self._fill([job for job in waiting if job.mode == mode], remove=False)[0]

  def _fill(self, jobs: list[Job], remove: bool = True) -> tuple[list[Job], list[Row]]:
    """As many of `jobs` as fit in max_batch rows (taken out of `jobs` if `remove`)."""
    batch, rows = [], []
    for job in list(jobs):
      if len(rows) + len(job.rows) <= self.max_batch:
        batch.append(job)
        rows.extend(job.rows)
        if remove:
          jobs.remove(job)
    return batch, rows

  def _pad(self, rows: list[Row]) -> list[Row]:
    return rows + [rows[0]] * (_bucket(len(rows), self.batch_buckets) - len(rows))

  @staticmethod
  def _split(batch: list[Job], state: tuple):
    start = 0
    for job in batch:
      yield job, tuple(a[start:start + len(job.rows)] for a in state)
      start += len(job.rows)

  def _advance(self, batch: list[Job]) -> None:
    """Writes the next chunk of every job in `batch` in one call."""
    rows = [row for job in batch for row in job.rows]
    chunks = [job.chunks for job in batch for _ in job.rows]
    state = tuple(np.concatenate(parts) for parts in zip(*(job.state for job in batch)))
    padding = _bucket(len(rows), self.batch_buckets) - len(rows)
    if padding:
      state = tuple(np.concatenate([a, np.repeat(a[:1], padding, axis=0)]) for a in state)
    try:
      state, ids = self.sampler.advance_rows(self._pad(rows), batch[0].mode, state,
                                             chunks + [chunks[0]] * padding)
    except Exception as e:  # noqa: BLE001 - this batch's requests fail, the worker goes on
      for job in batch:
        self._finish(job, error=e)
      return
    self.calls += 1
    start = 0
    for job, part in self._split(batch, state):
      written = ids[start:start + len(job.rows), :job.length - job.chunks * CHUNK]
      start += len(job.rows)
      job.state, job.chunks = part, job.chunks + 1
      job.written.append(written)
      if job.on_chunk is not None:
        try:
          job.on_chunk(written)
        except Exception:  # noqa: BLE001 - a client-side failure ends that job only
          job.abandon()
      if job.chunks * CHUNK >= job.length or self._all_stopped(job):
        self.rows_generated += len(job.rows)
        self._finish(job, result=np.concatenate(job.written, axis=1))

  def _all_stopped(self, job: Job) -> bool:
    """Whether every row of the job has written one of its stop strings. Only the new chunk,
    with enough of the text before it for a stop to span the boundary, is decoded: the cost
    of a round does not grow with the text written so far."""
    if not job.stops:
      return False
    overlap = max(map(len, job.stops)) - 1
    recent = np.concatenate(job.written[-(2 + overlap // CHUNK):], axis=1)
    recent = recent[:, -(job.written[-1].shape[1] + overlap):]
    for i, row in enumerate(recent):
      if i not in job.stopped and any(stop in self.sampler.vocab.decode(row)
                                      for stop in job.stops):
        job.stopped.add(i)
    return len(job.stopped) == len(job.rows)

  def _finish(self, job: Job, result: np.ndarray | None = None,
              error: BaseException | None = None) -> None:
    if job.finished:
      return
    job.finished, job.state = True, None
    with self._lock:
      self._in_flight -= 1
    settle(job, result, error)
