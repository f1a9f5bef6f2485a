"""Benchmark of `jaxchar.serve` under concurrent clients:
`python -m jaxchar.serving.bench --workdir=ckpt/moe_best`.

Starts the server as its own process (as a user would), then for each client count runs that
many clients, each sending POST /api/generate back to back for --seconds, and prints
requests/s, p50/p95 latency and aggregate generated characters/s, plus how many rows the
batcher put into each generation call.
"""

import dataclasses
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

from absl import app, flags

from jaxchar import logs, options
from jaxchar.options import option
from jaxchar.sampling.config import SAMPLE_MODES


@dataclasses.dataclass(frozen=True)
class ServeBenchConfig:
  """What the serving benchmark measures."""

  workdir: str = option("ckpt/moe_best", "A trained run to serve.")
  clients: tuple[int, ...] = option((1, 4, 16), "Concurrent client counts to measure.",
                                    parse=lambda values: tuple(map(int, values)))
  seconds: float = option(20.0, "Seconds of requests per client count.")
  length: int = option(400, "Characters per request.")
  mode: str = option("window", "Generation mode of every request.", choices=SAMPLE_MODES)


options.define_flags(ServeBenchConfig)
FLAGS = flags.FLAGS


def _post(connection: http.client.HTTPConnection, body: dict) -> dict:
  connection.request("POST", "/api/generate", json.dumps(body),
                     {"Content-Type": "application/json"})
  reply = connection.getresponse()
  data = json.loads(reply.read())
  if reply.status != 200:
    raise RuntimeError(f"HTTP {reply.status}: {data}")
  return data


def _get(port: int, path: str) -> dict:
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  connection.request("GET", path)
  return json.loads(connection.getresponse().read())


def run_clients(port: int, clients: int, seconds: float, length: int, mode: str) -> dict:
  """`clients` threads posting requests back to back for `seconds`; their latencies."""
  latencies: list[float] = []
  lock = threading.Lock()
  deadline = time.monotonic() + seconds

  def client(index: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    n = 0
    while time.monotonic() < deadline:
      start = time.perf_counter()
      _post(connection, {"prime": "moe_szyslak: ", "length": length, "mode": mode,
                         "seed": index * 100_000 + n})
      with lock:
        latencies.append(time.perf_counter() - start)
      n += 1

  calls_before = _get(port, "/api/info")["generation_calls"]
  started = time.perf_counter()
  threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  elapsed = time.perf_counter() - started
  calls = _get(port, "/api/info")["generation_calls"] - calls_before
  latencies.sort()
  return {"clients": clients, "requests": len(latencies), "requests_per_s": len(latencies) / elapsed,
          "p50_s": statistics.median(latencies),
          "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
          "chars_per_s": len(latencies) * length / elapsed,
          "rows_per_call": len(latencies) / max(calls, 1)}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def main(argv) -> None:
  del argv
  logs.quiet_library_logs()
  config = options.from_flags(ServeBenchConfig, FLAGS)
  port = _free_port()
  server = subprocess.Popen([sys.executable, "-m", "jaxchar.serve", f"--workdir={config.workdir}",
                             f"--port={port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ})
  try:
    for line in server.stdout:
      print(f"server: {line.rstrip()}", file=sys.stderr, flush=True)
      if "open http://" in line:
        break
    else:
      sys.exit(f"the server stopped before it was ready (exit code {server.wait()})")
    while True:  # uvicorn binds just after the line
      try:
        _get(port, "/healthz")
        break
      except OSError:
        time.sleep(0.1)
    _post(http.client.HTTPConnection("127.0.0.1", port), {"length": config.length})  # warm
    results = []
    for clients in config.clients:
      results.append(run_clients(port, clients, config.seconds, config.length, config.mode))
      print(f"{clients} clients: {results[-1]['chars_per_s']:,.0f} characters/s",
            file=sys.stderr, flush=True)
  finally:
    server.terminate()
    server.wait(timeout=30)
  one = results[0]["chars_per_s"]
  print(f"jaxchar.serve, {config.workdir}, {config.length} characters per request, {config.mode} "
        f"mode, {config.seconds:g} s per row\n"
        "| clients | requests/s | p50 latency | p95 latency | characters/s (all clients) | "
        "vs 1 client | rows per generation call |\n|---|---|---|---|---|---|---|")
  for r in results:
    print(f"| {r['clients']} | {r['requests_per_s']:.1f} | {r['p50_s'] * 1000:.0f} ms | "
          f"{r['p95_s'] * 1000:.0f} ms | {r['chars_per_s']:,.0f} | {r['chars_per_s'] / one:.1f}x | "
          f"{r['rows_per_call']:.1f} |")


if __name__ == "__main__":
  app.run(main)
