"""Many processes: jax.distributed start-up, which process writes, and agreeing on a stop."""

import contextlib
import hashlib
import os
import socket
import sys
import time
import textwrap
from typing import NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from jaxchar.core.terminal import shown
from jaxchar.errors import UserError

SHUTDOWN_TIMEOUT_S = 60


def _cluster_detected() -> bool:
  """A multi-process SLURM job or a multi-host Cloud TPU slice, from their environment."""
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return slurm or "," in tpu_hosts


def requested(mode: str, coordinator_address: str | None) -> bool:
  """Whether `initialize` will start a multi-process run."""
  return mode == "on" or (mode == "auto" and (coordinator_address is not None
                                              or _cluster_detected()))


def initialize(mode: str, coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, timeout_s: int, heartbeat_timeout_s: int) -> None:
  """Starts jax.distributed when asked to (or, in 'auto', when a cluster is detected).

  Must run before anything touches a JAX device. mode: 'auto', 'on' (JAX's own cluster
  detection) or 'off'. timeout_s bounds the wait for every process to reach the coordinator;
  a process silent for heartbeat_timeout_s is declared dead.
  """
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
    raise UserError("--coordinator_address, --num_processes and --process_id go together: give "
                    "all three (e.g. 127.0.0.1:12355, 2, 0) or none.")
  if not requested(mode, coordinator_address):
    return
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise UserError(f"--process_id={process_id} must be in [0, --num_processes={num_processes}).")
  if coordinator_address and process_id:
    _wait_for_coordinator(coordinator_address, timeout_s)
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id, initialization_timeout=timeout_s,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
        shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
  except Exception as e:  # the runtime raises several types for an unreachable coordinator
    where = coordinator_address or "the cluster's coordinator"
    raise UserError(
        f"could not start the multi-process run through {where} within {timeout_s} s "
        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Check that every process was "
        "started with the same --coordinator_address and --num_processes and a distinct "
        "--process_id, and that process 0's host and port are reachable.") from None


def _wait_for_coordinator(address: str, timeout_s: int) -> None:
  """Fails with a clear error if process 0's port never opens (JAX would abort the process)."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise UserError(f"--coordinator_address={address} is not host:port, e.g. 10.0.0.2:12355.")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise UserError(
            f"could not reach the coordinator (process 0) at {address} within {timeout_s} s "
            f"({e.strerror or e}). Start process 0 first (or together), check the address and "
            "port and any firewall, or raise --distributed_timeout_s.") from None
      time.sleep(0.5)


def is_primary() -> bool:
  """Only process 0 prints progress and writes metrics, samples and logs."""
  return jax.process_index() == 0


def say(*args) -> None:
  """Prints on process 0 only (control characters escaped: it may name a file or a text's
  characters)."""
  if is_primary():
    print(*(shown(str(arg)) for arg in args), flush=True)


def process_slice(global_rows: np.ndarray) -> np.ndarray:
  """This process's rows of a [num_global_devices, ...] array, in local-device order."""
  local = jax.local_device_count()
  start = jax.process_index() * local
  return global_rows[start:start + local]


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any (a collective: all processes must call)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(multihost_utils.process_allgather(jnp.asarray(flag, jnp.int32)).max())


def from_primary(value: float) -> float:
  """Process 0's `value` on every process (a collective: all processes must call)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  return float(multihost_utils.broadcast_one_to_all(np.float64(value)))


def exit_on_peer_failure(error: Exception, heartbeat_timeout_s: int) -> NoReturn:
  """Reports a collective that failed because another process died, and exits at once.

  os._exit skips jax.distributed's shutdown barrier, which would otherwise abort the process
  with a C++ stack dump once a peer is gone.
  """
  message = (
      f"error: process {jax.process_index()} of {jax.process_count()} stopped: a collective "
      f"operation failed ({type(error).__name__}: {str(error).splitlines()[0][:160]}), which "
      f"almost always means another process of the run died or was preempted (a silent process "
      f"is declared dead after {heartbeat_timeout_s} s, --heartbeat_timeout_s). Check the other processes' logs, then "
      "rerun the same commands on every host: training resumes from the last checkpoint.")
  print(textwrap.fill(message, width=100, break_long_words=False, break_on_hyphens=False),
        file=sys.stderr, flush=True)
  os._exit(3)


@contextlib.contextmanager
def primary_holds(lock):
  """Holds `lock` (acquire/release) on process 0 for the block; every process fails together
  when process 0 cannot take it."""
  error = None
  if is_primary():
    try:
      lock.acquire()
    except UserError as e:
      error = e
  if any_process(error is not None) and error is None:
    raise UserError("process 0 could not lock the run's --workdir (see its error); "
                    "another training run is using it.")
  if error is not None:
    raise error
  try:
    yield lock
  finally:
    if is_primary():
      lock.release()


def params_fingerprint(params) -> str:
  """A short hash of the parameter bytes, to check every process holds the same model."""
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(jax.device_get(params)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:16]


def check_processes_agree(params) -> None:
  """Raises UserError unless every process ended with the same parameters (says so if so)."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  mine = np.frombuffer(bytes.fromhex(params_fingerprint(params)), np.uint8)
  every = np.asarray(multihost_utils.process_allgather(mine))
  if not (every == every[0]).all():
    raise UserError("the processes ended with different parameters; this is a bug in the "
                    "multi-process setup, please report it with the command lines used.")
  if is_primary():
    print(f"parameters identical on all {jax.process_count()} processes "
          f"(fingerprint {params_fingerprint(params)})", flush=True)
