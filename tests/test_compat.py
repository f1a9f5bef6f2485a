"""The release checks, part of the `lowest` subset (`pytest -m lowest`, which .ci/run's
lowest-versions job runs; the newest-versions job runs the whole suite): a tiny run trained,
interrupted and resumed bit for bit, then sampled, scored and exported through the entry points
and compile-checked for a TPU, and no warning comes from jaxchar's own code (a deprecated call
would)."""

import importlib.util
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import pytest

from helpers import REPO, StopAfterPolls, assert_same_run, run_module, tiny_config, write_tiny_text
from jaxchar import train
from jaxchar.training import loop

pytestmark = pytest.mark.lowest
JAXCHAR = str(REPO / "jaxchar")


def jaxchar_warnings(records) -> list[str]:
  """The recorded warnings raised at a line of jaxchar's own code."""
  return [f"{Path(w.filename).relative_to(REPO)}:{w.lineno}: {w.category.__name__}: {w.message}"
          for w in records if w.filename.startswith(JAXCHAR)]


def warning_lines(stderr: str) -> list[str]:
  """Lines of a subprocess's stderr (run with PYTHONWARNINGS=always) naming a jaxchar file."""
  return [line for line in stderr.splitlines() if JAXCHAR in line and "Warning" in line]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, list]:
  """(uninterrupted run, the same run stopped by SIGTERM mid-epoch and resumed, warnings)."""
  root = tmp_path_factory.mktemp("compat")
  config = tiny_config(write_tiny_text(root), epochs=2, save_every_steps=7)
  with warnings.catch_warnings(record=True) as records, pytest.MonkeyPatch.context() as patch:
    warnings.simplefilter("always")
    train.train_and_evaluate(config, root / "full")
    patch.setattr(loop, "StopRequests", lambda: StopAfterPolls(30))  # epoch 1 has 45 steps
    with pytest.raises(SystemExit) as stopped:
      train.train_and_evaluate(config, root / "resumed")
    assert stopped.value.code == 128 + signal.SIGTERM
    patch.undo()
    assert [h["epoch"] for h in train.train_and_evaluate(config, root / "resumed")] == [1, 2]
  return root / "full", root / "resumed", list(records)


def test_a_resumed_run_equals_an_uninterrupted_one_without_warnings(runs):
  full, resumed, records = runs
  assert jax.local_device_count() == 4
  assert_same_run(full, resumed)
  assert jaxchar_warnings(records) == []


@pytest.mark.parametrize("module,args,expect", [
    ("jaxchar.sample", ["--length=30", "--temperature=0.5,1.0"], "----- temperature 1.0"),
    ("jaxchar.score", ["--data={text}"], "nats per character"),
    ("jaxchar.export", ["--out={tmp}/model.html"], "wrote "),
])
def test_the_entry_points_work_on_it_without_warnings(runs, tmp_path, monkeypatch, module, args,
                                                     expect):
  monkeypatch.setenv("PYTHONWARNINGS", "always")
  text = runs[1].parent / "tiny.txt"
  result = run_module(module, f"--workdir={runs[1]}",
                      *(a.format(text=text, tmp=tmp_path) for a in args))
  assert result.returncode == 0, result.stderr
  assert expect in result.stdout
  assert warning_lines(result.stderr) == []


LIBTPU = importlib.util.find_spec("libtpu") is not None
if not LIBTPU and os.environ.get("CI"):
  raise RuntimeError("libtpu is not installed: on CI the TPU compile check must run")


@pytest.mark.skipif(not LIBTPU, reason="libtpu is not installed (pip install -e '.[test]')")
def test_the_run_compiles_for_a_tpu_without_warnings(tmp_path):
  """In a process of its own, as `launch/tpu_vm.sh` runs it (libtpu loads once per process)."""
  text = write_tiny_text(tmp_path)
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  result = subprocess.run(
      [sys.executable, "-m", "jaxchar.compile_check", "--topology=v5e-8", f"--data={text}",
       "--maxlen=8", "--hidden=16", "--batch_size=16", "--sample_len=20"], cwd=REPO,
      env={**env, "PYTHONWARNINGS": "always"}, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-1].startswith("fits: every program compiled for v5e-8")
  assert warning_lines(result.stderr) == []
