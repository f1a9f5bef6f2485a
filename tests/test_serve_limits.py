"""The server against clumsy and hostile clients, in process: jobs that are abandoned, cancelled
or expire, a failing worker, fairness between long and short requests, a bounded queue, bodies
that could make the JSON parser raise, and requests from other sites."""

import logging
import re
import threading

import pytest
from fastapi.testclient import TestClient

from jaxchar.sampling import sampler as sampler_lib
from jaxchar.serving import jobs
from jaxchar.serving import guards
from jaxchar.serving.app import create_app
from jaxchar.serving.batcher import Batcher
from jaxchar.serving.request_checks import Limits

LIMITS = Limits(max_length=5000, max_prime=100, max_batch=8)


@pytest.fixture(scope="module")
def sampler(tiny_run):
  return sampler_lib.load_sampler(tiny_run)


@pytest.fixture
def batcher(sampler):
  batcher = Batcher(sampler, max_batch=8, max_wait_s=0.01)
  yield batcher
  batcher.close()


def client_for(sampler, batcher, limits=LIMITS, **guards) -> TestClient:
  return TestClient(create_app(sampler, batcher, limits, **guards))


def rows(sampler, n: int) -> list:
  return [sampler.row("moe: ", 1.0, seed=1, index=i) for i in range(n)]


def test_an_abandoned_job_stops_costing_generation_and_others_go_on(sampler, batcher):
  first_chunk = threading.Event()
  long = batcher.submit(rows(sampler, 2), 5000, "window", 60, lambda ids: first_chunk.set())
  assert first_chunk.wait(30)
  long.abandon()  # what the app does when the client goes away
  short = batcher.submit(rows(sampler, 1), 10, "window", 60)
  assert short.future.result(timeout=30).shape == (1, 10)
  assert isinstance(long.future.exception(timeout=5), jobs.Abandoned)
  calls = batcher.calls
  assert batcher.submit(rows(sampler, 1), 10, "stateful", 60).future.result(timeout=30) is not None
  assert batcher.calls == calls + 1  # the abandoned job ran no more rounds
  assert batcher.healthy and batcher.in_flight == 0


def test_a_future_cancelled_before_its_result_does_not_kill_the_worker(sampler, batcher):
  for _ in range(3):  # asyncio.wrap_future cancels it when a client leaves; 3 of 3 killed it
    job = batcher.submit(rows(sampler, 1), 200, "window", 60)
    job.future.cancel()
  assert batcher.submit(rows(sampler, 1), 10, "window", 60).future.result(timeout=30) is not None
  assert batcher.healthy


def test_a_short_request_waits_for_at_most_one_chunk_of_a_long_one(sampler, batcher):
  started, calls_seen = threading.Event(), []
  long = batcher.submit(rows(sampler, 8), 5000, "window", 120, lambda ids: started.set())
  assert started.wait(30)
  calls_at_submit = batcher.calls
  short = batcher.submit(rows(sampler, 1), 10, "window", 120,
                         lambda ids: calls_seen.append(batcher.calls))
  assert short.future.result(timeout=60).shape == (1, 10)
  assert not long.future.done()  # 79 chunks; the short one did not wait for them
  assert calls_seen[0] - calls_at_submit <= 2  # the long job's chunk in progress, then its own
  long.abandon()


def test_the_text_does_not_depend_on_chunking_or_company(sampler, batcher):
  alone = batcher.submit(rows(sampler, 1), 150, "stateful", 60).future.result(timeout=30)
  crowd = [batcher.submit(rows(sampler, 3), 150, "stateful", 60) for _ in range(3)]
  for job in crowd:
    assert (job.future.result(timeout=60)[:1] == alone).all()
  direct = sampler.generate_rows(rows(sampler, 1), 150, "stateful")
  assert (direct == alone).all()


def test_a_failed_worker_says_so_and_fails_waiting_requests(sampler, monkeypatch):
  failures = []
  batcher = Batcher(sampler, max_batch=4, on_failure=failures.append)

  def broken(active):
    raise RuntimeError("injected scheduler fault")

  monkeypatch.setattr(batcher, "_pick", broken)
  with client_for(sampler, batcher) as client:
    reply = client.post("/api/generate", json={"length": 10})
    assert reply.status_code == 503 and "worker failed" in reply.json()["error"], reply.text
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["ok"] is False
    assert client.post("/api/generate", json={"length": 10}).status_code == 503
  assert [str(e) for e in failures] == ["injected scheduler fault"]


def test_a_full_queue_and_a_deadline_are_503_and_504(sampler):
  batcher = Batcher(sampler, max_batch=4, max_queue=1)
  try:
    started = threading.Event()
    long = batcher.submit(rows(sampler, 1), 5000, "window", 60, lambda ids: started.set())
    assert started.wait(30)
    with client_for(sampler, batcher) as client:
      reply = client.post("/api/generate", json={"length": 10})
      assert reply.status_code == 503 and reply.headers["retry-after"] == "1", reply.text
      assert "--max_queue" in reply.json()["error"]
      long.abandon()
      long.future.exception(timeout=30)
    hurried = Limits(5000, 100, 8, request_timeout_s=0.001)
    with client_for(sampler, batcher, hurried) as client:
      reply = client.post("/api/generate", json={"length": 5000})
      assert reply.status_code == 504 and "--request_timeout_s" in reply.json()["error"]
      with client.stream("GET", "/api/stream", params={"length": 5000}) as stream:
        text = "".join(stream.iter_text())
      assert "event: failed" in text and '"status": 504' in text
  finally:
    batcher.close()


@pytest.mark.parametrize("body, message", [
    (b'{"length": NaN}', "NaN is not a number JSON allows"),
    (b'{"length": Infinity}', "Infinity is not a number"),
    (b'{"temperature": -Infinity}', "-Infinity is not a number"),
    (b'{"length": 1e999}', "too large a number"),
    (b'{"length": ' + b"9" * 5000 + b"}", "5,000 digits"),
    (b'{"mode": []}', "mode=[] must be one of"),
    (b'{"unknown": {"a": 1}}', "unknown={'a': 1} must be one of"),
    (b"[" * 6000 + b"]" * 6000, "nests arrays or objects too deeply"),
    (b'{"prime": {"x": [[[[1]]]]}}', "nests arrays or objects too deeply"),
])
def test_bodies_that_could_make_the_parser_raise_are_400(sampler, batcher, caplog, body,
                                                         message):
  with client_for(sampler, batcher) as client, caplog.at_level(logging.WARNING):
    reply = client.post("/api/generate", content=body,
                        headers={"Content-Type": "application/json"})
  assert reply.status_code == 400 and message in reply.json()["error"], reply.text
  assert not caplog.records


def test_brackets_inside_strings_are_not_nesting(sampler, batcher):
  with client_for(sampler, batcher) as client:
    reply = client.post("/api/generate", json={"prime": "moe: [[[[[{{{{{", "length": 5,
                                               "unknown": "skip"})
  assert reply.status_code == 200, reply.text


def test_a_chunked_body_with_no_length_is_refused_past_the_limit(sampler, batcher):
  pieces = (b" " * 65536 for _ in range(20))  # chunked: no Content-Length to check first
  with client_for(sampler, batcher) as client:
    reply = client.post("/api/generate", content=pieces,
                        headers={"Content-Type": "application/json"})
  assert reply.status_code == 413 and "over 64 KB" in reply.json()["error"]
  assert reply.headers["connection"] == "close"  # the rest of it is not read


@pytest.mark.parametrize("headers, status, message", [
    ({"Content-Type": "text/plain"}, 415, "Content-Type: application/json"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ({"Origin": "http://evil.example"}, 403, "pages at http://evil.example are refused"),
    ({"Sec-Fetch-Site": "cross-site"}, 403, "pages at \\(another site\\)"),
    ({"Host": "evil.example:8080"}, 403, "Host 'evil.example:8080' is not this server's"),
    ({"Origin": "http://127.0.0.1:8080"}, 200, None),
    ({"Origin": "https://friend.example", "Host": "friend.example"}, 200, None),
])
def test_only_json_from_the_servers_own_pages_or_programs(sampler, batcher, headers, status,
                                                          message):
  friends = ["https://friend.example"]
  hosts = guards.allowed_hosts("127.0.0.1", 8080, friends)
  assert hosts == {"127.0.0.1:8080", "localhost:8080", "[::1]:8080", "friend.example"}
  with client_for(sampler, batcher, hosts=hosts, allow_origins=friends) as client:
    reply = client.post("/api/generate", content=b'{"length": 5}', headers={
        "Host": "127.0.0.1:8080", "Content-Type": "application/json", **headers})
  assert reply.status_code == status, reply.text
  if message:
    assert re.search(message, reply.json()["error"]), reply.json()
