"""What the docs promise a newcomer: a README short enough to read, whose commands use only
folders its own walkthrough creates, demos that do not trip over each other's folders, and
the meaning of --per_char's positions."""

import re

from helpers import REPO
from jaxchar.scoring.config import ScoreConfig

README = REPO / "README.md"


def _commands(text: str) -> list[str]:
  return re.findall(r"python -m jaxchar\.\w+[^\n`]*", text)


def test_the_readme_stays_under_12000_bytes():
  assert len(README.read_bytes()) < 12_000


def test_every_readme_workdir_is_one_its_training_commands_create():
  commands = _commands(README.read_text(encoding="utf-8"))
  created = {"ckpt/moe"}  # the trainer's default --workdir, which the first command uses
  for command in commands:
    if command.startswith("python -m jaxchar.train"):
      created.update(re.findall(r"--workdir=(\S+)", command))
  used = {w for c in commands if not c.startswith("python -m jaxchar.train")
          for w in re.findall(r"--workdir=(\S+)", c)}
  assert used and used <= created, used - created


def test_the_multi_process_demo_trains_in_a_folder_of_its_own():
  text = (REPO / "launch" / "README.md").read_text(encoding="utf-8")
  demo = text[text.index("Try the multi-process path"):]
  demo = demo[:demo.index("done; wait")]
  workdirs = re.findall(r"--workdir=(\S+)", demo)
  assert workdirs and "ckpt/moe" not in workdirs


def test_per_char_positions_are_documented_as_0_based():
  import dataclasses
  help_text = {f.name: f.metadata["help"] for f in dataclasses.fields(ScoreConfig)}["per_char"]
  assert "0-based" in help_text
  assert "0-based" in (REPO / "jaxchar" / "scoring" / "README.md").read_text(encoding="utf-8")
