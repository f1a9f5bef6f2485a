"""TPU programs compiled on this machine, no TPU needed (libtpu's compile-only devices): every
program of the reference run and of launch/tpu.flags, each topology family (v4-8, v5e-8) with
each, the train step across dtypes, LSTM implementations, layers and objectives, and an oversized
run refused with the largest batch that fits."""

import dataclasses
import importlib.util
import os

import pytest

from helpers import run_cases, run_module
from jaxchar.aot import flops, programs, topologies
from jaxchar.aot.check import CheckConfig, Report, largest_fitting_batch, run_check, verdict
from jaxchar.errors import UserError
from jaxchar.training.config import Config

LIBTPU = importlib.util.find_spec("libtpu") is not None
REASON = "libtpu is not installed (pip install -e '.[test]' brings it); TPU compile tests skipped"
if not LIBTPU and os.environ.get("CI"):
  raise RuntimeError(f"{REASON}: on CI these tests must run")  # fails collection, never skips
needs_libtpu = pytest.mark.skipif(not LIBTPU, reason=REASON)
TPU_FLAGS = Config(dtype="bfloat16", save_every_steps=500)  # launch/tpu.flags over moe.flags


@pytest.fixture(autouse=True, scope="module")
def no_compilation_cache():
  """As `jaxchar.compile_check` does: a compile-only device cannot load cached executables."""
  import jax
  from jax._src import compilation_cache  # JAX decides once per process: make it decide again
  before = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  yield
  jax.config.update("jax_enable_compilation_cache", before)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def resolved():
  """v4-8 and v5e-8 as compile-only devices (libtpu is told which TPU to expect while it loads;
  the variables are taken back afterwards, so later tests see this machine as it is)."""
  with pytest.MonkeyPatch.context() as patch:
    for name in ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "ALLOW_MULTIPLE_LIBTPU_LOAD"):
      patch.setenv(name, os.environ.get(name, ""))
      patch.delenv(name)
    topologies.describe_host_to_libtpu(topologies.jax_topology_name("v5e-8"))
    yield {name: topologies.resolve(name) for name in ("v4-8", "v5e-8")}


def test_topology_names_in_both_forms_and_a_clear_error_for_unknown_ones():
  assert topologies.jax_topology_name("v5e-8") == "v5e:2x4"
  assert topologies.jax_topology_name("v5litepod-8") == "v5e:2x4"
  assert topologies.jax_topology_name("v4-8") == "v4:2x2x1"
  assert topologies.jax_topology_name("v6e:4x4") == "v6e:4x4"
  assert topologies.cloud_name("v4:2x2x1") == "v4-8"  # v4 names count TensorCores
  with pytest.raises(UserError, match="v5x-8 is not a TPU topology.*v4-8, v4-16"):
    topologies.jax_topology_name("v5x-8")


def test_missing_libtpu_names_the_install_command(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(UserError, match=r"needs libtpu.*pip install 'libtpu"):
    topologies.require_libtpu()


@needs_libtpu
@pytest.mark.parametrize("name,config", [("v4-8", Config()), ("v5e-8", TPU_FLAGS)],
                         ids=["v4-8-reference", "v5e-8-tpu.flags"])
def test_every_program_of_the_run_compiles_and_fits(resolved, name, config, monkeypatch):
  """Each topology family and each option family once (the command below checks v5e-8 with
  tpu.flags again, as a user runs it)."""
  texts = {}  # each program's StableHLO, as compiled
  original = programs._compile

  def compile_recording(program, lowered_fn, *args):
    texts[program.split(" (")[0]] = lowered_fn().as_text()
    return original(program, lowered_fn, *args)

  monkeypatch.setattr(programs, "_compile", compile_recording)
  report = run_check(config, CheckConfig(topology=name), resolved[name])
  kinds = [p.name.split(" (")[0] for p in report.compiled]
  assert kinds == ["train step", "eval step", "epoch samples", "server window start",
                   "server window chunk", "server stateful start", "server stateful chunk"]
  # Every program computes in the run's dtype: sampling and serving too, as their model is the
  # checkpoint's (a bfloat16 run's programs hold bf16 values, a float32 run's none).
  assert sorted(texts) == sorted(set(kinds))
  for kind, text in texts.items():
    assert ("bf16" in text) == (config.dtype == "bfloat16"), kind
  assert not report.overflowing() and report.largest_batch is None
  for program in report.compiled:
    assert 0 < program.peak_bytes < 64 * 2**20, program  # a few MB each for this small model
    assert program.argument_bytes > 0 and program.compile_s > 0
  train = report.compiled[0]
  assert train.name == "train step (global batch 128)"
  xla, analytic = report.flops_check
  assert 0.8 < analytic / xla < 1.25  # the analytic count agrees with XLA's on one trip


@needs_libtpu
@pytest.mark.parametrize("dtype,impl,layers,objective,name", [
    # With the reference (float32, fused, 1 layer, last) and tpu.flags (bfloat16) runs above,
    # every value of every option on both topology families, and fused with 2 layers.
    ("bfloat16", "fused", 2, "every", "v5e-8"), ("float32", "flax", 2, "last", "v4-8"),
    ("bfloat16", "flax", 1, "every", "v4-8")])
def test_train_step_compiles_across_options(resolved, dtype, impl, layers, objective, name):
  config = Config(dtype=dtype, lstm_impl=impl, num_layers=layers, objective=objective,
                  embed_dim=16 if layers == 2 else 0)
  topology = resolved[name]
  compiled = programs.train_step(config, 65, 305_270, topology.devices, 128)
  assert compiled.out_of_memory is None
  assert 0 < compiled.peak_bytes < topology.chip.hbm_bytes
  one_layer = programs.flop_shape(dataclasses.replace(config, num_layers=1, embed_dim=0), 65)
  per_chip = flops.train_step_flops(one_layer, 128) / len(topology.devices)
  assert (compiled.flops > per_chip) == (layers == 2)


@needs_libtpu
def test_an_oversized_run_does_not_fit_and_the_largest_batch_that_fits_does(resolved,
                                                                            monkeypatch):
  topology, hbm = resolved["v5e-8"], resolved["v5e-8"].chip.hbm_bytes
  # Long windows make the boundary a small batch, which compiles quickly. Far above it XLA
  # refuses a program fast; near it a compile takes longest.
  config = Config(hidden=128, maxlen=1000, batch_size=1_048_576, sample_len=0)
  compiled = {}  # each batch compiled once: `fits` below reuses the search's compile
  compile_once = programs.train_step
  monkeypatch.setattr(programs, "train_step", lambda config, vocab, chars, devices, batch: (
      compiled.get(batch) or compiled.setdefault(
          batch, compile_once(config, vocab, chars, devices, batch))))
  too_big = programs.train_step(config, 65, 305_270, topology.devices, config.batch_size)
  assert too_big.out_of_memory and too_big.peak_bytes > hbm  # XLA refused it
  largest = largest_fitting_batch(config, 65, 305_270, topology, too_big.peak_bytes)
  assert len(compiled) <= 8  # sizes read off a line: bisecting the range compiled 11
  assert largest and largest % 8 == 0 and largest < config.batch_size
  fits = programs.train_step(config, 65, 305_270, topology.devices, largest)
  assert fits.out_of_memory is None and fits.peak_bytes <= hbm
  # The search's own bound above it (compiled there, not again): too big, within 12.5%.
  above = min(batch for batch in compiled if batch > largest)
  assert compiled[above].peak_bytes > hbm
  assert above - largest <= max(len(topology.devices), largest // 8)
  report = Report(topology, config, 65, 305_270, False, [too_big], None, largest)
  assert (f"train step (global batch 1048576) needs {too_big.peak_bytes / 2**30:.2f} GiB per "
          "chip, more than the 16 GiB HBM of a TPU v5e; the largest global batch found to fit "
          f"(compiled, to within 12.5%) is {largest}: --batch_size={largest}") in verdict(report)


# As a user's shell runs it: no forced CPU platform or device count.
COMMAND_ENV = {"devices": None, "drop": ("JAX_PLATFORMS", "XLA_FLAGS"), "timeout": 600}


@needs_libtpu
def test_the_command_on_tpu_flags_prints_the_table_and_only_its_own_lines():
  result = run_module("jaxchar.compile_check", "--topology=v5e-8", "--flagfile=launch/tpu.flags",
                      **COMMAND_ENV)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith("topology v5e-8 = v5e:2x4: 8 x TPU v5e in 1 host(s), 16.0 GiB HBM")
  assert "bfloat16, fused LSTM" in lines[1] and "global batch 128 (16 per chip)" in lines[1]
  assert sum(line.startswith("| train step (global batch 128) |") for line in lines) == 1
  assert lines[-1].startswith("fits: every program compiled for v5e-8")
  assert result.stderr == ""  # libtpu's notes about missing TPU metadata are not shown


BAD_INPUT = [
    (["--topology=v9-8"], "--topology=v9-8 is not a TPU topology this check knows; use one of"),
    (["--topology=v5e-8", "--batch_size=100"], "--batch_size=100 does not split evenly over the "
     "8 devices"),
    (["--topology=v4-8", "--data=missing.txt"], "--data=missing.txt: no such file"),
    ([], "give the TPU topology to check for"),
]


@needs_libtpu
def test_bad_input_and_an_oversized_run_exit_2_before_anything_is_spent():
  """Every bad input is one clear error with exit code 2; so is a run that does not fit (the
  batch search is tested above). Their mains run in one process."""
  oversized = ["--topology=v5e-8", "--batch_size=2097152", "--sample_len=0", "--nosearch_batch"]
  cases = [args for args, _ in BAD_INPUT] + [oversized]
  *bad, too_big = run_cases("jaxchar.compile_check",
                            [["--flagfile=launch/tpu.flags", *args] for args in cases],
                            **COMMAND_ENV)
  for (args, message), result in zip(BAD_INPUT, bad, strict=True):
    assert result.returncode == 2, (args, result.stderr)
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
  assert too_big.returncode == 2, too_big.stderr
  error = " ".join(too_big.stderr.split())
  assert "the run does not fit on v5e-8: train step (global batch 2097152) needs" in error
  assert "than the 16 GiB HBM of a TPU v5e; lower --batch_size, --hidden or --num_layers." in error
  assert "| train step (global batch 2097152) |" in too_big.stdout and "| NO |" in too_big.stdout


CUDA_SITE = os.environ.get("JAXCHAR_CUDA_AOT_SITE")  # .ci/run installs JAX's CUDA compiler there
CUDA_REASON = ("JAXCHAR_CUDA_AOT_SITE is not set (a folder with jax-cuda12-plugin, "
               "jax-cuda12-pjrt and nvidia-cuda-nvcc-cu12, as .ci/run makes); GPU compile test "
               "skipped")
def test_every_program_compiles_for_8_h100s_without_a_gpu():
  if not CUDA_SITE:
    if os.environ.get("CI"):
      pytest.fail(f"{CUDA_REASON}: on CI it must run")
    pytest.skip(CUDA_REASON)
  result = run_module("jaxchar.compile_check", "--topology=h100-8", "--flagfile=launch/tpu.flags",
                      env={"PYTHONPATH": os.path.abspath(CUDA_SITE)}, **COMMAND_ENV)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith("topology h100-8 = cuda:h100:1x1x8: 8 x NVIDIA H100 SXM 80 GB")
  rows = [line for line in lines if line.startswith("| ") and "| yes |" in line]
  assert len(rows) == 7 and rows[0].startswith("| train step (global batch 128) |")
  assert lines[-1].startswith("fits: every program compiled for h100-8")


def test_a_missing_cuda_compiler_names_the_install_command(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(UserError, match=r"CUDA compiler.*pip install 'jax-cuda12-plugin=="):
    topologies.require_cuda_plugin()
