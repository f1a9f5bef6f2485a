"""`--access_log`: one line per request on stdout (time, client, method, path, status, seconds),
written when the response is complete. Never the body nor the query string (they carry the
user's text); the path's control characters escaped."""

import time
from typing import TextIO

from jaxchar.core.terminal import print_shown


class AccessLog:
  """ASGI middleware around the whole app, so refusals by its guards are logged too."""

  def __init__(self, app, stream: TextIO | None = None):
    self.app, self.stream = app, stream

  async def __call__(self, scope, receive, send) -> None:
    if scope["type"] != "http":
      await self.app(scope, receive, send)
      return
    start, status = time.perf_counter(), None

    async def send_noting_status(message) -> None:
      nonlocal status
      if message["type"] == "http.response.start":
        status = message["status"]
      await send(message)

    try:
      await self.app(scope, receive, send_noting_status)
    finally:
      client = (scope.get("client") or ("-",))[0]
      line = (f"{time.strftime('%H:%M:%S')} {client} {scope['method']} {scope['path']} "
              f"{status or '-'} {time.perf_counter() - start:.3f} s")
      print_shown(line, self.stream)
