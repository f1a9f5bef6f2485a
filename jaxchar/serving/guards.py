"""What a request must pass before a route works on it: the connection's headers within a
time-out, a Host and Origin that are the server's own, a body read within a limit and a
time-out, and no traceback whatever goes wrong."""

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable

from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from jaxchar.serving.request_checks import BadRequest

log = logging.getLogger("jaxchar.serve")
POLL_S = 0.25  # how often a body still arriving checks for the shutdown deadline
MAX_HEADER_BYTES = 64 * 1024
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class ClientGone(Exception):
  """The client closed its connection before the response; nothing is sent."""


class TimedHttpToolsProtocol(HttpToolsProtocol):
  """uvicorn's HTTP protocol, closing a connection whose request line and headers do not arrive
  within `header_timeout_s` of its start (uvicorn waits for them forever) or pass
  MAX_HEADER_BYTES (uvicorn answers the error raised here with a 400 and closes)."""

  header_timeout_s = 10.0  # a subclass per server: see timed_protocol
  _header_timer: asyncio.TimerHandle | None = None
  _header_bytes = 0

  def _arm(self) -> None:
    self._disarm()
    self._header_bytes = 0
    self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

  def _disarm(self) -> None:
    if self._header_timer is not None:
      self._header_timer.cancel()
      self._header_timer = None

  def _headers_too_slow(self) -> None:
    if not self.transport.is_closing():
      body = json.dumps({"error": f"the request's headers did not arrive within "
                                  f"{self.header_timeout_s:g} s."}, separators=(",", ":"))
      self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                           b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
                           % (len(body), body.encode()))
      self.transport.close()

  def connection_made(self, transport) -> None:
    super().connection_made(transport)
    self._arm()

  def on_message_begin(self) -> None:
    super().on_message_begin()
    self._arm()

  def on_url(self, url: bytes) -> None:
    self._count(len(url))
    super().on_url(url)

  def on_header(self, name: bytes, value: bytes) -> None:
    self._count(len(name) + len(value))
    super().on_header(name, value)

  def _count(self, size: int) -> None:
    self._header_bytes += size
    if self._header_bytes > MAX_HEADER_BYTES:
      raise ValueError(f"the request line and headers are over {MAX_HEADER_BYTES // 1024} KB")

  def on_headers_complete(self) -> None:
    self._disarm()
    super().on_headers_complete()

  def connection_lost(self, exc) -> None:
    self._disarm()
    super().connection_lost(exc)


def timed_protocol(header_timeout_s: float) -> type[TimedHttpToolsProtocol]:
  """The protocol class for uvicorn, with this server's header time-out."""
  return type("TimedHttpToolsProtocol", (TimedHttpToolsProtocol,),
              {"header_timeout_s": header_timeout_s})


def allowed_hosts(host: str, port: int, allow_origins: Iterable[str]) -> set[str] | None:
  """The Host headers the server answers (None: any), from --host, --port and --allow_origin."""
  origins = list(allow_origins)
  if "*" in origins or host in WILDCARD_HOSTS:
    return None  # every address of the machine, by any name: it cannot know them all
  names = set(LOOPBACK_NAMES) if host in ("127.0.0.1", "localhost", "::1") else set()
  names.add(f"[{host}]" if ":" in host else host)
  hosts = {f"{name}:{port}" for name in names}
  if port == 80:
    hosts |= names
  return hosts | {origin.split("://", 1)[-1] for origin in origins}


class OriginGuard:
  """ASGI middleware: refuses (403) requests to another Host than the server's own (DNS
  rebinding), and requests a browser sends from a page of another origin (cross-site POSTs,
  EventSources, images), unless --allow_origin names that origin."""

  def __init__(self, app, hosts: set[str] | None, allow_origins: Iterable[str]):
    self.app = app
    self.hosts = hosts
    self.origins = set(allow_origins)

  async def __call__(self, scope, receive, send) -> None:
    if scope["type"] == "http":
      headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
      problem = self._problem(headers)
      if problem is not None:
        await _send_json(send, 403, {"error": problem})
        return
    await self.app(scope, receive, send)

  def _problem(self, headers: dict[str, str]) -> str | None:
    if "*" in self.origins:
      return None
    host = headers.get("host", "")
    if self.hosts is not None and host not in self.hosts:
      return (f"Host {host!r} is not this server's name ({', '.join(sorted(self.hosts))}); "
              "to serve it under another name, start it with --allow_origin=http://NAME:PORT.")
    origin = headers.get("origin")
    site = headers.get("sec-fetch-site", "")
    if origin is None and site in ("cross-site", "same-site"):
      origin = "(another site)"
    if origin is not None and origin != f"http://{host}" and origin not in self.origins:
      return (f"requests from pages at {origin} are refused: this server answers its own page "
              "and programs that send no Origin. To let that site use it, start it with "
              f"--allow_origin={origin if origin.startswith('http') else 'URL'}.")
    return None


class NoTracebacks:
  """ASGI middleware: an error no route handled becomes a 500 JSON body and one log line."""

  def __init__(self, app):
    self.app = app

  async def __call__(self, scope, receive, send) -> None:
    started = False

    async def tracked_send(message) -> None:
      nonlocal started
      started = started or message["type"] == "http.response.start"
      await send(message)

    try:
      await self.app(scope, receive, tracked_send)
    except (ClientGone, ClientDisconnect):
      pass  # the client is gone: nobody to answer
    except asyncio.CancelledError:  # uvicorn's last resort at shutdown
      if not started and scope["type"] == "http":
        await _send_json(send, 503, {"error": "the server shut down."})
    except Exception as e:  # noqa: BLE001 - one line in the log, a 500 for the client
      log.error("internal error on %s %s: %s: %s", scope.get("method"), scope.get("path"),
                type(e).__name__, e)
      if not started and scope["type"] == "http":
        await _send_json(send, 500, {"error": f"internal error ({type(e).__name__}: {e}); the "
                                              "server keeps running, please report this."})


async def _send_json(send, status: int, body: dict, headers: dict | None = None) -> None:
  data = json.dumps(body, separators=(",", ":")).encode()  # as FastAPI writes it
  extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
  await send({"type": "http.response.start", "status": status,
              "headers": [(b"content-type", b"application/json"),
                          (b"content-length", str(len(data)).encode())] + extra})
  await send({"type": "http.response.body", "body": data})


async def read_body(request: Request, limit: int, timeout_s: float,
                    stopped: Callable[[], bool]) -> bytes:
  """The body, refused (413) as soon as it passes `limit` bytes, chunked or not, and (408) if
  it has not all arrived within timeout_s, or (503) once `stopped()` says the server's
  shutdown deadline has passed; ClientGone if the client leaves meanwhile."""
  declared = request.headers.get("content-length", "")
  too_big = BadRequest(f"the body is over {limit // 1024} KB.", status=413,
                       headers={"Connection": "close"})
  if declared.isdigit() and int(declared) > limit:
    raise too_big
  parts, size = [], 0

  async def gather() -> None:
    nonlocal size
    async for part in request.stream():
      size += len(part)
      if size > limit:
        raise too_big
      parts.append(part)

  reading = asyncio.ensure_future(gather())
  deadline = time.monotonic() + timeout_s
  try:
    while not reading.done():
      await asyncio.wait({reading}, timeout=min(POLL_S, max(deadline - time.monotonic(), 0)))
      if reading.done():
        break
      if stopped():
        raise BadRequest("the server is shutting down.", status=503,
                         headers={"Connection": "close"})
      if time.monotonic() >= deadline:
        raise BadRequest(f"the body did not arrive within {timeout_s:g} s.", status=408,
                         headers={"Connection": "close"})
    reading.result()
  except ClientDisconnect:
    raise ClientGone() from None
  finally:
    reading.cancel()
  return b"".join(parts)


async def wait_for_disconnect(request: Request) -> None:
  """Returns once the client has closed its connection (call after the body is read)."""
  while (await request.receive())["type"] != "http.disconnect":
    pass
