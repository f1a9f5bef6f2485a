"""`python -m jaxchar.export`: the page and JSON it writes, its errors, and the JavaScript model
against JAX in headless Chromium (log-probabilities, and the same characters from the same
uniforms), with the page's controls."""

import json
import os
import re
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import run_cases, run_module, tiny_config, write_tiny_text
from jaxchar import train
from jaxchar.errors import UserError
from jaxchar.core.model import fused_tensors
from jaxchar.exporting import files, weights
from jaxchar.sampling import sampler as sampler_lib
from jaxchar.sampling.sampler import cut_at_stop

PRIMES = {"short": "moe: h", "long": "barney: beer!\nmoe: no.\nhomer: hi moe.\n"}  # maxlen is 8
FORCED = "moe: hey homer.\nbarney: beer!\n"


def run_export(*args: str) -> subprocess.CompletedProcess:
  return run_module("jaxchar.export", *args)


@pytest.fixture(scope="module")
def two_layer_run(tmp_path_factory):
  """A tiny 2-layer model on embedded inputs, trained on every position with dropout and weight
  drop (training-only: the page computes the model as sampling does)."""
  root = tmp_path_factory.mktemp("two_layers")
  config = tiny_config(write_tiny_text(root), epochs=1, num_layers=2, embed_dim=6,
                       objective="every", dropout=0.2, weight_drop=0.2)
  train.train_and_evaluate(config, root / "run")
  return root / "run"


def exported(run, folder, float16=False):
  """The run's page, written by the library (the CLI is tested below)."""
  sampler = sampler_lib.load_sampler(run)
  out = folder / ("model16.html" if float16 else "model.html")
  files.export(sampler, out, "html", float16)
  return sampler, out


def jax_log_probs(sampler, prime, text, mode):
  """JAX's log p(each character of `text` | what precedes it), as the sampler's modes see it."""
  context = list(sampler.vocab.encode(sampler.clean_prime(prime)[-sampler.maxlen:]))
  forced = list(sampler.vocab.encode(text))
  ids = context + forced
  apply = lambda x, lengths=None, every=False: sampler.model.apply(  # noqa: E731
      {"params": sampler.params}, jnp.asarray(x), lengths, every_position=every)
  if mode == "stateful":  # the state carried from the context's start: one causal pass
    logits = np.asarray(apply(np.asarray([ids]), every=True))[0]
    logits = logits[len(context) - 1:len(ids) - 1]
  else:
    windows = np.zeros((len(forced), sampler.maxlen), np.int32)
    lengths = []
    for i in range(len(forced)):
      window = ids[:len(context) + i][-sampler.maxlen:]
      windows[i, :len(window)] = window
      lengths.append(len(window))
    logits = np.asarray(apply(windows, jnp.asarray(lengths, jnp.int32)))
  log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits)))
  return log_probs[np.arange(len(forced)), forced]


@pytest.mark.parametrize("model", ["1 layer, one-hot", "2 layers, embedded"])
def test_javascript_log_probabilities_equal_jaxs(model, tiny_run, two_layer_run, browser,
                                                 tmp_path):
  run = tiny_run if model.startswith("1") else two_layer_run
  sampler, page = exported(run, tmp_path)
  _, page16 = exported(run, tmp_path, float16=True)
  worst = {}
  for name, path in (("float32", page), ("float16", page16)):
    browser.get(page.as_uri() if name == "float32" else path.as_uri())
    for mode in ("window", "stateful"):
      for prime_kind, prime in PRIMES.items():
        js = browser.execute_script(
            "return jaxchar.model.logProbsAlong(arguments[0], arguments[1], arguments[2]);",
            prime, FORCED, mode)
        expected = jax_log_probs(sampler, prime, FORCED, mode)
        worst[name, mode, prime_kind] = float(np.max(np.abs(np.asarray(js) - expected)))
  print(worst)
  assert max(v for (dtype, *_), v in worst.items() if dtype == "float32") <= 1e-4, worst
  assert max(v for (dtype, *_), v in worst.items() if dtype == "float16") <= 2e-2, worst


def choose(logits, temperature, top_k, top_p, u):
  """The JavaScript `choose`, in float64: top-k, top-p (ties at the cut kept), inverse CDF."""
  scaled = np.asarray(logits, np.float64) / temperature
  ordered = np.sort(scaled)[::-1]
  cut = ordered[top_k - 1] if 0 < top_k < len(scaled) else -np.inf
  if top_p < 1:
    kept = ordered[ordered >= cut]
    weights = np.exp(kept - kept[0]) / np.exp(kept - kept[0]).sum()
    before, last = 0.0, 0
    for j, w in enumerate(weights):
      if before >= top_p:
        break
      last, before = j, before + w
    cut = max(cut, kept[last])
  weights = np.where(scaled >= cut, np.exp(scaled - scaled[scaled >= cut].max()), 0.0)
  target, chosen = u * weights.sum(), -1
  for i, w in enumerate(weights):
    if w == 0:
      continue
    chosen, target = i, target - w
    if target < 0:
      break
  return chosen


def python_generate(sampler, prime, uniforms, mode, temperature, top_k, top_p, stops):
  """Characters chosen from JAX's logits with the given uniforms (the reference for the page)."""
  context = list(sampler.vocab.encode(sampler.clean_prime(prime)[-sampler.maxlen:]))
  total = len(context) + len(uniforms)

  @jax.jit
  def next_logits(ids, count):  # fixed shapes: one compile; the LSTM is causal, so padding
    if mode == "stateful":      # after position count - 1 changes nothing before it
      every = sampler.model.apply({"params": sampler.params}, ids[None], every_position=True)
      return every[0, count - 1]
    start = jnp.maximum(count - sampler.maxlen, 0)
    window = jax.lax.dynamic_slice(jnp.concatenate([ids, jnp.zeros_like(ids)]), (start,),
                                   (sampler.maxlen,))
    return sampler.model.apply({"params": sampler.params}, window[None],
                               jnp.minimum(count, sampler.maxlen)[None])[0]

  ids, text = np.zeros(total, np.int32), ""
  ids[:len(context)] = context
  for i, u in enumerate(uniforms):
    count = len(context) + i
    chosen = choose(np.asarray(next_logits(jnp.asarray(ids), count)), temperature, top_k, top_p, u)
    ids[count] = chosen
    text += sampler.vocab.chars[chosen]
    cut, stop = cut_at_stop(text, stops)
    if stop is not None:
      return cut, stop
  return text, None


@pytest.mark.parametrize("mode, top_k, top_p, stops", [
    ("window", 0, 1.0, []), ("stateful", 4, 0.8, ["moe"]), ("window", 0, 0.6, [".\n", "!"])])
def test_the_same_uniforms_choose_the_same_characters(mode, top_k, top_p, stops, tiny_run,
                                                      browser, tmp_path):
  sampler, page = exported(tiny_run, tmp_path)
  browser.get(page.as_uri())
  uniforms = np.random.default_rng(7).random(40).tolist()
  js = browser.execute_script(
      "return jaxchar.model.generate({prime: arguments[0], length: 40, temperature: 0.9, "
      "topK: arguments[1], topP: arguments[2], stops: arguments[3], mode: arguments[4], "
      "uniforms: arguments[5]});", "Moe: ", top_k, top_p, stops, mode, uniforms)
  text, stop = python_generate(sampler, "Moe: ", uniforms, mode, 0.9, top_k, top_p, stops)
  assert (js["text"], js["stoppedBy"]) == (text, stop)
  assert len(text) == 40 or stop is not None


def test_the_cli_writes_one_self_contained_page_and_says_its_size(tiny_run, tmp_path):
  out = tmp_path / "model.html"
  result = run_export(f"--workdir={tiny_run}", f"--out={out}")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith("# checkpoint step 90 (epoch 2, validation loss ")
  assert re.fullmatch(rf"wrote {re.escape(str(out))} \(0\.\d\d MB\)", lines[1]), lines
  page = out.read_text(encoding="utf-8")
  assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched
  assert "fetch(" not in page and "<noscript>" in page
  spec = json.loads(re.search(r'id="jaxchar-model">(.*?)</script>', page, re.S).group(1))
  sampler = sampler_lib.load_sampler(tiny_run)
  assert spec["vocab"] == sampler.vocab.chars and spec["dtype"] == "float32"
  assert spec["parameters"] == sum(a.size for a in fused_tensors(sampler.params).values())


def test_json_and_module_and_float16_halving(tiny_run, tmp_path):
  sampler = sampler_lib.load_sampler(tiny_run)
  written = files.export(sampler, tmp_path / "model.json", "json", False)
  assert [p.name for p in written] == ["model.json", "jaxchar-model.js"]
  spec = json.loads(written[0].read_text(encoding="utf-8"))
  assert spec["format"] == "jaxchar-model" and spec["num_layers"] == 1
  module = written[1].read_text(encoding="utf-8")
  assert "export const {Model, choose, logSoftmax, load} = jaxcharModel;" in module
  assert weights.encoded_bytes(sampler, True) * 2 == pytest.approx(
      weights.encoded_bytes(sampler, False), rel=0.01)
  with pytest.raises(UserError, match="the JavaScript module written beside the JSON"):
    files.export(sampler, tmp_path / "jaxchar-model.js", "json", False)


def test_a_model_over_100_mb_is_refused_with_the_way_out(tiny_run, monkeypatch, tmp_path):
  sampler = sampler_lib.load_sampler(tiny_run)
  size = weights.encoded_bytes(sampler, False)
  monkeypatch.setattr(weights, "MAX_BYTES", size - 1)
  with pytest.raises(UserError, match="over the .* MB a page can reasonably load; --float16 "
                     "halves it"):
    files.export(sampler, tmp_path / "big.html", "html", False)
  monkeypatch.setattr(weights, "MAX_BYTES", size // 4)
  with pytest.raises(UserError, match="too large for a browser page even in float16"):
    files.export(sampler, tmp_path / "big.html", "html", True)
  assert not list(tmp_path.iterdir())  # nothing written


def test_bad_input_exits_2_with_one_paragraph_and_writes_nothing(tiny_run, tmp_path):
  messages = {"missing run": "does not exist; point it at a training run's folder",
              "missing folder": "the folder", "out is a folder": "is a folder"}
  cases = []
  for i, case in enumerate(messages):
    folder = tmp_path / str(i)  # short paths: the error's first line is as long as it was
    folder.mkdir()
    workdir = folder / "nowhere" if case == "missing run" else tiny_run
    out = {"missing folder": folder / "no" / "model.html", "out is a folder": folder}.get(
        case, folder / "model.html")
    cases.append([f"--workdir={workdir}", f"--out={out}"])
  # The first as its own process; the others' mains in one process.
  results = [run_export(*cases[0]), *run_cases("jaxchar.export", cases[1:])]
  for case, result in zip(messages, results, strict=True):
    assert result.returncode == 2 and result.stderr.startswith("error: "), (case, result.stderr)
    assert "Traceback" not in result.stderr
    assert messages[case] in " ".join(result.stderr.split()), (case, result.stderr)
  assert not list(tmp_path.glob("**/*.html"))


def test_the_page_writes_with_its_controls_and_stops_where_told(tiny_run, browser, tmp_path):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  _, page = exported(tiny_run, tmp_path)
  browser.get(page.as_uri())
  assert "vocabulary 15, window 8, lowercased" in browser.find_element(By.ID, "model").text
  browser.find_element(By.ID, "prime").send_keys("Moe: ")
  for field, value in (("length", "300"), ("top_p", "0.9"), ("stop", "\\n")):
    browser.find_element(By.ID, field).clear()
    browser.find_element(By.ID, field).send_keys(value)
  browser.find_element(By.ID, "generate").click()
  WebDriverWait(browser, 30).until(
      lambda b: "characters/s" in b.find_element(By.ID, "status").text)
  status = browser.find_element(By.ID, "status").text
  generated = browser.find_element(By.ID, "generated").get_attribute("textContent")
  assert 'stopped at "\\n"' in status and generated.endswith("\n") and "\n" not in generated[:-1]
  assert browser.find_element(By.ID, "shown_prime").get_attribute("textContent") == "moe: "
  browser.find_element(By.ID, "stop").clear()
  browser.find_element(By.ID, "mode").send_keys("stateful")
  browser.find_element(By.ID, "generate").click()
  WebDriverWait(browser, 30).until(
      lambda b: "the length ran out" in b.find_element(By.ID, "status").text)
  assert len(browser.find_element(By.ID, "generated").get_attribute("textContent")) == 300
  if os.environ.get("JAXCHAR_SCREENSHOT"):
    browser.save_screenshot(os.environ["JAXCHAR_SCREENSHOT"])


def test_with_javascript_off_the_page_says_it_needs_it(tiny_run, browser_without_javascript,
                                                        tmp_path):
  from selenium.webdriver.common.by import By
  _, page = exported(tiny_run, tmp_path)
  browser_without_javascript.get(page.as_uri())
  body = browser_without_javascript.find_element(By.TAG_NAME, "body").text
  assert "turn JavaScript on for this file" in body and "loading the model" in body


def test_the_page_names_prime_characters_the_model_never_saw(tiny_run, browser, tmp_path):
  """As the sampler refuses them (--unknown=error) unless told to drop them; never silently."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  _, page = exported(tiny_run, tmp_path)
  browser.get(page.as_uri())
  browser.find_element(By.ID, "prime").send_keys("Moe: {hey}")
  browser.find_element(By.ID, "length").clear()
  browser.find_element(By.ID, "length").send_keys("20")
  browser.find_element(By.ID, "generate").click()
  status = browser.find_element(By.ID, "status").text
  assert 'never saw: "{", "}". Remove them, or tick "Drop characters it never saw"' in status
  assert browser.find_element(By.ID, "generated").get_attribute("textContent") == ""
  browser.find_element(By.ID, "skip_unknown").click()
  browser.find_element(By.ID, "generate").click()
  WebDriverWait(browser, 30).until(
      lambda b: "characters/s" in b.find_element(By.ID, "status").text)
  assert browser.find_element(By.ID, "status").text.endswith(
      '; dropped from the beginning: "{", "}"')
  assert browser.find_element(By.ID, "shown_prime").get_attribute("textContent") == "moe: hey"


def test_the_pages_need_no_favicon_request(tiny_run, tmp_path):
  """An inline empty icon: the browser asks neither the server nor a file:// folder for
  /favicon.ico (a 404 in the server's log and the console)."""
  from importlib import resources
  _, page = exported(tiny_run, tmp_path)
  served = resources.files("jaxchar.serving").joinpath("page.html").read_text(encoding="utf-8")
  for html in (page.read_text(encoding="utf-8"), served):
    head = html[:html.index("</head>")]
    assert '<link rel="icon" href="data:,">' in head
