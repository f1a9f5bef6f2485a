"""The sampler: restore on one device whatever trained it, primes, top-k, and every bad input."""

import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import run_cases, run_module
from jaxchar.core import checkpoint
from jaxchar.sampling import generate
from jaxchar.sampling import sampler as sampler_lib
from jaxchar.sampling.config import SampleConfig
from jaxchar.errors import UserError
from jaxchar.core.model import CharLSTM


def run_sample(*args: str) -> subprocess.CompletedProcess:
  return run_module("jaxchar.sample", *args)


def test_checkpoint_from_4_devices_samples_on_1(checkpointed_run):
  result = run_sample(f"--workdir={checkpointed_run}", "--prime=Moe: ", "--temperature=0.5,1.0",
                      "--num_samples=2", "--length=50", "--seed=3")
  assert result.returncode == 0, result.stderr
  blocks = result.stdout.split("----- temperature ")[1:]
  assert len(blocks) == 4
  assert all(b.split("\n", 1)[1].startswith("moe: ") for b in blocks)  # as the model saw it
  # The same samples in this 4-device process, from the same checkpoint: device-independent.
  in_process = sampler_lib.run_sampling(SampleConfig(
      workdir=str(checkpointed_run), prime="Moe: ", temperatures=(0.5, 1.0), num_samples=2,
      length=50, seed=3))
  assert in_process.strip() == result.stdout.strip()


def test_default_step_is_the_best_by_validation_loss(checkpointed_run):
  steps = checkpoint.checkpoint_steps(checkpointed_run)
  scored = {s: checkpoint.read_meta(checkpointed_run, s)["val_loss"] for s in steps}
  best = min((v, s) for s, v in scored.items() if v is not None)[1]
  assert sampler_lib.load_sampler(checkpointed_run).step == best
  assert sampler_lib.load_sampler(checkpointed_run, steps[0]).step == steps[0]


def test_top_k_1_equals_argmax(checkpointed_run):
  sampler = sampler_lib.load_sampler(checkpointed_run)
  top1 = sampler.sample("moe: ", [1.0], 40, num_samples=3, seed=1, top_k=1)[0]
  assert [len(t) for t in top1] == [40, 40, 40]
  assert len(set(top1)) == 1  # deterministic whatever the seed
  window, filled = sampler.encode_prime("moe: ")
  ids = list(window[:filled])
  apply = jax.jit(sampler.model.apply)
  expected = []
  for _ in range(40):  # greedy decoding, one model call per character, outside the sampler
    context = ids[-sampler.maxlen:]
    padded = np.zeros((1, sampler.maxlen), np.int32)
    padded[0, :len(context)] = context
    logits = apply({"params": sampler.params}, jnp.asarray(padded),
                                 jnp.array([len(context)]))
    ids.append(int(jnp.argmax(logits[0])))
    expected.append(ids[-1])
  assert top1[0] == sampler.vocab.decode(expected)


def test_primes_of_any_length(checkpointed_run):
  sampler = sampler_lib.load_sampler(checkpointed_run)
  window, filled = sampler.encode_prime("")
  assert filled == 1 and sampler.vocab.decode(window[:1]) == "\n"
  long_prime = "homer: hi moe.\nmoe: no.\n" * 3
  window, filled = sampler.encode_prime(long_prime)
  assert filled == sampler.maxlen == 8
  assert sampler.vocab.decode(window) == long_prime[-8:]
  window, filled = sampler.encode_prime("MOE")
  assert sampler.vocab.decode(window[:filled]) == "moe"  # trained lowercased
  window, filled = sampler.encode_prime("moe#%", unknown="skip")
  assert sampler.vocab.decode(window[:filled]) == "moe"


def test_sampling_function_is_usable_from_python(checkpointed_run):
  """The README's few lines: restore, then call the pure jitted generate_window."""
  sampler = sampler_lib.load_sampler(checkpointed_run)
  context = jnp.asarray(sampler.vocab.encode("homer: h"))[None, :]
  ids = generate.generate_window(sampler.model, sampler.params, context, jnp.array([0.5]),
                                 jax.random.PRNGKey(0), 20)
  assert ids.shape == (1, 20) and isinstance(sampler.model, CharLSTM)


def bad_sample_cases(tmp_path, workdir):
  empty = tmp_path / "empty_run"
  empty.mkdir()
  steps = checkpoint.checkpoint_steps(workdir)
  w = f"--workdir={workdir}"
  return [
      ([f"--workdir={tmp_path / 'nope'}"], "does not exist"),
      ([f"--workdir={empty}"], "holds no checkpoint"),
      ([w, "--step=12345"], f"the steps saved are {', '.join(map(str, steps))}"),
      ([w, "--temperature=0"], "--temperature=0 must be a positive number"),
      ([w, "--temperature=0.5,-2"], "--temperature=-2 must be a positive"),
      ([w, "--length=0"], "--length=0 must be at least 1 character"),
      ([w, "--num_samples=0"], "--num_samples=0 must be at least 1"),
      ([w, "--top_k=-1"], "--top_k=-1 must be from 0 (off) to the model's vocabulary size."),
      ([w, "--top_k=99"], "--top_k=99 must be from 0 (off) to the model's vocabulary size, 15."),
      ([w, "--prime=moe: #hey@"], "never saw in training: '#', '@'"),
      ([w, f"--prime_file={tmp_path / 'missing.txt'}"], "cannot be read as UTF-8"),
  ]


def test_every_bad_input_is_one_clear_error(checkpointed_run, tmp_path):
  cases = bad_sample_cases(tmp_path, checkpointed_run)
  first, *others = cases  # one as its own process; the others' mains in one process
  results = [run_sample(*first[0]), *run_cases("jaxchar.sample", [a for a, _ in others])]
  for (args, message), result in zip(cases, results, strict=True):
    assert result.returncode == 2, (args, result.stderr)
    assert "Traceback" not in result.stderr
    assert message in " ".join(result.stderr.split()), (args, result.stderr)


def test_incompatible_checkpoint_version_is_refused(checkpointed_run, monkeypatch):
  monkeypatch.setattr(checkpoint, "READABLE_FORMATS", (checkpoint.FORMAT_VERSION + 1,))
  now, later = checkpoint.FORMAT_VERSION, checkpoint.FORMAT_VERSION + 1
  with pytest.raises(UserError, match=f"checkpoint format {now}; this jaxchar .* reads formats "
                     f"{later}"):
    sampler_lib.load_sampler(checkpointed_run)


def test_stateful_mode_equals_window_mode_until_the_window_is_full(checkpointed_run):
  sampler = sampler_lib.load_sampler(checkpointed_run)
  window = sampler.sample("mo", [1e-4], 6, mode="window")[0][0]
  stateful = sampler.sample("mo", [1e-4], 6, mode="stateful")[0][0]
  assert window == stateful  # 2 + 6 = maxlen characters: the same sequence either way
  long_window = sampler.sample("moe: hey", [1.0], 200, seed=4, mode="window")[0][0]
  long_stateful = sampler.sample("moe: hey", [1.0], 200, seed=4, mode="stateful")[0][0]
  assert len(long_stateful) == 200 and long_stateful != long_window  # beyond maxlen they part


@pytest.mark.parametrize("prime", ["moe", "homer: hi moe.\nmoe: "])
def test_fast_window_sampling_equals_rerunning_the_window(checkpointed_run, prime):
  """The staggered generate_window against the reference rerun-per-character algorithm, for a
  short prime (growing window) and a full one; greedy and at T=1 with the same key."""
  sampler = sampler_lib.load_sampler(checkpointed_run)
  window, filled = sampler.encode_prime(prime)
  context = jnp.asarray(np.broadcast_to(window, (3, sampler.maxlen)))
  temps = jnp.array([1e-4, 1.0, 1.3])
  args = (sampler.model, sampler.params, context, temps, jax.random.PRNGKey(11), 60)
  fast = generate.generate_window(*args, context_len=filled)
  reference = generate.generate_window_rerun(*args, context_len=filled)
  assert np.array_equal(np.asarray(fast), np.asarray(reference))


def test_benchmark_table_and_generated_corpus(tmp_path):
  """The benchmark's own pieces (its timings are never asserted): corpus and table."""
  from jaxchar.benchmarking import side_by_side as bench
  bench.write_generated_corpus(tmp_path / "c.txt", 2)
  text = (tmp_path / "c.txt").read_text()
  assert 1.5e6 < len(text) < 3e6 and "\n\n" in text
  rates = {"baseline": 1000.0, "baseline_malloc": 1500.0, "trainer": 2500.0,
           "trainer_flax": 2000.0, "trainer_1dev": 1600.0, "large_vocab": 1750.0}
  runs = {role: [{"windows_per_s": rate, "devices": 2 if role.startswith(("trainer", "large"))
                  and role != "trainer_1dev" else 1}] for role, rate in rates.items()}
  samples = {f"{m}_batch{b}": 1.0 for m in [*generate.GENERATORS, *generate.REFERENCE_GENERATORS]
             for b in (1, 4, 64)}
  table = bench.format_table({
      "jaxchar": "0", "backend": "cpu", "device": "cpu", "cores": 2, "date": "today",
      "repeats": 1, "batch_size": 128, "runs": runs, "median": rates, "validation_s": 12.5,
      "large_vocab_flax": 40.0, "sampling_chars_per_s": samples,
      "memory_probe": {"corpus_mb": 100.0, "peak_rss_mb": 1500.0,
                       "peak_mb": {"RssAnon": 460.0, "RssFile": 180.0, "Rss": 640.0},
                       "cache_reads": {"steps": 20, "read_kb_per_step": 512.0,
                                       "majflt_per_step": 0.0, "rss_file_kb_per_step": 0.0,
                                       "windows_kb_per_step": 7.625}}})
  assert "one device per core (2 devices) | 2,500 | 2.50x |" in table
  assert "| baseline: straightforward Flax step, 1 device, default malloc (1 device) | 1,000 | 1.00x |" in table
  assert "training 1,750 windows/s = 0.70x the 65-symbol trainer; validating 100,000 windows 12.5 s" in table
  assert "100 MB corpus peaked at 1,500 MB" in table
  assert "RssAnon 460 MB, RssFile 180 MB, together 640 MB" in table
  assert "dropped first): 512 KB read from disk (128 pages; the windows are 7.6 KB)" in table


def test_benchmark_role_runs_as_the_trainer_does():
  """One configuration of the benchmark, end to end in its own process (a tiny budget)."""
  from jaxchar import host
  from jaxchar.benchmarking import side_by_side as bench
  result = run_module("jaxchar.bench", "--role=trainer", "--seconds=0.2", devices=None,
                      drop=("XLA_FLAGS",), timeout=300)
  assert result.returncode == 0, result.stderr
  measured = json.loads(result.stdout.split("RESULT=")[1])
  assert measured["devices"] == host.cpu_device_count(0, bench.BATCH)
  assert measured["windows_per_s"] > 0 and measured["backend"] == "cpu"


def test_start_up_benchmark_marks_each_part_in_order(tiny_run):
  """The start-up probe around a real `jaxchar.sample` (its timings are never asserted)."""
  from jaxchar.benchmarking import startup
  marks = startup.launch("jaxchar.sample", [f"--workdir={tiny_run}", "--length=5"])
  order = sorted(m for m in marks if m != "wall_s")
  assert set(order) == {"interpreter", "imported", "restored", "output"}
  assert marks["interpreter"] < marks["imported"] < marks["restored"] < marks["output"]
  table = startup.format_table({"date": "d", "repeats": 1, "median": {"sample": marks}})
  assert "| sample | interpreter " in table and "restored" in table


def test_beside_a_trainer_that_has_not_saved_yet_it_says_so_not_train_first(tmp_path):
  from jaxchar.core import storage
  workdir = tmp_path / "live"
  lock = storage.location(workdir).lock("pid 1 on a host, started now: a trainer").acquire()
  try:  # a trainer holding the folder, before its first save
    with pytest.raises(UserError) as raised:
      sampler_lib.load_sampler(workdir)
  finally:
    lock.release()
  message = " ".join(str(raised.value).split())
  assert "has no finished checkpoint yet: a trainer is running there (pid" in message
  assert "train first" not in message
  with pytest.raises(UserError, match="holds no checkpoint; train first"):  # lock released
    sampler_lib.load_sampler(workdir)
