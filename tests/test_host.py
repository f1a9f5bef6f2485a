"""The CPU host rule: one JAX device per core by default, never one that breaks the batch."""

import importlib.util
import os
import subprocess
import sys

import pytest

from jaxchar import host

from helpers import run_cases, run_module, run_python

TINY = ["--maxlen=8", "--stride=2", "--hidden=16", "--epochs=1", "--steps_per_epoch=2",
        "--sample_len=0", "--eval_batch_size=64"]


def test_auto_is_one_device_per_core_or_the_largest_count_that_divides_the_batch():
  assert host.cpu_device_count(0, 128, cores=2) == 2
  assert host.cpu_device_count(0, 127, cores=2) == 1  # auto never causes an error
  assert host.cpu_device_count(0, 96, cores=8) == 6  # 8 divides 96, but into shares of 12
  assert host.cpu_device_count(0, 16, cores=2) == 1  # shares of 8 cost more than they save
  assert host.cpu_device_count(0, 32, cores=2) == 2
  assert host.cpu_device_count(0, 64, cores=1) == 1
  assert host.cpu_device_count(3, 128, cores=2) == 3  # an explicit count is taken as given


def run_trainer(tmp_path, tiny_file, args, xla_flags=None) -> subprocess.CompletedProcess:
  """The trainer as a user's shell starts it: no device count forced unless `xla_flags` says."""
  return run_module("jaxchar.train", f"--data={tiny_file}", f"--workdir={tmp_path / 'run'}",
                    *TINY, *args, devices=None, drop=("XLA_FLAGS",),
                    env={"XLA_FLAGS": xla_flags} if xla_flags else None, timeout=300)


def test_the_trainer_uses_every_core_by_default_and_says_so_first(tmp_path, tiny_file):
  result = run_trainer(tmp_path, tiny_file, ["--batch_size=32"])
  assert result.returncode == 0, result.stderr
  expected = host.cpu_device_count(0, 32)
  assert result.stdout.splitlines()[0].startswith("training in ")  # the workdir, then devices
  assert result.stdout.splitlines()[1].startswith(f"devices: {expected} x cpu in 1 process(es)")


def test_auto_keeps_a_count_forced_through_xla_flags(tmp_path, tiny_file):
  result = run_trainer(tmp_path, tiny_file, ["--batch_size=12"],
                       xla_flags=f"{host.FORCE_FLAG}=3")
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[1].startswith("devices: 3 x cpu")


def test_a_bad_explicit_count_is_a_clear_error(tmp_path, tiny_file):
  # Both mains in one process: -1 is refused before JAX starts, 5 once it has 5 devices.
  cases = {-1: "--cpu_devices=-1 must be >= 0", 5: "does not split evenly over the 5 devices"}
  results = run_cases("jaxchar.train", [
      [f"--data={tiny_file}", f"--workdir={tmp_path / 'run'}", *TINY, "--batch_size=12",
       f"--cpu_devices={count}"] for count in cases], devices=None, drop=("XLA_FLAGS",))
  for (count, expected), result in zip(cases.items(), results, strict=True):
    assert result.returncode == 2, (count, result.stderr)
    assert "Traceback" not in result.stderr
    assert expected in result.stderr, (count, result.stderr)


def test_malloc_setting_is_accepted_by_glibc():
  assert host.keep_freed_memory() is sys.platform.startswith("linux")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed: there is no TPU attempt to skip")
def test_with_libtpu_but_no_tpu_the_entry_points_go_straight_to_the_cpu(tmp_path, tiny_file):
  """Without JAX_PLATFORMS, JAX would try the TPU first and libtpu would print its notes about
  missing TPU metadata; the entry points take the CPU at once instead."""
  assert not host.tpu_hardware_present()  # this project's machines have no TPU
  drop = tuple(k for k in os.environ if k in ("JAX_PLATFORMS", "XLA_FLAGS")
               or k.startswith("TPU_") or k == "ALLOW_MULTIPLE_LIBTPU_LOAD")
  result = run_module("jaxchar.train", f"--data={tiny_file}", f"--workdir={tmp_path / 'run'}",
                      *TINY, "--batch_size=16", devices=None, drop=drop, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[1].startswith("devices: 1 x cpu") and "TPU" not in result.stderr, (
      result.stderr)
  probe = run_python("-c", "import jax; print(jax.devices())", devices=None, drop=drop,
                     timeout=120)
  assert "TPU_WORKER_HOSTNAMES" in probe.stderr  # what a plain JAX program prints here
