"""What every entry point does around its main: flags parsed with absl's errors made ours,
library logs quietened, an absent TPU not tried, stray arguments refused, and a UserError
turned into one clear paragraph and exit code 2."""

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path

from absl import app, flags

from jaxchar import host, logs
from jaxchar.errors import UserError, exits_on_user_error, fail


def entry_point(main: Callable[[], None]) -> Callable[[list[str]], None]:
  """Wraps a no-argument main into the `main(argv)` that absl's app.run calls."""

  @functools.wraps(main)
  @exits_on_user_error
  def wrapped(argv: list[str]) -> None:
    logs.quiet_library_logs()
    host.skip_absent_tpu()
    if len(argv) > 1:
      raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag (see "
                      "--help).")
    main()

  return wrapped


def run(main: Callable[[list[str]], None]) -> None:
  """absl's app.run with parse_flags: a flag mistake is one `error:` paragraph, exit code 2."""
  app.run(main, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses `argv` into absl's FLAGS. Where absl prints `FATAL Flags parsing error` and exits
  with code 1, this says what is wrong, where (the flagfile and line) and the fix, as every
  other mistake is reported: one `error:` paragraph and exit code 2."""
  command = f"python -m jaxchar.{_module_name(argv[0])}"
  try:
    lines = _flagfile_lines(argv[1:])
  except UserError as e:
    fail(str(e))
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(_flag_error(e, lines, command))


def _module_name(program: str) -> str:
  """`sample` for .../jaxchar/sample.py, `aot.check` for .../jaxchar/aot/check.py."""
  parts = Path(program).with_suffix("").parts
  return ".".join(parts[len(parts) - parts[::-1].index("jaxchar"):]) if "jaxchar" in parts \
      else Path(program).stem


def _flagfile_lines(args: list[str], seen: tuple[str, ...] = ()) -> list[tuple[str, int, str]]:
  """(flagfile, line number, line) for every flag line of the flagfiles in `args`, nested ones
  included; UserError for a flagfile that cannot be read or a line that is not a flag."""
  found = []
  for arg in args:
    match = re.match(r"--?flagfile=(.*)", arg.strip())
    if not match or match.group(1) in seen:
      continue
    name = match.group(1)
    try:
      text = Path(os.path.expanduser(name)).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
      reason = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
      where = f" (named in {seen[-1]})" if seen else ""
      raise UserError(f"--flagfile={name}{where} cannot be read ({reason}). Give the path of "
                      "an existing flagfile, relative to the folder you run from, e.g. "
                      "--flagfile=launch/moe.flags.") from None
    for number, line in enumerate(text.splitlines(), 1):
      line = line.strip()
      if not line or line.startswith(("#", "//")):
        continue
      if not line.startswith("-"):
        raise UserError(f"line {number} of {name}, `{line}`, is not a flag: each line of a "
                        "flagfile is one --name=value (or --name / --noname for a yes/no flag), "
                        "and comments start with #. Fix that line.")
      found.append((name, number, line))
      found += _flagfile_lines([line], seen + (name,))
  return found


def _flag_error(error: flags.Error, lines: list[tuple[str, int, str]], command: str) -> str:
  """absl's parsing error, reworded as one paragraph naming the flag, where it was given (a
  flagfile line) and the fix."""
  message = " ".join(str(error).split())
  help_hint = f"`{command} --helpshort` lists every flag with its default."
  if isinstance(error, flags.UnrecognizedFlagError):
    name = error.flagname
    where = _where(name, lines)
    guess = re.search(r"Did you mean: (.+?) \?", message)
    fix = (f"Did you mean --{guess.group(1).split(', ')[0]}?"  # the nearest
           if guess else "Remove it or correct its name.")
    return f"unknown flag --{name}{where}. {fix} {help_hint}"
  if isinstance(error, flags.IllegalFlagValueError):
    message = re.sub(r"^flag ", "", message)
    name = re.match(r"--?(?:no)?([\w-]+)", message)
    where = _where(name.group(1), lines) if name else ""
    return f"{message}{where}. Give it a valid value. {help_hint}"
  return f"{message}. {help_hint}"


def _where(name: str, lines: list[tuple[str, int, str]]) -> str:
  """' (line N of FILE)' when a flagfile gave flag `name`, else ''."""
  for file, number, line in reversed(lines):  # the last one given wins, as in absl
    if re.match(rf"--?(no)?{re.escape(name)}(=|$)", line):
      return f" (line {number} of {file})"
  return ""
