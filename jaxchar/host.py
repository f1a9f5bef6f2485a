"""The CPU host, set up by the entry points before JAX's backend starts: one JAX device per
core, and a malloc that keeps freed memory for the next step.

One XLA CPU device does not keep every core busy on an LSTM's small per-step matmuls; one
device per core, each with its share of the batch under `pmap`, does (BENCHMARKS.md). GPU and
TPU runs are unaffected: the setting only shapes JAX's CPU backend.
"""

import ctypes
import glob
import importlib.util
import os
import sys
from pathlib import Path

import jax

FORCE_FLAG = "--xla_force_host_platform_device_count"
GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips appear on a TPU VM's PCI bus under Google's vendor id
# Auto gives each device at least this many windows of the batch: below it the split costs more
# than it saves (launch/moe_best.flags, batch 16: 5,294 windows/s on 1 device, 4,059 on 2).
MIN_WINDOWS_PER_DEVICE = 16
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def num_cores() -> int:
  """Cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def cpu_device_count(requested: int, batch_size: int, cores: int | None = None) -> int:
  """The CPU device count for --cpu_devices=requested: itself when > 0; for 0 (auto) the
  largest count up to the number of cores that divides the global batch into shares of at
  least MIN_WINDOWS_PER_DEVICE, so auto never makes the batch check fail."""
  if requested > 0:
    return requested
  cores = num_cores() if cores is None else cores
  return max(n for n in range(1, max(cores, 1) + 1)
             if batch_size % n == 0 and (n == 1 or batch_size // n >= MIN_WINDOWS_PER_DEVICE))


def forced_by_xla_flags() -> bool:
  """Whether XLA_FLAGS already forces a host device count (the user's explicit choice)."""
  return FORCE_FLAG in os.environ.get("XLA_FLAGS", "")


def use_cpu_devices(requested: int, batch_size: int) -> int | None:
  """Gives JAX's CPU backend `cpu_device_count(...)` devices; must run before the backend
  starts. Auto (0) leaves a count forced through XLA_FLAGS alone. Returns the count set, or
  None when nothing was changed."""
  if requested == 0 and forced_by_xla_flags():
    return None
  count = cpu_device_count(requested, batch_size)
  jax.config.update("jax_num_cpu_devices", count)
  return count


def keep_freed_memory() -> bool:
  """Tells glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

  XLA's CPU runtime allocates each step's temporaries afresh; with glibc's defaults large ones
  are mapped and unmapped every step, and touching the new pages (page faults) cost the
  reference step about a third of its time on this project's machine (BENCHMARKS.md). Here
  every allocation comes from the heap (no mmap), and up to 512 MB of freed heap is kept for
  reuse. Returns False where there is no glibc (nothing changed)."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  return all(mallopt(param, value) == 1 for param, value in (
      (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 512 << 20), (_M_TOP_PAD, 64 << 20)))


def tpu_hardware_present() -> bool:
  """Whether this machine has TPU chips (any PCI device of Google's vendor id)."""
  for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      if Path(path).read_text(encoding="ascii").strip() == GOOGLE_PCI_VENDOR:
        return True
    except OSError:
      continue
  return False


def skip_absent_tpu() -> bool:
  """With libtpu installed (jax[tpu], or the test extra, for the TPU compile check) on a machine
  without TPUs or a GPU plugin, JAX would try the TPU first and libtpu would print notes about
  TPU metadata it cannot find: use the CPU at once then. A platform the user chose
  (JAX_PLATFORMS) is kept. Returns whether it chose the CPU; call before JAX's backend starts."""
  if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
    return False
  if tpu_hardware_present() or any(importlib.util.find_spec(name) for name in (
      "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin")):
    return False
  jax.config.update("jax_platforms", "cpu")
  return True
