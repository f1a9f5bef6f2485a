"""`python -m jaxchar.serve`: API round trips, the SSE stream, every bad request, batching, and
the page in a real headless browser."""

import json
import math
import os
import re
import threading

import jax
import numpy as np
import pytest
from fastapi.testclient import TestClient

from helpers import start_server
from jaxchar.sampling import sampler as sampler_lib
from jaxchar.scoring import scorer
from jaxchar.serving.batcher import Batcher, batch_buckets
from jaxchar.serving.app import create_app
from jaxchar.serving.request_checks import Limits


@pytest.fixture(scope="module")
def workdir(tiny_run):
  return tiny_run


@pytest.fixture(scope="module")
def served(workdir):
  """(client, batcher, sampler): the app on the tiny model; batches gather for 100 ms."""
  sampler = sampler_lib.load_sampler(workdir)
  batcher = Batcher(sampler, max_batch=8, max_wait_s=0.1)
  app = create_app(sampler, batcher, Limits(max_length=500, max_prime=100, max_batch=8))
  with TestClient(app) as client:
    yield client, batcher, sampler
  batcher.close()


def test_buckets_keep_compiled_shapes_few():
  assert batch_buckets(64) == [1, 4, 16, 64] and batch_buckets(10) == [1, 4, 10]


@pytest.mark.lowest
def test_generate_round_trip_matches_the_sampler(served):
  client, _, sampler = served
  reply = client.post("/api/generate", json={"prime": "MOE: ", "length": 40, "num_samples": 3,
                                             "temperature": 0.7, "seed": 5})
  assert reply.status_code == 200, reply.text
  body = reply.json()
  assert body["prime"] == "moe: " and body["step"] == sampler.step and body["chars_per_s"] > 0
  assert [len(s) for s in body["samples"]] == [40, 40, 40]
  assert len(set(body["samples"])) == 3  # each sample has its own key
  # The same generation code as jaxchar.sample: the rows, generated directly, give the same text.
  rows = [sampler.row("moe: ", 0.7, 0, seed=5, index=i) for i in range(3)]
  direct = [sampler.vocab.decode(r) for r in sampler.generate_rows(rows, 40, "window")]
  assert body["samples"] == direct
  again = client.post("/api/generate", json={"prime": "MOE: ", "length": 40, "num_samples": 3,
                                             "temperature": 0.7, "seed": 5}).json()
  assert again["samples"] == body["samples"]  # a seed gives the same text whatever the batch


def test_info_and_health(served):
  client, _, sampler = served
  info = client.get("/api/info").json()
  assert info["vocab_size"] == sampler.vocab.size == 15 and info["step"] == sampler.step
  assert info["corpus_chars"] == 1621 and info["val_loss"] > 0 and info["maxlen"] == 8
  assert client.get("/healthz").json() == {"ok": True, "step": sampler.step, "in_flight": 0}


def read_events(text: str) -> list[tuple[str, dict]]:
  events = []
  for block in text.strip().split("\n\n"):
    lines = dict(line.split(": ", 1) for line in block.splitlines())
    events.append((lines["event"], json.loads(lines["data"])))
  return events


def test_stream_sends_the_prime_then_chunks_then_the_whole_text(served):
  client, _, _ = served
  with client.stream("GET", "/api/stream", params={"prime": "homer: ", "length": 150,
                                                   "temperature": 0.5, "seed": 3}) as reply:
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = read_events("".join(reply.iter_text()))
  kinds = [kind for kind, _ in events]
  assert kinds == ["prime", "chunk", "chunk", "chunk", "done"]  # 64 + 64 + 22 characters
  assert events[0][1] == {"prime": "homer: "}
  chunks = "".join(data["text"] for kind, data in events if kind == "chunk")
  assert len(chunks) == 150 and events[-1][1]["text"] == chunks


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b"x" * (64 * 1024 + 1), 413, "over 64 KB"),
    ({"length": 0}, 400, "length=0 must be from 1 to 500 \\(--max_length\\)"),
    ({"length": 501}, 400, "length=501 must be from 1 to 500"),
    ({"temperature": 0}, 400, "temperature=0 must be a positive number"),
    ({"temperature": "hot"}, 400, "temperature must be a number"),
    ({"top_k": -1}, 400, "top_k=-1 must be from 0 \\(off\\) to the model's vocabulary size, 15"),
    ({"top_k": 16}, 400, "top_k=16 must be from 0"),
    ({"prime": "m" * 101}, 400, "at most 100 are allowed"),
    ({"prime": "moe: zebra"}, 400, "never saw in training: 'z'"),
    ({"mode": "beam"}, 400, "mode='beam' must be one of window, stateful"),
    ({"num_samples": 9}, 400, "num_samples=9 must be from 1 to 8 \\(--max_batch\\)"),
    ({"colour": "red"}, 400, "unknown field\\(s\\) colour"),
    ([1, 2], 400, "must be a JSON object"),
])
def test_every_bad_request_is_a_clear_4xx_and_the_server_keeps_serving(served, body, status,
                                                                      message):
  client, _, _ = served
  if isinstance(body, bytes):
    reply = client.post("/api/generate", content=body,
                        headers={"Content-Type": "application/json"})
  else:
    reply = client.post("/api/generate", json=body)
  assert reply.status_code == status, reply.text
  assert re.search(message, reply.json()["error"]), reply.json()
  assert client.post("/api/generate", json={"length": 5}).status_code == 200


def test_score_gives_the_scorers_figures_and_a_log_probability_per_character(served):
  client, _, sampler = served
  text = "MOE: hey homer.\nbarney: beer€!\n"
  for from_start in (False, True):
    reply = client.post("/api/score", json={"text": text, "from_start": from_start})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    direct = scorer.score(sampler, scorer.prepare(text, sampler.vocab, True), from_start,
                          devices=jax.local_devices()[:1])
    assert body["nats_per_char"] == pytest.approx(direct.nats_per_char, abs=1e-5)
    assert body["step"] == sampler.step and body["excluded"] == {"€": 1}
    assert body["characters"] == len(text) and body["scored"] == len(direct.log_probs)
    expected = [None] * len(text)
    for position, log_prob in zip(direct.positions.tolist(), direct.log_probs.tolist()):
      expected[position] = pytest.approx(log_prob, abs=1e-4)
    assert body["log_probs"] == expected
    assert body["log_probs"][text.index("€")] is None
    assert (body["log_probs"][0] is None) and (body["log_probs"][1] is None) != from_start


@pytest.mark.parametrize("body, status, message", [
    ({"text": "moe: hey homer. barney: beer!"[:7]}, 400, "too few to score.*from_start"),
    ({"text": "ЖЖЖЖ", "from_start": True}, 400, "no character the model knows"),
    ({"text": ""}, 400, "text must be a non-empty string"),
    ({"text": 5}, 400, "text must be a non-empty string"),
    ({"text": "moe: hey", "from_start": "yes"}, 400, "from_start must be true or false"),
    ({"text": "m" * 20_001}, 400, "at most 20,000 are scored per request"),
    ({"text": "moe", "prime": "x"}, 400, "unknown field\\(s\\) prime"),
    (["moe"], 400, "must be a JSON object"),
    (b"text=moe", 415, "Content-Type: application/json"),
])
def test_every_bad_score_request_is_a_clear_4xx(served, body, status, message):
  client, _, _ = served
  if isinstance(body, bytes):
    reply = client.post("/api/score", content=body,
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
  else:
    reply = client.post("/api/score", json=body)
  assert reply.status_code == status, reply.text
  assert re.search(message, reply.json()["error"]), reply.json()


def test_bad_streams_and_unknown_routes(served):
  client, _, _ = served
  reply = client.get("/api/stream", params={"length": "many"})
  assert reply.status_code == 400 and "length must be a number" in reply.json()["error"]
  reply = client.get("/api/stream", params={"prime": "zz"})
  assert reply.status_code == 400 and "never saw" in reply.json()["error"]
  reply = client.get("/etc/passwd")
  assert reply.status_code == 404 and "no route GET /etc/passwd" in reply.json()["error"]
  assert client.get("/api/generate").status_code == 405
  assert client.get("/healthz").status_code == 200


def test_requests_that_arrive_together_share_one_generation_call(served):
  client, batcher, _ = served
  client.post("/api/generate", json={"length": 30})  # nothing else waiting: one call alone
  before = batcher.calls
  replies = []

  def post(prime):
    replies.append(client.post("/api/generate", json={"prime": prime, "length": 30}))

  threads = [threading.Thread(target=post, args=(p,)) for p in ("moe: ", "homer: hi")]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert [r.status_code for r in replies] == [200, 200]
  assert batcher.calls == before + 1  # both rows in one jitted call


def test_rows_with_different_primes_in_one_batch_equal_each_alone(workdir):
  sampler = sampler_lib.load_sampler(workdir)
  rows = [sampler.row(p, t, k, seed=i)
          for i, (p, t, k) in enumerate([("moe: hey", 0.5, 0), ("", 1.0, 3),
                                         ("barney: beer! homer", 0.8, 0)])]
  for mode in ("window", "stateful"):
    together = sampler.generate_rows(rows, 40, mode, pad_to=4)
    for i, row in enumerate(rows):
      np.testing.assert_array_equal(together[i], sampler.generate_rows([row], 40, mode)[0])


@pytest.mark.lowest
def test_the_page_generates_in_a_real_headless_browser(workdir, browser, tmp_path):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  server, port = start_server(workdir, tmp_path / "server.log")
  try:
    browser.get(f"http://127.0.0.1:{port}/")
    WebDriverWait(browser, 30).until(
        lambda b: "vocabulary 15" in b.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "prime").send_keys("moe: ")
    browser.find_element(By.ID, "length").clear()
    browser.find_element(By.ID, "length").send_keys("200")
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 60).until(
        lambda b: "characters/s" in b.find_element(By.ID, "status").text)
    prime = browser.find_element(By.CSS_SELECTOR, "#samples .prime").text
    generated = browser.find_element(By.CSS_SELECTOR, "#samples .generated").text
    assert prime == "moe:" or prime == "moe: "  # shown apart from the generated text
    assert len(generated.replace("\n", "")) >= 150, generated
    # Several samples are one POST: the browser sends its Origin, which is the server's own.
    browser.find_element(By.ID, "num_samples").clear()
    browser.find_element(By.ID, "num_samples").send_keys("2")
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 60).until(
        lambda b: "2 samples" in b.find_element(By.ID, "status").text)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#samples .sample")) == 2
    # The score box shades each character by its surprise, with the server's log-probabilities.
    text = "moe: hey homer.\nbarney: beer!\nmoe: xqz hey homer.\n"
    browser.find_element(By.ID, "score_text").send_keys(text)
    browser.find_element(By.ID, "score").click()
    WebDriverWait(browser, 60).until(
        lambda b: "nats per character" in b.find_element(By.ID, "score_status").text)
    spans = browser.find_elements(By.CSS_SELECTOR, "#scored span")
    assert "".join(s.get_attribute("textContent") for s in spans) == text
    unscored = browser.find_elements(By.CSS_SELECTOR, "#scored span.unscored")
    assert len(unscored) == 8 + 3  # the first window, and x, q, z: not in the vocabulary
    colour = re.compile(r"rgba?\(220, 40, 40(?:, ([\d.]+))?\)")  # rgb() when solid
    shaded = [(float(s.get_attribute("data-log-prob")),
               float(colour.search(s.get_attribute("style")).group(1) or 1))
              for s in spans if s.get_attribute("data-log-prob")]
    assert len(shaded) == len(text) - 11
    for log_prob, alpha in shaded:  # redder as it is less likely: 8 bits or more is solid
      assert alpha == pytest.approx(min(1, -log_prob / math.log(2) / 8), abs=5e-3)  # 1/255 steps
    assert min(a for _, a in shaded) < 0.2 < max(a for _, a in shaded)
    assert "not in the vocabulary: x q z" in browser.find_element(By.ID, "score_status").text
    if os.environ.get("JAXCHAR_SCREENSHOT"):
      browser.save_screenshot(os.environ["JAXCHAR_SCREENSHOT"])
  finally:
    server.terminate()
    assert server.wait(timeout=30) == 0  # a clean stop on SIGTERM
