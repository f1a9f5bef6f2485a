"""Text for a terminal: a model's or a corpus' characters shown without the control characters
that would drive it. A model writes whatever its training text held, escape sequences included
(colours, a window title, OSC 52 writing the clipboard, text hidden or erased); printed raw,
they act on the user's terminal instead of being read."""

import json
import os
import re
import sys
from typing import TextIO

# C0 controls but tab and newline, DEL, and the C1 controls (U+0080-U+009F; U+009B acts as CSI).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
  """`text` with each control character but newline and tab written visibly as Python writes
  it (ESC as `\\x1b`, BEL as `\\x07`, CR as `\\r`). Only for a terminal: files, JSON and the
  API keep the exact text."""
  return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def json_line(value) -> str:
  """`value` as one line of JSON for stdout: non-ASCII text kept readable, but DEL and the C1
  controls written as \\u escapes like the C0 ones (the parsed value is exactly `value`)."""
  return re.sub("[\x7f-\x9f]", lambda m: f"\\u{ord(m.group()):04x}",
                json.dumps(value, ensure_ascii=False))


def print_shown(text: str, stream: TextIO | None = None) -> None:
  """Prints `text` shown (as above) on `stream` (stdout). A reader that has gone (a closed pipe)
  detaches the stream to /dev/null instead of raising: a server keeps serving, and a signal's
  handler still stops it."""
  stream = stream or sys.stdout
  try:
    print(shown(text), file=stream, flush=True)
  except BrokenPipeError:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)
