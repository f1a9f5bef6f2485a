"""Shared fixtures. Four CPU devices are forced before jax is imported, so multi-device code runs
on this machine; single-device tests pick one of them explicitly."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, inherited by the tests' subprocesses: the
# tiny programs most tests run compile once instead of once per process (measured: the options
# and checkpoint tests in 112 s instead of 201 s). It starts empty every session.
_CACHE = tempfile.mkdtemp(prefix="jaxchar-test-compilation-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from helpers import TINY_TEXT, tiny_config, write_tiny_text  # noqa: E402
from jaxchar import train  # noqa: E402
from jaxchar.core import corpus  # noqa: E402


@pytest.fixture(scope="session")
def moes_text(tmp_path_factory) -> str:
  """The real corpus, obtained the way the trainer does (mirror or download, sha256-checked)."""
  path = corpus.fetch_moes(tmp_path_factory.mktemp("data") / corpus.MOES_FILENAME)
  return corpus.read_text(path)


@pytest.fixture
def tiny_text() -> str:
  return TINY_TEXT


@pytest.fixture
def tiny_file(tmp_path) -> Path:
  return write_tiny_text(tmp_path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
  """A tiny model trained for 2 epochs, shared by the sampling and serving tests."""
  root = tmp_path_factory.mktemp("tiny_run")
  train.train_and_evaluate(tiny_config(write_tiny_text(root), epochs=2), root / "run")
  return root / "run"
