"""What every entry point does around its main: library logs quietened, an absent TPU not
tried, stray arguments refused, and a UserError turned into one clear paragraph and exit code
2."""

import functools
from collections.abc import Callable

from jaxchar import host, logs
from jaxchar.errors import UserError, exits_on_user_error


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
