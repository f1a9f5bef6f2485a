"""Shared fixtures. Four CPU devices are forced before jax is imported, so multi-device code runs
on this machine; single-device tests pick one of them explicitly. Trained runs and the browser
are made once per session; in-process training draws no loss.png unless a test asks for
`epoch_plots`."""

import atexit
import os
import shutil
import tempfile

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  # Added to the flags given, e.g. --xla_cpu_max_isa=AVX2 to run the suite as on an older CPU.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, inherited by the tests' subprocesses: the
# tiny programs most tests run compile once instead of once per process (measured: the options
# and checkpoint tests in 112 s instead of 201 s). It starts empty every session.
# pytest-xdist's workers inherit the variable from the controller, which made the folder and
# removes it: a worker that finishes first must not empty it under the other.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="jaxchar-test-compilation-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from helpers import TINY_TEXT, GcsEmulator, tiny_config, write_tiny_text  # noqa: E402
from jaxchar import train  # noqa: E402
from jaxchar.core import corpus  # noqa: E402
from jaxchar.training import loop, plots  # noqa: E402
from jaxchar.training import state as state_lib  # noqa: E402


class _PlotsWithoutTheEpochPlot:
  """jaxchar.training.plots as the training loop sees it in tests: loss.png is not drawn after
  every epoch (a matplotlib figure per epoch of every tiny run); everything else is plots'."""

  @staticmethod
  def write_loss_plot(*args, **kwargs) -> None:
    return None

  def __getattr__(self, name):
    return getattr(plots, name)


@pytest.fixture(scope="session", autouse=True)
def no_epoch_plots():
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(loop, "plots", _PlotsWithoutTheEpochPlot())
    yield


@pytest.fixture
def epoch_plots(monkeypatch):
  """Training in this test draws loss.png after every epoch, as it does outside the tests."""
  monkeypatch.setattr(loop, "plots", plots)


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


class FakeClock:
  """A training run's clock (RunState.elapsed) that advances `step_s` each time it is read, so a
  --time_budget test does not depend on this machine's speed."""

  def __init__(self, step_s: float):
    self.step_s, self.readings, self.run = step_s, 0, None

  def elapsed(self, run) -> float:
    if run is not self.run:  # a new session of training starts its clock at elapsed_before
      self.run, self.readings = run, 0
    self.readings += 1
    return run.elapsed_before + self.readings * self.step_s


@pytest.fixture
def fake_clock(monkeypatch) -> FakeClock:
  """RunState.elapsed reads a FakeClock of 0.25 s a reading (set .step_s to change it)."""
  clock = FakeClock(0.25)
  monkeypatch.setattr(state_lib.RunState, "elapsed", lambda run: clock.elapsed(run))
  return clock


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
  """A tiny model trained for 2 epochs, shared by the sampling and serving tests."""
  root = tmp_path_factory.mktemp("tiny_run")
  train.train_and_evaluate(tiny_config(write_tiny_text(root), epochs=2), root / "run")
  return root / "run"


@pytest.fixture(scope="session")
def checkpointed_run(tmp_path_factory) -> Path:
  """A tiny run trained on this process's 4 devices with checkpoints every 15 steps (45 steps an
  epoch); --keep=3 leaves 60, 75 and 90 (epoch 2, the best). Tests that change it use a copy."""
  assert jax.local_device_count() == 4
  root = tmp_path_factory.mktemp("checkpointed_run")
  config = tiny_config(write_tiny_text(root), epochs=2, save_every_steps=15, keep=3)
  train.train_and_evaluate(config, root / "run")
  return root / "run"


def chromium(javascript: bool = True):
  """Headless Debian chromium through its chromedriver (CI installs both; skipped elsewhere)."""
  chrome = shutil.which("chromium") or shutil.which("chromium-browser")
  driver = shutil.which("chromedriver")
  if not (chrome and driver):
    if os.environ.get("CI"):
      pytest.fail("CI must install Debian's chromium and chromium-driver (.ci/run does)")
    pytest.skip("needs Debian's chromium and chromium-driver: apt install chromium "
                "chromium-driver (CI installs them)")
  from selenium import webdriver
  options = webdriver.ChromeOptions()
  options.binary_location = chrome
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,900"):
    options.add_argument(arg)
  if not javascript:
    options.add_experimental_option(
        "prefs", {"profile.managed_default_content_settings.javascript": 2})
  return webdriver.Chrome(options=options,
                          service=webdriver.ChromeService(executable_path=driver))


@pytest.fixture(scope="session")
def browser():
  """One headless Chromium for every page test of the session."""
  session = chromium()
  yield session
  session.quit()


@pytest.fixture
def browser_without_javascript():
  """Chromium with JavaScript turned off (a browser setting fixed when it starts)."""
  session = chromium(javascript=False)
  yield session
  session.quit()


@pytest.fixture(scope="session")
def gcs():
  """A GCS API emulator for the session, which this process and the processes it starts use
  (STORAGE_EMULATOR_HOST, TENSORSTORE_GCS_HTTP_URL)."""
  emulator = GcsEmulator()
  saved = {name: os.environ.get(name) for name in emulator.env}
  os.environ.update(emulator.env)
  yield emulator
  emulator.stop()
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value


@pytest.fixture
def bucket(gcs, request) -> str:
  """A new, empty bucket of the session's emulator, named after the test: its gs:// URL."""
  name = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())
  return gcs.bucket(f"t{abs(hash(request.node.nodeid)) % 10**8}-{name}"[:63].rstrip("-"))
