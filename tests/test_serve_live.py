"""`python -m jaxchar.serve` as its own process, against clients that leave mid-stream or
mid-body, stall, upload without end or crowd it: it stays healthy, answers everyone else,
logs no traceback, and stops on SIGTERM within its deadline whatever state they are in."""

import http.client
import json
import random
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from helpers import start_server

SHUTDOWN_S = 1
CLIENT_TIMEOUT_S = 4  # longer than the shutdown deadline: SIGTERM must not wait for a client


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
  """(process, port, log) of a server with short client time-outs; killed at the end."""
  log = tmp_path_factory.mktemp("serve_live") / "server.log"
  process, port = start_server(tiny_run, log, "--max_batch=16",
                               f"--client_timeout_s={CLIENT_TIMEOUT_S}",
                               f"--shutdown_timeout_s={SHUTDOWN_S}", "--access_log")
  yield process, port, log
  process.kill()
  process.wait()


def post(port: int, body, timeout: float = 60) -> tuple[int, dict]:
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
  data = body if isinstance(body, bytes) else json.dumps(body)
  connection.request("POST", "/api/generate", data, {"Content-Type": "application/json"})
  reply = connection.getresponse()
  return reply.status, json.loads(reply.read())


def raw(port: int, data: bytes) -> socket.socket:
  connection = socket.create_connection(("127.0.0.1", port), timeout=30)
  connection.sendall(data)
  return connection


def read_until(connection: socket.socket, marker: bytes) -> bytes:
  data = b""
  while marker not in data:
    more = connection.recv(4096)
    assert more, f"closed before {marker!r}: {data!r}"
    data += more
  return data


def stream_request(port: int, length: int) -> bytes:
  return b"GET /api/stream?length=%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (length, port)


def partial_body(port: int) -> bytes:
  return (b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json"
          b"\r\nContent-Length: 100\r\n\r\n{\"len" % port)


def rss_mb(pid: int) -> float:
  with open(f"/proc/{pid}/status") as status:
    return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


def test_it_says_its_start_up_steps_and_logs_each_request_without_its_text(server):
  process, port, log = server
  started = log.read_text()
  assert started.index("restoring the model from") < started.index("compiling ")
  total = re.search(r"compiling (\d+) programs: generation for \d+ batch sizes", started)
  assert total and f"compiled {total.group(1)}/{total.group(1)} programs" in started, started
  assert "and scoring (--compilation_cache=DIR keeps them for the next start)" in started
  assert started.index("compiled ") < started.index("ready in")
  assert post(port, {"prime": "moe: hey barney", "length": 5})[0] == 200
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
  connection.request("GET", "/%1b]0;title%07?prime=PRIVATE")  # a path that would retitle
  assert connection.getresponse().status == 404
  deadline = time.monotonic() + 30
  while "title" not in log.read_text() and time.monotonic() < deadline:
    time.sleep(0.1)
  logged = log.read_text()[len(started):]
  assert re.search(r"\d\d:\d\d:\d\d 127\.0\.0\.1 POST /api/generate 200 \d+\.\d{3} s\n",
                   logged), logged
  assert re.search(r"127\.0\.0\.1 GET /\\x1b\]0;title\\x07 404 ", logged), logged
  assert "barney" not in logged and "PRIVATE" not in logged and "\x1b" not in logged


def test_a_stream_closed_midway_leaves_the_server_answering(server):
  _, port, _ = server
  for _ in range(3):
    closed = raw(port, stream_request(port, 5000))
    read_until(closed, b"event: chunk")
    closed.close()
    status, body = post(port, {"length": 10}, timeout=30)
    assert status == 200 and len(body["samples"][0]) == 10


def test_a_chunked_endless_upload_is_refused_with_bounded_memory(server):
  process, port, _ = server
  before = rss_mb(process.pid)
  upload = raw(port, b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: "
                     b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n" % port)
  piece, sent = b"x" * 65536, 0
  try:
    while sent < 256 * 2**20:
      upload.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
      sent += len(piece)
  except OSError:
    pass  # the server closed the connection after its 413
  reply = upload.recv(4096)
  upload.close()
  assert b"413" in reply.split(b"\r\n")[0], reply
  assert sent < 64 * 2**20 and rss_mb(process.pid) - before < 32, (sent, before)


def test_stalled_clients_are_answered_408_and_closed(server):
  _, port, _ = server
  started = time.monotonic()
  stalled = [raw(port, sent) for sent in (b"", b"GET /healthz HTTP/1.1\r\nHost: 12",
                                          partial_body(port))]
  for connection in stalled:
    reply = b""
    while more := connection.recv(4096):  # to the end: the server closes the connection
      reply += more
    assert reply.startswith(b"HTTP/1.1 408") and b"within 4 s" in reply, reply
    connection.close()
  assert CLIENT_TIMEOUT_S - 0.1 < time.monotonic() - started < CLIENT_TIMEOUT_S + 5


def test_soak_32_clients_with_bad_and_vanishing_ones_mixed_in(server):
  process, port, log = server
  errors, answered, lock = [], {"valid": 0, "bad": 0, "gone": 0}, threading.Lock()
  bad_bodies = [b'{"length": NaN}', b"[" * 3000, b'{"length": 0}', b"{nope", b'{"mode": []}']
  deadline = time.monotonic() + 15
  rss_at = {}

  def client(index: int) -> None:
    rng = random.Random(index)
    while time.monotonic() < deadline:
      kind = rng.choice(["valid"] * 6 + ["bad", "stream gone", "body gone"])
      try:
        if kind == "valid":
          length, samples = rng.randint(10, 300), rng.randint(1, 3)
          mode = rng.choice(["window", "stateful"])
          status, body = post(port, {"length": length, "num_samples": samples, "mode": mode,
                                     "seed": rng.randint(0, 999)})
          if status != 200 or [len(s) for s in body["samples"]] != [length] * samples:
            raise AssertionError(f"{status} {body}")
        elif kind == "bad":
          status, body = post(port, rng.choice(bad_bodies))
          if not 400 <= status < 500 or "error" not in body:
            raise AssertionError(f"{status} {body}")
        elif kind == "stream gone":
          gone = raw(port, stream_request(port, 2000))
          read_until(gone, b"event: chunk")
          gone.close()
        else:
          raw(port, partial_body(port)).close()
        with lock:
          answered["valid" if kind == "valid" else "bad" if kind == "bad" else "gone"] += 1
      except Exception as e:  # noqa: BLE001 - collected and reported below
        with lock:
          errors.append(f"{kind}: {type(e).__name__}: {e}")

  def sample_rss() -> None:
    time.sleep(3)
    rss_at["warm"] = rss_mb(process.pid)

  threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
  threads.append(threading.Thread(target=sample_rss))
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors[:5]
  assert answered["valid"] > 100 and answered["bad"] > 10 and answered["gone"] > 10, answered
  grown = rss_mb(process.pid) - rss_at["warm"]
  assert grown < 64, f"RSS grew {grown:.0f} MB in 12 s"
  time.sleep(0.5)  # the vanished streams' jobs are dropped at their next chunk
  health = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
  health.request("GET", "/healthz")
  assert json.loads(health.getresponse().read())["in_flight"] == 0
  assert "Traceback" not in log.read_text()


def test_sigterm_stops_it_within_the_deadline_whatever_clients_do(server):
  process, port, log = server
  stalled = raw(port, partial_body(port))
  gone = raw(port, stream_request(port, 5000))
  read_until(gone, b"event: chunk")
  gone.close()
  reading = raw(port, stream_request(port, 5000))
  read_until(reading, b"event: chunk")
  time.sleep(0.3)
  started = time.monotonic()
  process.send_signal(signal.SIGTERM)
  code = process.wait(timeout=30)
  took = time.monotonic() - started
  stalled.close()
  reading.close()
  output = log.read_text()
  assert code == 0 and took < CLIENT_TIMEOUT_S, (code, took, output)  # the stalled one waits
  assert "SIGTERM: stopping" in output and "Traceback" not in output, output


def test_a_closed_stdout_neither_breaks_requests_nor_keeps_sigterm_from_stopping_it(
    tiny_run, tmp_path):
  """Its log's reader gone (`serve | head`, a collector restarted): every line after fails to
  print. Before, the SIGTERM handler's own line raised and the server served on, stop ignored."""
  process, port = start_server(tiny_run, tmp_path / "unused.log", "--access_log",
                               f"--shutdown_timeout_s={SHUTDOWN_S}", stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
  try:
    process.stdout.close()
    assert [post(port, {"length": 5})[0] for _ in range(2)] == [200, 200]  # logged, then not
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
  finally:
    process.kill()
  errors = process.stderr.read()
  assert code == 0 and "Traceback" not in errors and "Error" not in errors, (code, errors)
