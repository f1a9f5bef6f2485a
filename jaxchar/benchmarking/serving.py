"""Benchmark of `jaxchar.serve` under concurrent clients:
`python -m jaxchar.bench_serve --workdir=ckpt/moe_best`.

Starts the server as its own process (as a user would), then per mode: one client asking for 16
samples per request, then 1, 4 and 16 clients each asking for one, back to back for --seconds
each (requests/s, p50/p95 latency, characters/s, rows per generation call); a 10-character
request sent while a 5,000 x 64 one runs (fairness); and, with the server stopped, the same
generation called directly, for the latency the server adds.
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

from jaxchar.options import option
from jaxchar.sampling.controls import SAMPLE_MODES


@dataclasses.dataclass(frozen=True)
class ServeBenchConfig:
  """What the serving benchmark measures."""

  workdir: str = option("ckpt/moe_best", "A trained run to serve.")
  clients: tuple[int, ...] = option((1, 4, 16), "Concurrent client counts to measure.",
                                    parse=lambda values: tuple(map(int, values)))
  seconds: float = option(20.0, "Seconds of requests per row of the table.")
  length: int = option(400, "Characters per request.")
  modes: tuple[str, ...] = option(SAMPLE_MODES, "Generation modes to measure.")


PRIME = "moe_szyslak: "


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


def run_clients(port: int, clients: int, seconds: float, length: int, mode: str,
                samples: int = 1) -> dict:
  """`clients` threads posting requests of `samples` rows back to back for `seconds`."""
  latencies: list[float] = []
  lock = threading.Lock()
  deadline = time.monotonic() + seconds

  def client(index: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    n = 0
    while time.monotonic() < deadline:
      start = time.perf_counter()
      _post(connection, {"prime": PRIME, "length": length, "mode": mode, "num_samples": samples,
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
  chunks = -(-length // 64)
  return {"clients": clients, "samples": samples, "requests": len(latencies),
          "requests_per_s": len(latencies) / elapsed, "p50_s": statistics.median(latencies),
          "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
          "chars_per_s": len(latencies) * samples * length / elapsed,
          "rows_per_call": len(latencies) * samples * chunks / max(calls, 1)}


def fairness(port: int, mode: str) -> tuple[float, float]:
  """(seconds for a 10-character request sent 1 s into a 5,000 x 64 one, seconds for that)."""
  big: dict = {}

  def run_big() -> None:
    start = time.perf_counter()
    _post(http.client.HTTPConnection("127.0.0.1", port, timeout=600),
          {"length": 5000, "num_samples": 64, "mode": mode})
    big["s"] = time.perf_counter() - start

  thread = threading.Thread(target=run_big)
  thread.start()
  time.sleep(1.0)
  start = time.perf_counter()
  _post(http.client.HTTPConnection("127.0.0.1", port, timeout=600), {"length": 10, "mode": mode})
  short = time.perf_counter() - start
  thread.join()
  return short, big["s"]


def generation_alone(workdir: str, length: int, mode: str, repeats: int = 20) -> float:
  """Median seconds of the server's generation of one row, called directly (no HTTP)."""
  from jaxchar.sampling.sampler import load_sampler
  sampler = load_sampler(workdir)
  row = sampler.row(PRIME, 0.5)
  sampler.generate_rows([row], length, mode)  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    sampler.generate_rows([row], length, mode)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_server(workdir: str) -> tuple[subprocess.Popen, int]:
  port = _free_port()
  server = subprocess.Popen([sys.executable, "-m", "jaxchar.serve", f"--workdir={workdir}",
                             f"--port={port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ})
  for line in server.stdout:
    print(f"server: {line.rstrip()}", file=sys.stderr, flush=True)
    if "open http://" in line:
      break
  else:
    sys.exit(f"the server stopped before it was ready (exit code {server.wait()})")
  while True:  # uvicorn binds just after the line
    try:
      _get(port, "/healthz")
      return server, port
    except OSError:
      time.sleep(0.1)


def run_serve_bench(config: ServeBenchConfig) -> None:
  """Every measurement above, printed as the tables BENCHMARKS.md holds."""
  server, port = _start_server(config.workdir)
  results: dict[str, list[dict]] = {}
  fair: dict[str, tuple[float, float]] = {}
  try:
    for mode in config.modes:
      _post(http.client.HTTPConnection("127.0.0.1", port), {"length": 10, "mode": mode})  # warm
      rows = [run_clients(port, 1, config.seconds, config.length, mode, samples=16)]
      rows += [run_clients(port, n, config.seconds, config.length, mode) for n in config.clients]
      results[mode] = rows
      fair[mode] = fairness(port, mode)
      print(f"{mode}: done", file=sys.stderr, flush=True)
  finally:
    server.terminate()
    server.wait(timeout=30)
  alone = {mode: generation_alone(config.workdir, config.length, mode) for mode in config.modes}
  print(f"jaxchar.serve, {config.workdir}, {config.length} characters per request, "
        f"{config.seconds:g} s per row")
  for mode, rows in results.items():
    batched = rows[0]["chars_per_s"]
    print(f"\n{mode} mode\n| clients x samples per request | requests/s | p50 latency | "
          "p95 latency | characters/s (all clients) | vs 1 x 16 | rows per generation call |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['clients']} x {r['samples']} | {r['requests_per_s']:.1f} | "
            f"{r['p50_s'] * 1000:.0f} ms | {r['p95_s'] * 1000:.0f} ms | "
            f"{r['chars_per_s']:,.0f} | {r['chars_per_s'] / batched:.2f}x | "
            f"{r['rows_per_call']:.1f} |")
    one = next((r for r in rows[1:] if r["clients"] == 1), None)
    if one is not None:
      print(f"one client's p50 {one['p50_s'] * 1000:.1f} ms; the same generation called "
            f"directly {alone[mode] * 1000:.1f} ms (the server adds "
            f"{(one['p50_s'] - alone[mode]) * 1000:.1f} ms)")
    short, big = fair[mode]
    print(f"a 10-character request sent 1 s into a 5,000 x 64 one: answered in {short:.2f} s "
          f"(the long one took {big:.1f} s)")

