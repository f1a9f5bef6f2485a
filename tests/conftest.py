"""Shared fixtures. Four CPU devices are forced before jax is imported, so multi-device code runs
on this machine; single-device tests pick one of them explicitly."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from jaxchar import corpus  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def moes_text(tmp_path_factory) -> str:
  """The real corpus, obtained the way the trainer does (mirror or download, sha256-checked)."""
  path = corpus.fetch_moes(tmp_path_factory.mktemp("data") / corpus.MOES_FILENAME)
  return corpus.read_text(path)


_TINY_LINES = ["moe: hey homer.", "homer: hi moe.", "barney: beer!", "moe: no."] * 30
# A small, learnable text: a few repeated lines with a paragraph break near the end.
TINY_TEXT = "\n".join(_TINY_LINES[:100]) + "\n\n" + "\n".join(_TINY_LINES[100:]) + "\n"


def write_tiny_text(folder: Path) -> Path:
  path = folder / "tiny.txt"
  path.write_text(TINY_TEXT, encoding="utf-8")
  return path


@pytest.fixture
def tiny_text() -> str:
  return TINY_TEXT


def tiny_config(data: Path, **overrides):
  """A config that trains in seconds: hidden 16, window 8, batch 16, no samples."""
  from jaxchar.config import Config
  fields = dict(data=str(data), maxlen=8, step=2, hidden=16, batch_size=16, eval_batch_size=64,
                epochs=2, sample_len=0, temperatures=(0.5, 1.0))
  return Config(**{**fields, **overrides}).validate()


@pytest.fixture
def tiny_file(tmp_path) -> Path:
  return write_tiny_text(tmp_path)
