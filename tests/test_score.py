"""`python -m jaxchar.score`: a run's validation text gives its validation loss, every device
count gives the same figures, the per-character file and JSON, and every bad input."""

import json
import math
import subprocess

import jax
import numpy as np
import pytest

from helpers import TINY_TEXT, run_cases, run_module
from jaxchar.core import checkpoint, corpus, data
from jaxchar.errors import UserError
from jaxchar.sampling import sampler as sampler_lib
from jaxchar.scoring import scorer
from jaxchar.scoring.config import ScoreConfig


def run_score(*args: str) -> subprocess.CompletedProcess:
  return run_module("jaxchar.score", *args, devices=2)


@pytest.fixture(scope="module")
def val_text(tiny_run, tmp_path_factory):
  """The tiny run's validation text, cut as its trainer cut it."""
  text = TINY_TEXT.lower()
  path = tmp_path_factory.mktemp("score") / "val.txt"
  path.write_text(text[data.split_index(text, 0.1):], encoding="utf-8")
  return path


def test_the_validation_text_scores_the_recorded_validation_loss(tiny_run, val_text, tmp_path):
  sampler = sampler_lib.load_sampler(tiny_run)
  recorded = checkpoint.read_meta(tiny_run, sampler.step)["val_loss"]
  tsv = tmp_path / "chars.tsv"
  result = run_score(f"--workdir={tiny_run}", f"--data={val_text}", "--json",
                     f"--per_char={tsv}", "--batch_size=64")  # several batches over 2 devices
  assert result.returncode == 0, result.stderr
  figures = json.loads(result.stdout)
  assert abs(figures["nats_per_char"] - recorded) < 1e-5, (figures, recorded)
  text = val_text.read_text(encoding="utf-8")
  assert figures["scored"] == len(text) - sampler.maxlen and figures["excluded"] == {}
  assert figures["bits_per_char"] == pytest.approx(figures["nats_per_char"] / math.log(2))
  assert figures["perplexity"] == pytest.approx(math.exp(figures["nats_per_char"]))
  lines = tsv.read_text(encoding="utf-8").splitlines()
  assert lines[0] == "position\tcharacter\tlog_prob_nats" and len(lines) == figures["scored"] + 1
  rows = [line.split("\t") for line in lines[1:]]
  assert [int(r[0]) for r in rows] == list(range(sampler.maxlen, len(text)))
  assert all(scorer.tsv_char(text[int(r[0])]) == r[1] for r in rows)
  assert -sum(float(r[2]) for r in rows) / len(rows) == pytest.approx(recorded, abs=1e-5)


def test_from_start_and_unknown_characters_are_counted_and_named(tiny_run, tmp_path):
  path = tmp_path / "odd.txt"
  path.write_text("MOE: hé homer.\nbarney: beer€!\n" * 3, encoding="utf-8")
  result = run_score(f"--workdir={tiny_run}", f"--data={path}", "--from_start")
  assert result.returncode == 0, result.stderr
  assert ("warning: 6 character(s) of " in result.stderr
          and "'é' x3, '€' x3" in result.stderr), result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith("# checkpoint step 90 (epoch 2, validation loss ")
  assert lines[1].startswith(f"{path}: 83 of 90 characters scored (every one but the first")
  nats, bits, perplexity = (float(x) for x in
                            [lines[2].split()[0], lines[2].split()[5], lines[2].split()[-1]])
  assert bits == pytest.approx(nats / math.log(2), abs=1e-4)
  assert perplexity == pytest.approx(math.exp(nats), rel=1e-3)


def test_figures_do_not_depend_on_the_device_count_or_batch(tiny_run):
  sampler = sampler_lib.load_sampler(tiny_run)
  prepared = scorer.prepare(TINY_TEXT, sampler.vocab, sampler.lowercase)
  one = scorer.score(sampler, prepared, True, 1024, devices=jax.local_devices()[:1])
  four = scorer.score(sampler, prepared, True, 100)  # 4 devices, 25 each, a partial last batch
  assert len(four.log_probs) == len(TINY_TEXT) - 1
  np.testing.assert_allclose(one.log_probs, four.log_probs, atol=1e-5)
  np.testing.assert_array_equal(one.positions, four.positions)
  # A full window through the short-context path equals validation's path.
  full = scorer.score(sampler, prepared, False)
  np.testing.assert_allclose(full.log_probs, four.log_probs[sampler.maxlen - 1:], atol=1e-5)


def test_prepare_keeps_positions_of_the_text_as_given(tiny_run):
  sampler = sampler_lib.load_sampler(tiny_run)
  prepared = scorer.prepare("İMoe€: hi", sampler.vocab, True)  # 'İ'.lower() is 2 characters
  assert prepared.text == "İmoe€: hi" and prepared.excluded == {"İ": 1, "€": 1}
  assert prepared.positions.tolist() == [1, 2, 3, 5, 6, 7, 8]
  assert sampler.vocab.decode(prepared.ids) == "moe: hi"


@pytest.mark.parametrize("text, from_start, message", [
    ("ЖЖЖ", True, "has no character the model knows"),
    ("moe: hi", False, "too few to score: each scored character needs a full 8-character "
                       "window before it. Give a longer text, or pass --from_start"),
    ("m€", True, "too few to score: each scored character needs one character before it"),
])
def test_texts_with_nothing_to_score_are_refused(tiny_run, text, from_start, message):
  sampler = sampler_lib.load_sampler(tiny_run)
  prepared = scorer.prepare(text, sampler.vocab, True)
  with pytest.raises(UserError, match=message):
    scorer.check_scorable(prepared, sampler.maxlen, from_start, "--data=x.txt")


def test_config_errors(tmp_path):
  with pytest.raises(UserError, match="--data is required"):
    ScoreConfig().validate()
  with pytest.raises(UserError, match="the folder .*nowhere does not exist"):
    ScoreConfig(data="x.txt", per_char=str(tmp_path / "nowhere" / "out.tsv")).validate()
  with pytest.raises(UserError, match="is a folder"):
    ScoreConfig(data="x.txt", per_char=str(tmp_path)).validate()
  for name, content in [("empty.txt", b""), ("latin1.txt", "caf\u00e9".encode("latin-1"))]:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match="is empty|is not valid UTF-8"):
      corpus.read_text(tmp_path / name)


def test_bad_input_exits_2_with_one_paragraph_and_writes_nothing(tiny_run, tmp_path):
  messages = {"missing file": "no such file", "no known character": "no character the model knows"}
  cases, folders = [], []
  for i, case in enumerate(messages):
    folder = tmp_path / str(i)  # short paths: the error's first line is as long as it was
    folder.mkdir()
    path = folder / "text.txt"
    if case == "no known character":
      path.write_text("ЖЖЖЖЖЖЖЖЖЖЖЖ", encoding="utf-8")
    folders.append((folder, path))
    cases.append([f"--workdir={tiny_run}", f"--data={path}", f"--per_char={folder / 'out.tsv'}"])
  results = run_cases("jaxchar.score", cases, devices=2)  # both mains in one process
  for case, result, (folder, path) in zip(messages, results, folders, strict=True):
    assert result.returncode == 2, (case, result.stderr)
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert messages[case] in " ".join(result.stderr.split()), (case, result.stderr)
    assert list(folder.iterdir()) == ([path] if path.exists() else [])  # no out.tsv


@pytest.mark.parametrize("from_start", [False, True])
def test_a_file_streamed_in_pieces_scores_as_the_whole_text(tiny_run, tmp_path, monkeypatch,
                                                            from_start):
  """Pieces of 50 bytes (each scored with the 8 characters before it as context) give the
  whole text's figures and per-character scores, unknown characters included."""
  from jaxchar.scoring import stream
  monkeypatch.setattr(stream, "PIECE_BYTES", 50)
  text = TINY_TEXT.replace("beer", "b€er")[:900]
  path = tmp_path / "text.txt"
  path.write_text(text, encoding="utf-8")
  sampler = sampler_lib.load_sampler(tiny_run)
  whole = scorer.score(sampler, scorer.prepare(text, sampler.vocab, True), from_start, 64)
  totals = stream.Totals(sampler.maxlen, from_start)
  lines = list(stream.per_char_lines(stream.score_pieces(sampler, path, totals, 64),
                                     sampler.vocab.chars))
  assert totals.figures()["excluded"] == whole.figures()["excluded"] == {"€": text.count("€")}
  for key in ("characters", "scored"):
    assert totals.figures()[key] == whole.figures()[key]
  assert totals.figures()["nats_per_char"] == pytest.approx(whole.nats_per_char, abs=1e-5)
  assert lines == list(scorer.per_char_lines(whole)) or all(  # equal up to float rounding
      a.split("\t")[:2] == b.split("\t")[:2] and abs(float(a.split("\t")[2]) -
                                                  float(b.split("\t")[2])) < 1e-4
      for a, b in zip(lines[1:], list(scorer.per_char_lines(whole))[1:]))
  assert len(lines) == len(whole.log_probs) + 1


def test_scoring_piece_by_piece_holds_no_device_buffers_across_pieces(tiny_run, tmp_path,
                                                                      monkeypatch):
  """Each piece's ids, parameters and results leave the devices once it is scored: the count of
  live device arrays is the same after every piece (memory bounded whatever the file's size)."""
  from jaxchar.scoring import stream
  monkeypatch.setattr(stream, "PIECE_BYTES", 50)
  path = tmp_path / "text.txt"
  path.write_text(TINY_TEXT[:1000], encoding="utf-8")
  sampler = sampler_lib.load_sampler(tiny_run)
  totals = stream.Totals(sampler.maxlen, False)
  live = [len(jax.live_arrays()) for _ in stream.score_pieces(sampler, path, totals, 64)]
  assert len(live) >= 15 and len(set(live)) == 1, live
