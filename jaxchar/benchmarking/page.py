"""Characters per second of an exported page in headless Chromium, both modes:
`python -m jaxchar.bench_page --workdir=ckpt/moe` (needs selenium, Debian's chromium and
chromium-driver; BENCHMARKS.md has its output)."""

import dataclasses
import shutil
import statistics
import tempfile
from pathlib import Path

from jaxchar.choices import CheckpointChoice
from jaxchar.errors import UserError
from jaxchar.exporting import files
from jaxchar.options import option
from jaxchar.core.restore import restore


@dataclasses.dataclass(frozen=True)
class BrowserBenchConfig(CheckpointChoice):
  """What the browser benchmark takes."""

  length: int = option(400, "Characters per timed generation.")
  rounds: int = option(5, "Timed generations per mode; the median is reported.")



_TIME = """
const [mode, length] = arguments;
jaxchar.model.generate({length: 20, mode});  // warm up the JIT
const start = performance.now();
const r = jaxchar.model.generate({prime: "", length, mode, temperature: 0.5, seed: 1});
return [r.text.length, (performance.now() - start) / 1000];
"""


def _browser():
  chrome, driver = shutil.which("chromium"), shutil.which("chromedriver")
  if not (chrome and driver):
    raise UserError("the browser benchmark needs Debian's chromium and chromium-driver "
                    "(`apt install chromium chromium-driver`).")
  try:
    from selenium import webdriver
  except ImportError:
    raise UserError("the browser benchmark needs selenium: `pip install -e '.[test]'`.") from None
  settings = webdriver.ChromeOptions()
  settings.binary_location = chrome
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu"):
    settings.add_argument(arg)
  return webdriver.Chrome(options=settings,
                          service=webdriver.ChromeService(executable_path=driver))


def run_page_bench(config: BrowserBenchConfig) -> None:
  """Exports the checkpoint as float32 and float16 pages and prints each mode's rate."""
  restored = restore(config.workdir, config.step)
  browser = _browser()
  try:
    print(f"browser: {browser.capabilities.get('browserVersion')} headless; model: "
          f"{config.workdir} step {restored.step}, LSTM({restored.spec.hidden}) x "
          f"{restored.spec.num_layers}, window {restored.maxlen}")
    with tempfile.TemporaryDirectory() as folder:
      for float16 in (False, True):
        page = Path(folder) / f"model{16 if float16 else 32}.html"
        files.export(restored, page, "html", float16)
        browser.get(page.as_uri())
        size = page.stat().st_size / 2**20
        for mode in ("stateful", "window"):
          rates, seconds = [], []
          for _ in range(config.rounds):
            count, took = browser.execute_script(_TIME, mode, config.length)
            rates.append(count / took)
            seconds.append(took)
          print(f"{'float16' if float16 else 'float32'} page ({size:.2f} MB), {mode:8s}: "
                f"{statistics.median(rates):8,.0f} characters/s ({config.length} characters "
                f"in {statistics.median(seconds):.3f} s, median of {config.rounds})")
  finally:
    browser.quit()

