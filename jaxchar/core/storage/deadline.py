"""Every request to a bucket bounded: a bucket that stops answering ends the run in
`stall_s`, not never.

Each attempt of a request has a transport deadline, half of `stall_s`, that only a stall
reaches (no byte arriving): aiohttp's socket connect and read timeouts for gcsfs, curl's
low-speed limit for tensorstore (orbax's arrays), a read timeout for the lock's requests. But every client retries, with
backoff (gcsfs 6 times, tensorstore up to 32), so a stalled bucket would still hang a run for an
hour. This module watches all of them: the bucket *answers* when a response or a byte arrives;
an attempt *stalls* when its transport deadline passes. Once an attempt has stalled and nothing
has answered for `stall_s`, the process ends with one `error:` paragraph naming what it waited
for (exit 2): nothing is set aside, a checkpoint being written stays unmarked (not complete, so
never used), and the same command resumes once the bucket answers. A large write that is
progressing never stalls.

After SIGTERM or Ctrl-C the wait is short: with a request pending and no answer for
STOPPING_WAIT_S, the process ends at once (a spot VM's preemption notice gives 30 s).
"""

import os
import sys
import threading
import time
from typing import Any

from jaxchar.errors import EXIT_USER_ERROR, paragraph

STALL_S = 120.0  # the default of --storage_timeout_s
STOPPING_WAIT_S = 10.0
POLL_S = 0.5
_TENSORSTORE_METRICS = "/tensorstore/http/"


class Watch:
  """The bucket's answers and stalls in this process, and what waits on it."""

  def __init__(self):
    self.stall_s = STALL_S
    self._lock = threading.Lock()
    self._last_answer = time.monotonic()
    self._stalled = False  # an attempt stalled since the last answer
    self._pending: dict[int, tuple[str, str, float]] = {}  # token -> (what, path, since)
    self._next_token = 0
    self._stopping: tuple[str, float] | None = None  # (signal name, when)
    self._tensorstore_counts = (0, 0)  # responses, completed requests
    self._thread: threading.Thread | None = None

  def start(self) -> None:
    """Starts watching (once per process)."""
    with self._lock:
      if self._thread is None:
        self._tensorstore_counts = _tensorstore_counts()
        self._thread = threading.Thread(target=self._run, name="jaxchar-storage-deadline",
                                        daemon=True)
        self._thread.start()

  def answered(self) -> None:
    with self._lock:
      self._last_answer = time.monotonic()
      self._stalled = False

  def stalled(self) -> None:
    with self._lock:
      self._stalled = True

  def begin(self, what: str, path: str) -> int:
    with self._lock:
      self._next_token += 1
      self._pending[self._next_token] = (what, path, time.monotonic())
      return self._next_token

  def end(self, token: int) -> None:
    with self._lock:
      self._pending.pop(token, None)

  def stopping(self, signal_name: str) -> None:
    """A stop was asked for: a pending request now waits STOPPING_WAIT_S at most."""
    with self._lock:
      if self._stopping is None:
        self._stopping = (signal_name, time.monotonic())

  def _run(self) -> None:
    while True:
      time.sleep(POLL_S)
      self._follow_tensorstore()
      verdict = self.verdict(time.monotonic())
      if verdict is not None:
        message, code = verdict
        print(paragraph(message), file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)  # the main thread may be blocked in a client's wait: nothing else ends it

  def _follow_tensorstore(self) -> None:
    responses, completed = _tensorstore_counts()
    before_responses, before_completed = self._tensorstore_counts
    self._tensorstore_counts = (responses, completed)
    if responses > before_responses:
      self.answered()
    elif completed - responses > before_completed - before_responses:
      self.stalled()  # a request ended without a response: curl's deadline or a lost link

  def verdict(self, now: float) -> tuple[str, int] | None:
    """(the error, the exit code) when the process must end now, else None."""
    with self._lock:
      silent = now - self._last_answer
      # The latest wait: a background save's mark stays until the next save waits on it.
      latest = max(self._pending.values(), key=lambda p: p[2], default=None)
      if self._stopping and latest:
        name, since = self._stopping
        waited = now - max(since, self._last_answer)
        if waited >= STOPPING_WAIT_S:
          what, path, _ = latest
          return (f"{name}: Cloud Storage gave no answer for {waited:.0f} s while {what} "
                  f"{path}, so the run stops without waiting for it (a stop must not hang). Nothing "
                  "half-written is used: a checkpoint counts only once it is complete. Run the "
                  "same command again to resume from the latest complete checkpoint.",
                  128 + _signal_number(name))
      if self._stalled and silent >= self.stall_s:
        doing = (f" while {latest[0]} {latest[1]}" if latest else "")
        return (f"Cloud Storage stopped answering: no reply for {silent:.0f} s{doing} "
                f"(--storage_timeout_s={self.stall_s:g}). The run stops rather than wait: "
                "nothing was set aside, and the latest complete checkpoint is kept. Check the "
                "network and the bucket (e.g. `gcloud storage ls` on it), then rerun the same "
                "command: a training run resumes from its latest complete checkpoint.",
                EXIT_USER_ERROR)
    return None


def _signal_number(name: str) -> int:
  import signal
  return signal.Signals[name].value


def _tensorstore_counts() -> tuple[int, int]:
  """tensorstore's HTTP responses received and requests completed so far in this process."""
  try:
    import tensorstore as ts
    metrics = ts.experimental_collect_matching_metrics(_TENSORSTORE_METRICS)
  except Exception:  # noqa: BLE001 - no tensorstore metrics: only gcsfs is watched
    return 0, 0
  totals = {"response_codes": 0, "request_completed": 0}
  for metric in metrics:
    name = metric.get("name", "").rsplit("/", 1)[-1]
    if name in totals:
      totals[name] += sum(int(v.get("value", 0)) for v in metric.get("values", []))
  return totals["response_codes"], totals["request_completed"]


WATCH = Watch()


def aiohttp_trace() -> Any:
  """An aiohttp TraceConfig that tells WATCH of gcsfs's answers and stalls."""
  import asyncio

  import aiohttp

  async def answered(*_args: Any) -> None:
    WATCH.answered()

  async def failed(_session: Any, _context: Any, params: Any) -> None:
    if isinstance(params.exception, (asyncio.TimeoutError, aiohttp.ServerTimeoutError,
                                     aiohttp.ClientConnectionError)):
      WATCH.stalled()

  trace = aiohttp.TraceConfig()
  trace.on_response_chunk_received.append(answered)
  trace.on_request_end.append(answered)
  trace.on_request_exception.append(failed)
  return trace
