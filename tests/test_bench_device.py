"""The device benchmark, run as a user without a GPU would: `ACCEL=cpu launch/bench_device.sh
out.json` runs the whole suite at tiny sizes on the CPU, offline, and writes the JSON and the
Markdown table; and the lax.scan unroll it measures reaches the model's loops."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from helpers import REPO, char_lstm
from jaxchar.benchmarking import device_suite


def test_the_cpu_run_measures_every_cell_and_writes_json_and_the_table(tmp_path):
  env = {**os.environ, "ACCEL": "cpu", "PIP_NO_INDEX": "1",  # offline: nothing may be installed
         "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
         "BUDGET_S": "3000"}  # every cell, however busy the machine (else later ones are skipped)
  env.pop("XLA_FLAGS")  # one CPU device, as a user's shell has
  out = tmp_path / "out.json"
  result = subprocess.run(["bash", str(REPO / "launch" / "bench_device.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=3000, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  results = json.loads(out.read_text())
  sizes = device_suite.PROFILES["cpu"]
  assert results["profile"] == "cpu" and results["backend"] == "cpu"
  assert results["memory_gib"] > 0 and results["local_devices"] == 1
  kinds = [tuple(c.get(k) for k in ("kind", "impl", "dtype", "batch", "unroll", "mode", "rows"))
           for c in results["cells"]]
  assert len(kinds) == len(set(kinds)) == len(device_suite.cells(sizes))
  for cell in results["cells"]:
    assert "skipped" not in cell and "error" not in cell, cell
    assert cell.get("windows_per_s", cell.get("chars_per_s")) > 0 and cell["compile_s"] > 0
  table = out.with_suffix(".md").read_text()
  assert table == result.stdout[result.stdout.index("jaxchar "):]  # printed and written
  assert "| fused | bfloat16 | " in table and "| flax | float32 | " in table
  assert "| unroll 1 | unroll 4 |" in table and "| 2 rows |" in table
  assert "| stateful | " in table and "validation (fused, float32), 256 windows:" in table


def test_scan_unroll_reaches_the_lstm_loops_of_both_cells():
  for impl in ("fused", "flax"):
    model = char_lstm(5, 4, lstm_impl=impl)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6), jnp.int32))

    def loss(p):
      return model.apply(p, jnp.zeros((2, 6), jnp.int32), train=True).sum()
    with device_suite.scan_unroll(4):
      text = str(jax.make_jaxpr(jax.grad(loss))(params))
    assert "unroll=4" in text and "unroll=1" not in text, impl
  assert "unroll=4" not in str(jax.make_jaxpr(jax.grad(loss))(params))  # undone afterwards
