"""The trainer entry point: a tiny end-to-end run, every bad input, and the launch flagfiles."""

import subprocess
from pathlib import Path

import pytest
from absl import flags

from jaxchar.core import checkpoint, corpus
from jaxchar.core.storage.local import LocalPath
from jaxchar import train
from jaxchar.training.config import DEFAULT_DATA

from helpers import REPO, run_cases, run_main, run_module

FLAGS = flags.FLAGS
TINY_ARGS = ["--maxlen=8", "--stride=2", "--hidden=16", "--batch_size=16", "--epochs=2",
             "--sample_len=30", "--temperatures=0.5,1.0", "--eval_batch_size=64"]


def test_tiny_run_trains_validates_and_writes_samples(tiny_file, tmp_path, capsys):
  workdir = tmp_path / "run"
  assert run_main([f"--data={tiny_file}", f"--workdir={workdir}", *TINY_ARGS]) == 0
  out = capsys.readouterr().out
  epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
  assert len(epoch_lines) == 2
  assert "val loss" in epoch_lines[0] and "bits/char" in epoch_lines[0]
  samples = (workdir / "samples.md").read_text(encoding="utf-8")
  assert samples.count("## Epoch ") == 2
  assert samples.count("### Temperature 0.5") == 2 and samples.count("### Temperature 1.0") == 2


def test_the_old_name_of_the_stride_still_works_in_a_flagfile_with_a_note(tiny_file, tmp_path,
                                                                           capsys):
  flagfile = tmp_path / "old.flags"
  flagfile.write_text("\n".join(["--step=4", *[a for a in TINY_ARGS if "stride" not in a]]))
  workdir = tmp_path / "run"
  assert run_main([f"--flagfile={flagfile}", f"--data={tiny_file}", f"--workdir={workdir}",
                   "--epochs=1", "--sample_len=0"]) == 0
  err = capsys.readouterr().err
  assert "note: --step is now called --stride; read --step=4 as --stride=4" in err
  meta = checkpoint.read_meta(workdir, checkpoint.checkpoint_steps(workdir)[-1])
  assert meta["config"]["stride"] == 4 and "step" not in meta["config"]


def bad_input_cases(tmp_path: Path, tiny_file: Path) -> list[tuple[list[str], str]]:
  empty = tmp_path / "empty.txt"
  empty.write_bytes(b"")
  latin1 = tmp_path / "latin1.txt"
  latin1.write_bytes("moe: caf\u00e9\n".encode("utf-8") + "na\u00efve".encode("latin-1"))
  short = tmp_path / "short.txt"
  short.write_text("moe: hi", encoding="utf-8")
  no_val = tmp_path / "noval.txt"
  no_val.write_text("xy" * 50, encoding="utf-8")
  data = f"--data={tiny_file}"
  return [
      ([f"--data={tmp_path / 'missing.txt'}"], "no such file"),
      ([f"--data={tmp_path}"], "empty.txt is empty; pass a file with some text to learn from, "
                               "or remove it from the folder"),  # a folder: each file read
      ([f"--data={tmp_path / 'nothing'}/*.txt"], "the pattern matches no file"),
      ([f"--data={empty}"], "is empty"),
      ([f"--data={latin1}"], "not valid UTF-8: byte 13 (line 2)"),
      ([f"--data={short}"], "too few for one window"),
      ([f"--data={no_val}", "--maxlen=20"], "validation part"),
      ([data, "--maxlen=0"], "--maxlen=0 must be a positive integer"),
      ([data, "--stride=-1"], "--stride=-1 must be a positive integer"),
      ([data, "--batch_size=0"], "--batch_size=0 must be a positive integer"),
      ([data, "--epochs=-1"], "--epochs=-1 must be >= 1, or 0 to choose it from the corpus size"),
      ([data, "--hidden=-5"], "--hidden=-5 must be a positive integer"),
      ([data, "--val_fraction=1.0"], "outside [0, 1)"),
      ([data, "--val_fraction=-0.1"], "outside [0, 1)"),
      ([data, "--temperatures=0.5,0"], "--temperatures=0 must be a positive number"),
      ([data, "--temperatures=0.5,-1"], "--temperatures=-1 must be a positive number"),
      ([data, "--temperatures=0.5,hot"], "not a comma-separated list of numbers"),
      ([data, "--batch_size=6"], "does not split evenly over the 4 devices"),
      ([data, "--heartbeat_timeout_s=0"], "--heartbeat_timeout_s=0 must be at least 1"),
      ([data, *TINY_ARGS, "--learning_rate=1e38"], "the training loss became nan"),
  ]


def test_every_bad_input_is_one_clear_error(tmp_path, tiny_file, capsys):
  for args, message in bad_input_cases(tmp_path, tiny_file):
    code = run_main([*args, f"--workdir={tmp_path / 'w'}"])
    err = capsys.readouterr().err
    assert code == 2, (args, err)
    assert "Traceback" not in err and "error: " in err, (args, err)
    paragraph = " ".join(err[err.index("error: "):].split())  # after any cleared progress bar
    assert message in paragraph, (args, err)


def test_unreadable_data_is_reported(tiny_file, tmp_path, capsys, monkeypatch):
  def deny(*args, **kwargs):
    raise PermissionError(13, "Permission denied")
  monkeypatch.setattr(LocalPath, "open_binary", deny)  # the text is streamed from it
  assert run_main([f"--data={tiny_file}", f"--workdir={tmp_path / 'w'}"]) == 2
  assert "cannot be read (Permission denied)" in " ".join(capsys.readouterr().err.split())


def test_mirrored_corpus_with_wrong_checksum_is_refused(tmp_path, monkeypatch, capsys):
  mirror = tmp_path / "mirror"
  mirror.mkdir()
  (mirror / corpus.MOES_FILENAME).write_text("not the real text\n" * 100, encoding="utf-8")
  monkeypatch.setenv(corpus.MIRROR_ENV, str(mirror))
  monkeypatch.chdir(tmp_path)
  assert run_main(["--workdir=w"]) == 2
  err = " ".join(capsys.readouterr().err.split())
  assert "not the expected 810e7e76" in err and str(mirror) in err
  assert not (tmp_path / "data" / corpus.MOES_FILENAME).exists()
  assert list((tmp_path / "data").iterdir()) == []  # no partial file left behind


def test_default_corpus_is_fetched_from_the_mirror_and_checked(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  text = corpus.read_text(DEFAULT_DATA, DEFAULT_DATA)
  assert corpus.sha256_of(tmp_path / DEFAULT_DATA) == corpus.MOES_SHA256
  assert len(text) == 305_270
  (tmp_path / DEFAULT_DATA).write_text("edited", encoding="utf-8")
  with pytest.raises(corpus.UserError, match="Delete that file"):
    corpus.read_text(DEFAULT_DATA, DEFAULT_DATA)


def test_command_line_errors_exit_without_traceback():
  cases = [["--maxlen=0"], ["--maxlen=abc"], ["surplus"]]
  # The first as its own process; the others' mains in one process.
  results = [run_module("jaxchar.train", *cases[0], devices=None, timeout=120),
             *run_cases("jaxchar.train", cases[1:], devices=None, timeout=120)]
  for args, result in zip(cases, results, strict=True):
    assert result.returncode != 0, args
    assert "Traceback" not in result.stderr, (args, result.stderr)
    assert "error" in result.stderr.lower(), (args, result.stderr)


@pytest.mark.parametrize("flagfile", sorted((REPO / "launch").glob("*.flags")),
                         ids=lambda p: p.name)
def test_launch_flagfiles_parse_into_a_valid_config(flagfile, monkeypatch):
  monkeypatch.chdir(REPO)  # flagfiles include launch/moe.flags by a repository-relative path
  FLAGS.unparse_flags()
  try:
    FLAGS(["jaxchar.train", f"--flagfile={flagfile}"])
    config = train.config_from_flags()
  finally:
    FLAGS.unparse_flags()
  # epochs 0: chosen from the text (any_text_quick) or no limit within the time budget (any_text)
  assert config.epochs >= 1 or (flagfile.name.startswith("any_text") and config.epochs == 0)


@pytest.mark.parametrize("script", sorted((REPO / "launch").glob("*.sh")), ids=lambda p: p.name)
def test_launch_scripts_are_valid_bash_and_use_existing_flagfiles(script):
  assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
  text = script.read_text()
  for name in ("tpu.flags", "gpu.flags"):
    if name in text:
      assert (REPO / "launch" / name).exists()
  assert "Assumes:" in text and "Costs:" in text


def test_validation_above_val_windows_is_subsampled_and_says_so(tiny_file, tmp_path, capsys):
  args = [f"--data={tiny_file}", *TINY_ARGS, "--epochs=1", "--sample_len=0"]
  assert run_main([*args, f"--workdir={tmp_path / 'all'}"]) == 0
  full = capsys.readouterr().out
  assert run_main([*args, f"--workdir={tmp_path / 'some'}", "--val_windows=50"]) == 0
  out = capsys.readouterr().out
  total = int(full.split(" training and ")[1].split(" validation")[0].replace(",", ""))
  assert total > 50 and "evenly spaced" not in full
  assert out.splitlines()[1].count(  # the devices line, after the workdir line
      "(validating on 50 evenly spaced of them, --val_windows)") == 1
  epoch = [line for line in out.splitlines() if line.startswith("epoch ")][0]
  assert f"bits/char, 50 of {total:,} windows)" in epoch
  full_epoch = [line for line in full.splitlines() if line.startswith("epoch ")][0]
  assert full_epoch.split("| val loss")[0] == epoch.split("| val loss")[0]  # same training
  assert full_epoch.split("val loss ")[1][:6] != epoch.split("val loss ")[1][:6]
