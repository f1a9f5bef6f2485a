"""Top-p (nucleus) sampling and stop strings: in the jitted generators, the sampler and its
command line, and the server's API."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fastapi.testclient import TestClient

from helpers import run_cases
from jaxchar.errors import UserError
from jaxchar.sampling import generate
from jaxchar.sampling import sampler as sampler_lib
from jaxchar.sampling.config import SampleConfig, unescape_stop
from jaxchar.sampling.sampler import cut_at_stop
from jaxchar.serving.app import create_app
from jaxchar.serving.batcher import Batcher
from jaxchar.serving.jobs import Job
from jaxchar.serving.request_checks import Limits


def test_top_p_keeps_the_smallest_nucleus_reaching_p_per_row():
  probs = np.array([0.5, 0.25, 0.15, 0.1])
  logits = jnp.log(jnp.asarray([probs, probs, probs], jnp.float32))
  scaled = np.asarray(generate.scale_logits(logits, jnp.ones(3), 0, jnp.asarray([0.5, 0.7, 1.0])))
  assert np.isfinite(scaled).tolist() == [[True, False, False, False], [True, True, False, False],
                                          [True, True, True, True]]
  # After top-k 3 the kept mass is renormalised: 0.5 / 0.9 < 0.6 needs a second character.
  both = np.asarray(generate.scale_logits(logits[:1], jnp.ones(1), 3, 0.6))
  assert np.isfinite(both).tolist() == [[True, True, False, False]]
  # Temperature first: at 0.25, 0.5 of 0.5 -> 0.94 of the mass, so p = 0.9 keeps one.
  hot = np.asarray(generate.scale_logits(logits[:1], jnp.full(1, 0.25), 0, 0.9))
  assert np.isfinite(hot).tolist() == [[True, False, False, False]]


def test_generation_with_top_p_off_is_unchanged_and_on_draws_only_from_the_nucleus(tiny_run):
  sampler = sampler_lib.load_sampler(tiny_run)
  window, filled = sampler.encode_prime("moe: ")
  context = jnp.asarray(np.broadcast_to(window, (8, sampler.maxlen)))
  for generator in generate.GENERATORS.values():
    args = (sampler.model, sampler.params, context, jnp.full(8, 1.0), jax.random.PRNGKey(3), 60)
    plain = np.asarray(generator(*args, 0, filled))
    np.testing.assert_array_equal(plain, np.asarray(generator(*args, 0, filled, 1.0)))
    narrow = np.asarray(generator(*args, 0, filled, 0.3))
    assert len(set(narrow.ravel())) < len(set(plain.ravel()))


def test_cut_at_stop_ends_after_the_first_stop_to_end():
  assert cut_at_stop("moe: hi.\nhomer: beer.", ("\n", "hi")) == ("moe: hi", "hi")
  assert cut_at_stop("moe: hi.\nhomer", (".\n", "homer")) == ("moe: hi.\n", ".\n")
  assert cut_at_stop("moe", ("x",)) == ("moe", None)
  assert unescape_stop("\\n\\n") == "\n\n" and unescape_stop("a\\\\n") == "a\\n"


def test_stops_cut_the_same_text_the_sampler_writes_without_them(tiny_run):
  sampler = sampler_lib.load_sampler(tiny_run)
  free = sampler.sample("moe: ", [1.0], 200, num_samples=4, seed=2)[0]
  stopped = sampler.sample("moe: ", [1.0], 200, num_samples=4, seed=2, stops=("\n", "!"))[0]
  for whole, cut in zip(free, stopped):
    assert whole.startswith(cut) and cut_at_stop(whole, ("\n", "!"))[0] == cut
  assert any(len(cut) < 200 for cut in stopped)


def test_bad_top_p_and_stops_are_clear_errors():
  for top_p in (0.0, -0.5, 1.5, float("nan")):
    with pytest.raises(UserError, match="--top_p=.* must be above 0 and at most 1"):
      SampleConfig(top_p=top_p).validate()
  with pytest.raises(UserError, match="--stop has an empty string"):
    SampleConfig(stops=("\n", "")).validate()


def test_the_command_line_says_which_stop_ended_each_sample(tiny_run):
  result, refused = run_cases("jaxchar.sample", [  # both mains in one process
      [f"--workdir={tiny_run}", "--prime=moe: ", "--length=300", "--num_samples=3",
       "--stop=\\n", "--stop=zzz", "--top_p=0.95", "--temperature=1.0"],
      [f"--workdir={tiny_run}", "--top_p=0"]])
  assert result.returncode == 0, result.stderr
  headers = [line for line in result.stdout.splitlines() if line.startswith("----- ")]
  assert len(headers) == 3 and all(h.endswith("(stopped after '\\n')") for h in headers), headers
  assert refused.returncode == 2 and "Traceback" not in refused.stderr
  assert "--top_p=0.0 must be above 0" in refused.stderr


@pytest.fixture(scope="module")
def client(tiny_run):
  sampler = sampler_lib.load_sampler(tiny_run)
  batcher = Batcher(sampler, max_batch=8, max_wait_s=0.01)
  with TestClient(create_app(sampler, batcher, Limits(5000, 100, 8))) as test_client:
    yield test_client, batcher
  batcher.close()


def test_the_api_stops_and_says_why(client):
  test_client, batcher = client
  calls = batcher.calls
  reply = test_client.post("/api/generate", json={"prime": "moe: ", "length": 5000,
                                                  "num_samples": 3, "stop": ["\n", "!"],
                                                  "top_p": 0.9, "temperature": 1.0})
  assert reply.status_code == 200, reply.text
  body = reply.json()
  assert all(s.endswith(stop) for s, stop in zip(body["samples"], body["stopped_by"]))
  assert batcher.calls - calls < 5000 // 64  # it ended once all three had stopped
  with test_client.stream("GET", "/api/stream", params={"prime": "moe: ", "length": 5000,
                                                        "stop": "\n"}) as stream:
    events = "".join(stream.iter_text())
  done = events.split("event: done\ndata: ")[1]
  assert '"stopped_by": "\\n"' in done and '\\n", "step"' in done


@pytest.mark.parametrize("body, message", [
    ({"top_p": 0}, "top_p=0.0 must be above 0 and at most 1"),
    ({"top_p": 1.01}, "top_p=1.01 must be above 0"),
    ({"stop": ""}, "stop has an empty string"),
    ({"stop": [1]}, "stop must be a string or a list of strings"),
    ({"stop": ["a"] * 9}, "at most 8 are allowed"),
])
def test_bad_controls_are_400(client, body, message):
  reply = client[0].post("/api/generate", json=body)
  assert reply.status_code == 400 and message in reply.json()["error"], reply.text


def test_a_stop_that_spans_two_chunks_ends_the_job(client):
  _, batcher = client
  vocab = batcher.sampler.vocab
  job = Job([batcher.sampler.row("", 1.0)], 5000, "window", float("inf"), stops=("beer!",))
  job.written = [vocab.encode("m" * 60 + "beer")[None]]
  assert not batcher._all_stopped(job)
  job.written.append(vocab.encode("!" + "o" * 63)[None])  # only "!" is in the new chunk
  assert batcher._all_stopped(job)
