"""User-facing errors: one clear paragraph, a non-zero exit, no traceback."""

import functools
import sys
import textwrap
from typing import Callable, NoReturn

EXIT_USER_ERROR = 2


class UserError(Exception):
  """A problem with the user's input or environment; the message says what and how to fix it."""


def fail(message: str) -> NoReturn:
  """Prints `message` as one wrapped paragraph on stderr and exits with EXIT_USER_ERROR."""
  paragraph = " ".join(message.split())
  text = textwrap.fill("error: " + paragraph, width=100, break_long_words=False,
                       break_on_hyphens=False)
  print(text, file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def exits_on_user_error(main: Callable[..., None]) -> Callable[..., None]:
  """Wraps an entry point so that a UserError becomes a clean exit instead of a traceback."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except UserError as e:
      fail(str(e))

  return wrapped
