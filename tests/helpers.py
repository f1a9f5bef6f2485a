"""Helpers shared by the tests (fixtures are in conftest.py): the tiny text and config, the
repository root, what the resume tests compare, and a server started as a user would."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from absl import flags as absl_flags

from jaxchar import train
from jaxchar.core import checkpoint
from jaxchar.training.config import Config
from jaxchar.training.preemption import StopRequests

REPO = Path(__file__).resolve().parent.parent
# A run saved by jaxchar before checkpoint format 2 (tests/data/README.md).
FORMAT1_RUN = REPO / "tests" / "data" / "format1_run"

_TINY_LINES = ["moe: hey homer.", "homer: hi moe.", "barney: beer!", "moe: no."] * 30
# A small, learnable text: a few repeated lines with a paragraph break near the end.
TINY_TEXT = "\n".join(_TINY_LINES[:100]) + "\n\n" + "\n".join(_TINY_LINES[100:]) + "\n"


def write_tiny_text(folder: Path) -> Path:
  path = folder / "tiny.txt"
  path.write_text(TINY_TEXT, encoding="utf-8")
  return path


def tiny_config(data: Path, **overrides) -> Config:
  """A config that trains in seconds: hidden 16, window 8, batch 16, no samples."""
  fields = dict(data=str(data), maxlen=8, stride=2, hidden=16, batch_size=16, eval_batch_size=64,
                epochs=2, sample_len=0, temperatures=(0.5, 1.0))
  return Config(**{**fields, **overrides}).validate()


def final_checkpoint(workdir: Path) -> tuple[dict, dict]:
  """(state as numpy, meta) of the newest checkpoint."""
  step = checkpoint.checkpoint_steps(workdir)[-1]
  ckpts = checkpoint.Checkpoints(workdir, keep=3)
  state = ckpts.manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore())).state
  ckpts.close()
  return state, checkpoint.read_meta(workdir, step)


def assert_same_run(a: Path, b: Path) -> None:
  (state_a, meta_a), (state_b, meta_b) = final_checkpoint(a), final_checkpoint(b)
  assert meta_a["epoch_losses"] == meta_b["epoch_losses"]  # bit-for-bit float losses
  assert meta_a["val_loss"] == meta_b["val_loss"]
  leaves_a = jax.tree_util.tree_leaves_with_path(state_a)
  leaves_b = jax.tree_util.tree_leaves(state_b)
  assert len(leaves_a) == len(leaves_b)
  for (path, x), y in zip(leaves_a, leaves_b):
    assert np.array_equal(x, y), jax.tree_util.keystr(path)


class StopAfterPolls(StopRequests):
  """Behaves as if SIGTERM arrived after `polls` checks (one check per training step)."""

  def __init__(self, polls: int):
    super().__init__()
    self.remaining = polls

  @property
  def requested(self) -> bool:
    if self.signal_name is None:
      self.remaining -= 1
      if self.remaining < 0:
        self.signal_name = "SIGTERM"
    return self.signal_name is not None


def run_module(module: str, *args: str, devices: int = 1,
               timeout: int = 180) -> subprocess.CompletedProcess:
  """`python -m module args` in a fresh process on `devices` CPU devices, output captured."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_server(workdir: Path, log: Path, *flags: str) -> tuple[subprocess.Popen, int]:
  """`python -m jaxchar.serve` on one CPU device, its output in `log`; (process, port) once
  /healthz answers."""
  port = free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  with open(log, "w") as out:
    server = subprocess.Popen([sys.executable, "-m", "jaxchar.serve", f"--workdir={workdir}",
                               f"--port={port}", *flags], cwd=REPO, env=env, stdout=out,
                              stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 180
  while True:
    assert server.poll() is None, log.read_text()
    assert time.monotonic() < deadline, log.read_text()
    try:
      with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
        if b"200 OK" in probe.recv(100):
          return server, port
    except OSError:
      time.sleep(0.2)


def damage_checkpoint(folder: Path, kind: str) -> None:
  """Damages one saved checkpoint folder as a crash, a full disk or a bad copy would."""
  state = folder / "state"
  if kind == "truncated data files":
    for p in [p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"]:
      p.write_bytes(p.read_bytes()[:p.stat().st_size // 3])
  elif kind == "deleted state data":
    for p in [p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"]:
      p.unlink()
  else:  # garbage metadata
    (state / "_METADATA").write_bytes(b"\x00garbage{{not json")
    (folder / "meta" / "metadata").write_text("{garbage", encoding="utf-8")


def run_main(args: list[str]) -> int:
  """Parses `args` as the trainer's command line and runs main in-process; returns its exit code."""
  absl_flags.FLAGS.unparse_flags()
  argv = absl_flags.FLAGS(["jaxchar.train", *args])
  try:
    train.main(argv)
  except SystemExit as e:
    return e.code
  finally:
    absl_flags.FLAGS.unparse_flags()
  return 0
