"""What reaches a terminal: a model's or a corpus' control characters shown as visible escapes
(core.terminal), never raw, while files keep the exact text; and flag mistakes reported as one
`error:` paragraph with exit code 2 by every entry point."""

import ast
import errno
import json
import os
import pty
import re
import subprocess
import sys

import pytest
from absl import flags as absl_flags

from helpers import REPO, tiny_config
from jaxchar import cli
from jaxchar.core.terminal import json_line, shown
from jaxchar.training.loop import train_and_evaluate

ESC, BEL = "\x1b", "\x07"
# ANSI colour, a bell, OSC 0 (window title) and OSC 52 (clipboard), an 8-bit CSI, DEL: at
# least one control character in every 8-character window.
HOSTILE_LINE = f"{ESC}[1;31mred{ESC}[0m{BEL} {ESC}]0;owned{BEL}{ESC}]52;c;aGk={BEL}\x9b2J\x7f."
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def test_shown_escapes_every_control_but_newline_and_tab():
  assert shown(f"a{ESC}[31mb{BEL}\tc\nd\r\x9b\x7f\x00é") == \
      "a\\x1b[31mb\\x07\tc\nd\\r\\x9b\\x7f\\x00é"
  line = json_line({"excluded": {ESC: 1, "\x9b": 2, "é": 3}})
  assert not RAW_CONTROL.search(line) and json.loads(line) == {"excluded": {ESC: 1, "\x9b": 2,
                                                                            "é": 3}}


def _hostile_text() -> str:
  lines = [HOSTILE_LINE] * 40
  return "\n".join(lines[:36]) + "\n\n" + "\n".join(lines[36:]) + "\n"


def _read_pty(args: list[str]) -> bytes:
  """Runs `python -m jaxchar.sample args` with stdout and stderr on a pseudo-terminal: every
  byte a user's terminal would receive."""
  controller, terminal = pty.openpty()
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  process = subprocess.Popen([sys.executable, "-m", "jaxchar.sample", *args], cwd=REPO, env=env,
                             stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
  os.close(terminal)
  received = b""
  while True:
    try:
      chunk = os.read(controller, 4096)
    except OSError as e:  # EIO: the process closed the terminal
      assert e.errno == errno.EIO
      break
    if not chunk:
      break
    received += chunk
  os.close(controller)
  assert process.wait(timeout=120) == 0, received.decode("utf-8", "replace")
  return received


def test_a_model_trained_on_escape_sequences_cannot_drive_the_terminal(tmp_path, capsys):
  data = tmp_path / "hostile.txt"
  data.write_text(_hostile_text(), encoding="utf-8")
  workdir = tmp_path / "run"
  train_and_evaluate(tiny_config(data, epochs=1, sample_len=40, temperatures=(1.0, 2.0)),
                     workdir)
  printed = capsys.readouterr()
  assert not RAW_CONTROL.search(printed.out + printed.err), printed.out
  assert "\\x1b" in printed.out  # the seed window's escapes, visible
  assert ESC in (workdir / "samples.md").read_text(encoding="utf-8")  # the file: exact text

  received = _read_pty([f"--workdir={workdir}", f"--prime={ESC}]0;owned{BEL}{ESC}[1;31m",
                        "--temperature=1.0,2.0", "--length=300", "--num_samples=2"])
  # The terminal turns "\n" into "\r\n" (onlcr); no other control byte may arrive, nor a C1
  # control (U+0080-U+009F, UTF-8 c2 80-9f) or DEL.
  stray = re.findall(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|\xc2[\x80-\x9f]", received)
  assert not stray, (stray[:5], received[:400])
  assert b"\\x1b]0;owned\\x07\\x1b[1;31m" in received  # the prime as the model saw it, visible


def _parse(args: list[str]) -> tuple[int, str]:
  absl_flags.FLAGS.unparse_flags()
  try:
    cli.parse_flags(["/x/jaxchar/train.py", *args])  # conftest defined its flags
  except SystemExit as e:
    return e.code, ""
  finally:
    absl_flags.FLAGS.unparse_flags()
  return 0, ""


@pytest.mark.parametrize("args, expected", [
    (["--workdri=ckpt/x"], r"^error: unknown flag --workdri\. Did you mean --workdir\? "
                           r"`python -m jaxchar\.train --helpshort` lists every flag"),
    (["--seed=abc"], r"^error: --seed=abc: .*Give it a valid value\."),
    (["--flagfile={missing}"], r"^error: --flagfile=\S+missing\.flags cannot be read \(No such "
                               r"file or directory\)"),
    (["--flagfile={bad_line}"], r"^error: line 2 of \S+bad\.flags, `seed 3`, is not a flag"),
    (["--flagfile={typo}"], r"^error: unknown flag --sede \(line 1 of \S+typo\.flags\)\. Did "
                            r"you mean --seed\?"),
])
def test_flag_mistakes_are_one_error_paragraph_with_exit_code_2(args, expected, tmp_path,
                                                                  capsys):
  (tmp_path / "bad.flags").write_text("--seed=1\nseed 3\n", encoding="utf-8")
  (tmp_path / "typo.flags").write_text("--sede=1\n", encoding="utf-8")
  files = {"missing": tmp_path / "missing.flags", "bad_line": tmp_path / "bad.flags",
           "typo": tmp_path / "typo.flags"}
  code, _ = _parse([a.format(**files) for a in args])
  err = capsys.readouterr().err
  assert code == 2
  assert re.search(expected, " ".join(err.split())), err
  assert "FATAL" not in err and "Traceback" not in err


def test_every_entry_point_parses_its_flags_with_cli_run():
  """absl's app.run(main) would print `FATAL Flags parsing error` and exit with code 1."""
  modules = [p for p in (REPO / "jaxchar").rglob("*.py") if "__main__" in p.read_text()]
  assert len(modules) >= 10
  for path in modules:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert "app.run" not in calls, path
    assert "run" in calls, path


def test_a_mistyped_flag_on_the_command_line_exits_2_with_the_suggestion():
  result = subprocess.run([sys.executable, "-m", "jaxchar.train", "--epohcs=3"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stderr.startswith("error: unknown flag --epohcs. Did you mean --epochs?")
