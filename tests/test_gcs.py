"""Runs that live in a bucket, against a real GCS JSON API (fake-gcs-server, started by the
`gcs` fixture): gcsfs and tensorstore talk HTTP to it, nothing of the storage layer is mocked."""

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import jax
import pytest

from helpers import (GcsEmulator, StopAfterPolls, TINY_TEXT, assert_same_run, final_checkpoint,
                     free_port, run_cases, run_python, start_module, start_python, start_server,
                     tiny_config, write_tiny_text)
from jaxchar import train
from jaxchar.core import checkpoint, idcache, storage, textstream
from jaxchar.core.storage import bucket_lock
from jaxchar.core.restore import restore
from jaxchar.errors import UserError
from jaxchar.exporting import files
from jaxchar.sampling import sampler as sampler_lib
from jaxchar.sampling.config import SampleConfig
from jaxchar.sampling.sampler import run_sampling
from jaxchar.scoring.config import ScoreConfig
from jaxchar.scoring.report import run_scoring
from jaxchar.training import init_from, loop
from jaxchar.training.metrics import read_metrics

# The tiny text as two objects under one prefix (a folder of texts), and as local files.
PARTS = {"texts/a.txt": TINY_TEXT[:1200], "texts/b.txt": TINY_TEXT[1200:]}


# `python -m jaxchar.train` with gcsfs's backoff between retries 100 times shorter: the same
# retries, then the same failure, in 0.3 s instead of about 33 s.
TRAIN_WITH_SHORT_BACKOFF = """
import asyncio, runpy, sys
import gcsfs.core, gcsfs.retry

class ShortSleeps:
  def __getattr__(self, name):
    return getattr(asyncio, name)

  @staticmethod
  def sleep(seconds, *args, **kwargs):
    return asyncio.sleep(seconds / 100, *args, **kwargs)

gcsfs.core.asyncio = gcsfs.retry.asyncio = ShortSleeps()
sys.argv[0] = "jaxchar.train"
runpy.run_module("jaxchar.train", run_name="__main__", alter_sys=True)
"""


def upload_texts(gcs, bucket: str) -> str:
  for name, text in PARTS.items():
    gcs.put(f"{bucket}/{name}", text.encode())
  return f"{bucket}/texts"


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
  try:
    return proc.communicate(timeout=timeout)[0]
  except subprocess.TimeoutExpired as e:
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no end within {timeout} s: {e.output}") from None


@pytest.fixture(scope="module")
def bucket_run(gcs, tmp_path_factory):
  """A tiny run trained from a two-object prefix into a bucket, stopped by SIGTERM in epoch 2
  and resumed there; and the same run trained without a stop from the same files on disk."""
  root = tmp_path_factory.mktemp("bucket_run")
  for name, text in PARTS.items():
    (root / name).parent.mkdir(exist_ok=True)
    (root / name).write_text(text, encoding="utf-8")
  bucket = gcs.bucket("bucket-run")
  data = upload_texts(gcs, bucket)
  train.train_and_evaluate(tiny_config(root / "texts", epochs=3, save_every_steps=7),
                           root / "full")
  config = tiny_config(data, epochs=3, save_every_steps=7)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(loop, "StopRequests", lambda: StopAfterPolls(60))  # epoch 1 has 45 steps
    with pytest.raises(SystemExit):
      train.train_and_evaluate(config, f"{bucket}/run", cache_dir=root / "cache")
  stopped = final_checkpoint(f"{bucket}/run")[1]
  history = train.train_and_evaluate(config, f"{bucket}/run", cache_dir=root / "cache")
  return {"workdir": f"{bucket}/run", "full": root / "full", "stopped": stopped,
          "history": history, "root": root, "bucket": bucket}


@pytest.mark.lowest
def test_a_run_in_a_bucket_resumes_bit_exact_from_it(bucket_run, gcs):
  stopped = bucket_run["stopped"]
  assert (stopped["epoch"], stopped["epoch_complete"]) == (2, False)
  assert [h["epoch"] for h in bucket_run["history"]] == [2, 3]
  assert_same_run(bucket_run["full"], bucket_run["workdir"])
  names = gcs.names(bucket_run["workdir"])
  assert "run/train.lock" not in names  # released
  assert {"run/metrics.jsonl", "run/checkpoints/135/commit_success.txt"} <= set(names)
  assert any(n.startswith("run/tensorboard/events.out.tfevents") for n in names)
  steps = [(r["kind"], r["step"]) for r in read_metrics(bucket_run["workdir"])]
  assert len(steps) == len(set(steps))  # nothing written twice across the stop
  assert steps == [(r["kind"], r["step"]) for r in read_metrics(bucket_run["full"])]


def test_a_text_in_a_bucket_is_encoded_once_and_again_when_an_object_changes(gcs, tmp_path):
  bucket = gcs.bucket("text-cache")
  data = upload_texts(gcs, bucket)
  sources = textstream.list_sources(data)
  assert [str(s.path) for s in sources] == [f"{bucket}/texts/a.txt", f"{bucket}/texts/b.txt"]
  first = idcache.open_or_encode(data, sources, True, tmp_path, show_progress=False)
  again = idcache.open_or_encode(data, textstream.list_sources(data), True, tmp_path,
                                 show_progress=False)
  assert (first.reused, again.reused) == (False, True) and again.sha256 == first.sha256
  gcs.put(f"{bucket}/texts/b.txt", PARTS["texts/b.txt"].replace("beer", "wine").encode())
  changed = idcache.open_or_encode(data, textstream.list_sources(data), True, tmp_path,
                                   show_progress=False)
  assert not changed.reused and "w" in changed.present and changed.sha256 != first.sha256
  glob = textstream.list_sources(f"{bucket}/texts/b*")
  assert [str(s.path) for s in glob] == [f"{bucket}/texts/b.txt"]


@pytest.mark.lowest
def test_a_second_trainer_is_refused_and_a_stale_lock_is_taken_over(gcs, tmp_path,
                                                                     monkeypatch):
  workdir = storage.location(gcs.bucket("locked") + "/run")
  monkeypatch.setattr(bucket_lock, "HEARTBEAT_S", 0.05)
  holder = workdir.lock(storage.holder_description("a test")).acquire()
  try:
    assert "pid" in workdir.lock_holder()
    with pytest.raises(UserError, match="is in use by another training run"):
      train.train_and_evaluate(tiny_config(tmp_path / "none.txt"), workdir)
    monkeypatch.setattr(bucket_lock, "STALE_AFTER_S", 0.0)  # as if it had been silent long
    successor = workdir.lock(storage.holder_description("another test")).acquire()
    assert successor.took_over and "pid" in successor.took_over
    deadline = time.monotonic() + 20
    while not holder.lost and time.monotonic() < deadline:
      time.sleep(0.05)
    with pytest.raises(UserError, match="another trainer took over its lock"):
      holder.check()  # the first run saves no more
    successor.release()
    assert workdir.lock_holder() is None
  finally:
    holder.release()


def test_sampling_from_a_bucket_while_a_trainer_writes_to_it(gcs, tmp_path):
  bucket = gcs.bucket("live")
  args = [f"--data={upload_texts(gcs, bucket)}", f"--workdir={bucket}/run",
          f"--cache_dir={tmp_path}", "--maxlen=8", "--stride=2", "--hidden=16",
          "--batch_size=16", "--epochs=100", "--save_every_steps=5", "--keep=1",
          "--sample_len=0"]
  trainer = start_module("jaxchar.train", *args, env={"PYTHONUNBUFFERED": "1"},
                         start_new_session=True)
  try:
    deadline = time.monotonic() + 120
    while not checkpoint.checkpoint_steps(f"{bucket}/run"):
      assert trainer.poll() is None and time.monotonic() < deadline, trainer.stdout.read()
      time.sleep(0.2)
    steps, reads = set(), 0
    deadline = time.monotonic() + 60
    while reads < 4 or len(steps) < 2:  # each read races the trainer's saves and deletions
      assert time.monotonic() < deadline, (reads, steps)
      steps.add(sampler_lib.load_sampler(f"{bucket}/run").step)
      reads += 1
  finally:
    os.killpg(trainer.pid, signal.SIGTERM)
  out = finish(trainer)
  assert trainer.returncode == 128 + signal.SIGTERM, out
  assert "saved a checkpoint at step" in out and "Traceback" not in out


@pytest.mark.lowest
def test_sample_score_export_and_serve_read_a_bucket(bucket_run, tmp_path, capsys):
  """The readers in this process, the server as its own (as a user runs it)."""
  workdir, text = bucket_run["workdir"], bucket_run["root"] / "texts" / "a.txt"
  sampled = run_sampling(SampleConfig(workdir=workdir, length=40))
  assert "# checkpoint step 135" in sampled
  with pytest.raises(UserError, match="--workdir=gs://no-such-bucket-here/run does not exist"):
    run_sampling(SampleConfig(workdir="gs://no-such-bucket-here/run"))
  run_scoring(ScoreConfig(workdir=workdir, data=str(text)))
  assert "checkpoint step 135" in capsys.readouterr().out
  [page] = files.export(restore(workdir), tmp_path / "model.html", "html", False)
  assert page.stat().st_size > 1000
  server, port = start_server(workdir, tmp_path / "serve.log")
  try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=30) as response:
      info = json.loads(response.read())
    assert info["step"] == 135, info
  finally:
    server.terminate()
    server.wait(timeout=30)


def test_fine_tuning_starts_from_a_run_in_a_bucket_and_resumes(bucket_run, tmp_path, capsys):
  base = init_from.load_base(bucket_run["workdir"])
  config = tiny_config(bucket_run["root"] / "texts" / "a.txt", epochs=1,
                       init_from=bucket_run["workdir"])
  train.train_and_evaluate(config, tmp_path / "tuned", base)
  began = final_checkpoint(tmp_path / "tuned")[1]["init_from"]
  assert (began["workdir"], began["step"]) == (bucket_run["workdir"], 135)
  assert train.train_and_evaluate(config, tmp_path / "tuned", base) == []  # resumed, finished
  assert "nothing to train" in capsys.readouterr().out


@pytest.mark.lowest
def test_two_processes_without_a_shared_disk_resume_from_one_bucket(gcs, tmp_path):
  """Each process has its own current folder and --cache_dir; the workdir is the bucket's."""
  bucket = gcs.bucket("two-hosts")
  data = upload_texts(gcs, bucket)

  def both(epochs: int) -> list[str]:
    port = free_port()
    procs = []
    for i in range(2):
      host = tmp_path / f"host{i}"
      host.mkdir(exist_ok=True)
      procs.append(start_module(
          "jaxchar.train", f"--data={data}", f"--workdir={bucket}/run",
          f"--cache_dir={host / 'cache'}", "--maxlen=8", "--stride=2", "--hidden=16",
          "--batch_size=16", "--steps_per_epoch=10", f"--epochs={epochs}", "--sample_len=0",
          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
          f"--process_id={i}", devices=2, cwd=host, start_new_session=True))
    outputs = [finish(p) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return outputs

  first = both(epochs=1)
  assert "devices: 4 x cpu in 2 process(es)" in first[0]
  resumed = both(epochs=2)
  assert "resuming from the checkpoint at step 10 (the end of epoch 1)" in resumed[0]
  assert "parameters identical on all 2 processes" in resumed[0]
  assert checkpoint.checkpoint_steps(f"{bucket}/run") == [10, 20]
  for i in range(2):  # nothing of the run on either host's disk: only its text cache
    assert {p.name for p in (tmp_path / f"host{i}").iterdir()} == {"cache"}


@pytest.mark.lowest
def test_bucket_errors_are_one_paragraph_and_write_nothing(gcs, bucket_run, tmp_path):
  bucket = bucket_run["bucket"]
  train_cases = run_cases("jaxchar.train", [
      [f"--data={bucket}/texts", "--workdir=gs://no-such-bucket-here/run",
       f"--cache_dir={tmp_path}"],
      [f"--data={bucket}/nothing/", f"--workdir={tmp_path / 'run'}",
       f"--cache_dir={tmp_path}"],
      [f"--data={bucket}/texts", f"--workdir={bucket}/other", f"--cache_dir={bucket}/cache"]])
  expected = ["the bucket does not exist", "no such file",
              "--cache_dir=gs://"]
  for result, words in zip(train_cases, expected, strict=True):
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert message.startswith("error: ") and words in message, message
  assert not (tmp_path / "run").exists() and gcs.names(f"{bucket}/other") == []


def test_a_bucket_that_stops_answering_stops_the_run_and_it_resumes_after(tmp_path):
  """The emulator killed between two checkpoints (its objects kept on disk), then started
  again: the next save stops the run with one paragraph, and the rerun resumes."""
  root = tmp_path / "objects"
  emulator = GcsEmulator(root)
  bucket = emulator.bucket("flaky")
  emulator.put(f"{bucket}/texts/long.txt", (TINY_TEXT * 16).encode())  # epochs of seconds
  args = [f"--data={bucket}/texts", f"--workdir={bucket}/run",
          f"--cache_dir={tmp_path / 'cache'}", "--maxlen=8", "--stride=2", "--hidden=16",
          "--batch_size=16", "--epochs=50", "--sample_len=0"]
  trainer = start_python("-c", TRAIN_WITH_SHORT_BACKOFF, *args,
                         env={**emulator.env, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
  try:
    deadline = time.monotonic() + 120
    while not any(n.endswith("/commit_success.txt") and n.count("/") == 3
                  for n in emulator.names(f"{bucket}/run")):  # epoch 1's checkpoint, complete
      assert trainer.poll() is None and time.monotonic() < deadline
      time.sleep(0.05)
  finally:
    emulator.stop()
  out = finish(trainer, timeout=150)
  message = " ".join(out.split())
  assert trainer.returncode == 2 and "Traceback" not in out, out
  assert "error: could not write" in message and "could not be reached" in message, out
  assert "damaged" not in message and "moved" not in message
  restarted = GcsEmulator(root, port=emulator.port)
  try:
    result = run_cases("jaxchar.train", [[*args, "--epochs=1"]], env=restarted.env)[0]
    assert "resuming from the checkpoint at step" in result.stdout, result.stderr
    assert "nothing to train" in result.stdout
    assert "corrupt_checkpoints" not in " ".join(restarted.names(f"{bucket}/run"))
  finally:
    restarted.stop()


def _next_checkpoint_written(emulator: GcsEmulator, workdir: str, trainer) -> None:
  """Waits for the trainer's next complete checkpoint in the bucket."""
  before = _complete_steps(emulator, workdir)
  deadline = time.monotonic() + 120
  while _complete_steps(emulator, workdir) == before:
    assert trainer.poll() is None and time.monotonic() < deadline, trainer.stdout.read()
    time.sleep(0.05)


def _complete_steps(emulator: GcsEmulator, workdir: str) -> list[int]:
  """The steps of the checkpoints in `workdir` that hold their commit marker (read through the
  emulator's own API: this process does not use it as its storage)."""
  prefix = workdir[len("gs://"):].split("/", 1)[1] + "/checkpoints/"
  return sorted(int(n[len(prefix):].split("/")[0]) for n in emulator.names(workdir)
                if n.startswith(prefix) and n.endswith("/commit_success.txt")
                and n[len(prefix):].count("/") == 1)


def test_a_bucket_that_stops_answering_ends_the_run_within_its_bound_and_sigterm_within_30s(
    tmp_path):
  """The emulator paused (SIGSTOP: connections open, nothing answers) mid-run: the trainer ends
  with one paragraph within --storage_timeout_s; paused again and SIGTERM sent (a bound far
  longer than a preemption notice), it ends within 30 s; resumed (SIGCONT), the same command
  resumes from the latest complete checkpoint."""
  emulator = GcsEmulator()
  bucket = emulator.bucket("paused")
  emulator.put(f"{bucket}/texts/long.txt", (TINY_TEXT * 16).encode())  # epochs of seconds
  args = [f"--data={bucket}/texts", f"--workdir={bucket}/run",
          f"--cache_dir={tmp_path / 'cache'}", "--maxlen=8", "--stride=2", "--hidden=16",
          "--batch_size=16", "--epochs=50", "--sample_len=0"]
  env = {**emulator.env, "PYTHONUNBUFFERED": "1"}
  try:
    for stop, bound in (("pause", 4), ("pause and SIGTERM", 600)):
      trainer = start_module("jaxchar.train", *args, f"--storage_timeout_s={bound}", env=env,
                             start_new_session=True)
      _next_checkpoint_written(emulator, f"{bucket}/run", trainer)
      os.kill(emulator.process.pid, signal.SIGSTOP)
      paused = time.monotonic()
      if stop == "pause and SIGTERM":
        os.killpg(trainer.pid, signal.SIGTERM)
      out = finish(trainer, timeout=120)
      took = time.monotonic() - paused
      os.kill(emulator.process.pid, signal.SIGCONT)
      message = " ".join(out.split())
      assert "Traceback" not in out and "damaged" not in message, out
      if stop == "pause":
        assert trainer.returncode == 2, out
        assert "error: Cloud Storage stopped answering: no reply for" in message, out
        assert "(--storage_timeout_s=4)" in message and took < 4 + 15, (took, out)
      else:
        assert trainer.returncode == 128 + signal.SIGTERM, out
        assert "error: SIGTERM: Cloud Storage gave no answer for" in message, out
        assert took < 30, (took, out)
    steps = _complete_steps(emulator, f"{bucket}/run")
    result = run_cases("jaxchar.train", [[*args, "--epochs=1"]], env=emulator.env)[0]
    assert f"resuming from the checkpoint at step {steps[-1]}" in result.stdout, result.stderr
    assert "corrupt_checkpoints" not in " ".join(emulator.names(f"{bucket}/run"))
  finally:
    os.kill(emulator.process.pid, signal.SIGCONT)
    emulator.stop()


def _bytes_served(emulator: GcsEmulator) -> int:
  """What the emulator has written to its sockets so far (it logs nothing at its log level)."""
  io = Path(f"/proc/{emulator.process.pid}/io").read_text()
  return int(next(line.split()[1] for line in io.splitlines() if line.startswith("wchar:")))


def test_a_reader_downloads_only_the_chosen_checkpoints_parameters(gcs, tmp_path):
  """Of a run with 5 checkpoints kept, the sampler reads the candidates' metadata and one
  checkpoint's parameters (no optimizer state): under 1.1x those parameters' bytes in all."""
  workdir = f"{gcs.bucket('five-kept')}/run"
  config = tiny_config(write_tiny_text(tmp_path), hidden=512, epochs=1, steps_per_epoch=5,
                       save_every_steps=1, keep=5)
  train.train_and_evaluate(config, workdir, cache_dir=tmp_path / "cache")
  assert checkpoint.checkpoint_steps(workdir) == [1, 2, 3, 4, 5]
  before = _bytes_served(gcs)
  sampler = sampler_lib.load_sampler(workdir)
  served = _bytes_served(gcs) - before
  params_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(sampler.params))
  assert params_bytes > 4_000_000 and served < 1.1 * params_bytes, (served, params_bytes)


def test_gcsfs_standard_file_system_unless_the_user_asks_for_the_extended_one():
  """jaxchar and orbax get gcsfs's standard file system (no bucket-layout lookups) unless
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT is set, which jaxchar then leaves as it is."""
  probe = ("import os, jaxchar.core.storage, gcsfs, gcsfs.core, fsspec\n"
           "print(os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'], "
           "gcsfs.GCSFileSystem is gcsfs.core.GCSFileSystem "
           "is fsspec.get_filesystem_class('gs'))")
  default = run_python("-c", probe, drop=("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",))
  assert default.stdout.split() == ["false", "True"], default.stderr
  asked = run_python("-c", probe, env={"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "true"})
  assert asked.stdout.split()[0] == "true", asked.stderr
