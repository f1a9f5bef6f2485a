"""Scaling out: 1/2/8 forced devices and 2 processes x 2 devices match 4 devices in one process."""

import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from helpers import final_checkpoint, free_port, start_module, tiny_config, write_tiny_text
from jaxchar.core import checkpoint
from jaxchar import train

STEPS = 20
# Float32 summation order differs with the device count (pmean of per-device means); over 20
# RMSprop steps at lr 0.01 the parameters stay within this of each other.
PARAM_ATOL = 1e-5


def final_params(workdir) -> list[np.ndarray]:
  return jax.tree_util.tree_leaves(final_checkpoint(workdir)[0]["params"])


def tiny_args(tiny_file, workdir) -> list[str]:
  return [f"--data={tiny_file}", "--maxlen=8", "--stride=2", "--hidden=16", "--batch_size=16",
          "--eval_batch_size=64", "--epochs=1", f"--steps_per_epoch={STEPS}", "--sample_len=0",
          f"--workdir={workdir}"]


def start(args: list[str], devices: int) -> subprocess.Popen:
  return start_module("jaxchar.train", *args, devices=devices, env={"PYTHONUNBUFFERED": "1"},
                      start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
  try:
    return proc.communicate(timeout=timeout)[0]
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    raise


@pytest.fixture(scope="module")
def four_device_run(tmp_path_factory):
  """The reference: this test process's 4 devices, one process."""
  root = tmp_path_factory.mktemp("four")
  text_file = write_tiny_text(root)
  assert jax.local_device_count() == 4
  train.train_and_evaluate(tiny_config(text_file, epochs=1, steps_per_epoch=STEPS), root / "run")
  return text_file, final_params(root / "run")


@pytest.mark.parametrize("devices", [1, 2, 8])
def test_forced_device_counts_match_four_devices(four_device_run, tmp_path, devices):
  text_file, reference = four_device_run
  out = finish(start(tiny_args(text_file, tmp_path / "run"), devices))
  assert f"devices: {devices} x cpu in 1 process(es)" in out, out
  for a, b in zip(reference, final_params(tmp_path / "run")):
    np.testing.assert_allclose(b, a, atol=PARAM_ATOL)


def test_two_processes_of_two_devices_match_one_process_of_four(four_device_run, tmp_path):
  text_file, reference = four_device_run
  port = free_port()
  procs = [start([*tiny_args(text_file, tmp_path / "run"),
                  f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}"], devices=2) for i in range(2)]
  outputs = [finish(p) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  assert "devices: 4 x cpu in 2 process(es)" in outputs[0]
  assert "parameters identical on all 2 processes" in outputs[0]
  assert "epoch   1 |" in outputs[0] and "epoch   1 |" not in outputs[1]  # only process 0 prints
  for a, b in zip(reference, final_params(tmp_path / "run")):
    np.testing.assert_allclose(b, a, atol=PARAM_ATOL)


def test_unreachable_coordinator_is_a_clear_error(tiny_file, tmp_path):
  started = time.monotonic()
  out = finish(start([*tiny_args(tiny_file, tmp_path / "run"),
                      f"--coordinator_address=127.0.0.1:{free_port()}", "--num_processes=2",
                      "--process_id=1", "--distributed_timeout_s=3"], devices=1), timeout=60)
  assert "could not reach the coordinator (process 0)" in " ".join(out.split())
  assert "Traceback" not in out
  assert time.monotonic() - started < 45


HEARTBEAT_S = 5  # the flag's default is 30


def test_a_dead_process_stops_the_other_within_the_heartbeat_timeout(tiny_file, tmp_path):
  """kill -9 of process 1 mid-training: process 0 must exit (non-zero), not hang. JAX's
  coordination service declares a silent process dead after --heartbeat_timeout_s."""
  port = free_port()
  args = [*tiny_args(tiny_file, tmp_path / "run"), "--steps_per_epoch=0", "--epochs=200",
          "--save_every_steps=20", f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2", f"--heartbeat_timeout_s={HEARTBEAT_S}"]
  procs = [start([*args, f"--process_id={i}"], devices=2) for i in range(2)]
  deadline = time.monotonic() + 120
  while not checkpoint.checkpoint_steps(tmp_path / "run") and time.monotonic() < deadline:
    time.sleep(0.2)
  assert checkpoint.checkpoint_steps(tmp_path / "run"), "training never got going"
  os.killpg(procs[1].pid, signal.SIGKILL)
  killed = time.monotonic()
  out = finish(procs[0], timeout=90)
  assert procs[0].returncode != 0
  assert time.monotonic() - killed < HEARTBEAT_S + 45
  assert "another task died" in out or "another process of the run died" in " ".join(out.split())
  if "another process of the run died" in " ".join(out.split()):
    assert f"is declared dead after {HEARTBEAT_S} s, --heartbeat_timeout_s" in " ".join(out.split())


def test_two_processes_stop_at_one_step_and_scale_their_updates_alike_under_a_time_budget(
    tiny_file, tmp_path):
  """--time_budget's clock is process 0's, shared: the processes' cosine factors and the step
  they stop at are the same, so their parameters stay identical."""
  port = free_port()
  args = [*tiny_args(tiny_file, tmp_path / "run"), "--epochs=0", "--time_budget=8s",
          "--lr_schedule=cosine", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  procs = [start([*args, f"--process_id={i}"], devices=2) for i in range(2)]
  outputs = [finish(p) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  assert "time budget: 8s (--time_budget) reached at" in outputs[0], outputs[0]
  assert "parameters identical on all 2 processes" in outputs[0], outputs[0]
