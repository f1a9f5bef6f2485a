"""The HTTP API and web page of `python -m jaxchar.serve` (FastAPI): generate, stream, info.

Every request goes through the one Batcher, so concurrent users share generation calls. Bad
requests get HTTP 4xx with {"error": "..."}, a busy or stopping server 503 (with Retry-After)
and a request past its deadline 504; nothing a client sends is used as a file path.
"""

import asyncio
import json
import threading
import time
from collections.abc import Iterable
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

import jaxchar
from jaxchar.sampling.controls import SAMPLE_MODES
from jaxchar.sampling.sampler import CHUNK, Sampler, cut_at_stop
from jaxchar.serving import guards
from jaxchar.serving.batcher import Batcher
from jaxchar.serving.jobs import Job, Refused
from jaxchar.errors import UserError
from jaxchar.scoring import scorer
from jaxchar.serving.request_checks import (MAX_BODY_BYTES, BadRequest, GenerationRequest, Limits,
                                            parse, parse_json, parse_score)

ROUTES = ("GET /, POST /api/generate, GET /api/stream, POST /api/score, GET /api/info, "
          "GET /healthz")
RETRY_AFTER_S = 1
SCORE_BATCH = 256  # characters per scoring call: one compiled shape serves every text


def model_info(sampler: Sampler, batcher: Batcher, limits: Limits) -> dict:
  meta, spec = sampler.meta, sampler.spec
  return {
      "jaxchar": jaxchar.__version__, "step": sampler.step, "epoch": meta.get("epoch"),
      "val_loss": meta.get("val_loss"), "vocab_size": spec.vocab_size,
      "corpus_chars": meta.get("corpus_chars"), "data": sampler.training_config.get("data"),
      "lowercase": spec.lowercase, "maxlen": spec.maxlen, "hidden": spec.hidden,
      "num_layers": spec.num_layers, "modes": list(SAMPLE_MODES),
      "max_batch": batcher.max_batch, "max_length": limits.max_length,
      "max_score": limits.max_score, "init_from": meta.get("init_from"),
      "max_queue": batcher.max_queue, "request_timeout_s": limits.request_timeout_s,
      "chunk": CHUNK, "batch_buckets": batcher.batch_buckets, "generation_calls": batcher.calls,
      "rows_generated": batcher.rows_generated, "in_flight": batcher.in_flight}


def score_text(sampler: Sampler, prepared: scorer.Prepared, from_start: bool) -> scorer.Score:
  """A text scored as the server scores it (its one compiled batch shape)."""
  return scorer.score(sampler, prepared, from_start, SCORE_BATCH)


class Api:
  """The routes' handlers, bound to one restored sampler and its batcher."""

  def __init__(self, sampler: Sampler, batcher: Batcher, limits: Limits):
    self.sampler, self.batcher, self.limits = sampler, batcher, limits
    self.page = resources.files("jaxchar.serving").joinpath("page.html").read_text(
        encoding="utf-8")
    self.scoring = threading.Lock()  # one text at a time beside generation: the cores are shared

  def submit(self, request: GenerationRequest, on_chunk=None) -> Job:
    rows = [self.sampler.row(request.prime, request.temperature, request.top_k, request.seed,
                             index, "skip", request.top_p) for index in range(request.num_samples)]
    try:
      return self.batcher.submit(rows, request.length, request.mode,
                                 self.limits.request_timeout_s, on_chunk, request.stops)
    except Refused as e:
      raise BadRequest(str(e), status=e.status,
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None

  async def json_body(self, request: Request, limit: int) -> object:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
      raise BadRequest(f"the body must be sent as Content-Type: application/json, not "
                       f"{kind or 'none'!r} (curl: -H 'Content-Type: application/json').",
                       status=415)
    return parse_json(await guards.read_body(request, limit, self.limits.client_timeout_s,
                                             self.batcher.past_stop_deadline))

  async def bad_request(self, _, error: BadRequest):
    return JSONResponse({"error": str(error)}, status_code=error.status, headers=error.headers)

  async def http_error(self, request: Request, error: HTTPException):
    if error.status_code == 404:
      message = f"no route {request.method} {request.url.path}; the routes are {ROUTES}."
    elif error.status_code == 405:
      message = f"{request.method} is not allowed on {request.url.path}; the routes are {ROUTES}."
    else:
      message = str(error.detail)
    return JSONResponse({"error": message}, status_code=error.status_code)

  async def index(self) -> HTMLResponse:
    return HTMLResponse(self.page)

  async def healthz(self) -> JSONResponse:
    if not self.batcher.healthy:
      return JSONResponse({"ok": False, "error": f"the generation worker failed "
                                                 f"({self.batcher.failure})"}, status_code=503)
    return JSONResponse({"ok": True, "step": self.sampler.step,
                         "in_flight": self.batcher.in_flight})

  async def info(self) -> dict:
    return model_info(self.sampler, self.batcher, self.limits)

  def _score(self, prepared: scorer.Prepared, from_start: bool) -> scorer.Score:
    with self.scoring:
      return score_text(self.sampler, prepared, from_start)

  async def score(self, request: Request) -> dict:
    limits = self.limits
    checked = parse_score(await self.json_body(request, limits.score_body_bytes), limits)
    prepared = scorer.prepare(checked.text, self.sampler.vocab, self.sampler.lowercase)
    try:
      scorer.check_scorable(prepared, self.sampler.maxlen, checked.from_start, "the text")
    except UserError as e:
      raise BadRequest(str(e)) from None
    try:
      result = await asyncio.wait_for(
          asyncio.to_thread(self._score, prepared, checked.from_start), limits.request_timeout_s)
    except asyncio.TimeoutError:
      raise BadRequest(f"scoring took over {limits.request_timeout_s:g} s "
                       "(--request_timeout_s); send a shorter text.", status=504) from None
    log_probs = [None] * len(prepared.text)
    for position, log_prob in zip(result.positions.tolist(), result.log_probs.tolist()):
      log_probs[position] = round(log_prob, 4)
    return {"step": self.sampler.step, **result.figures(), "log_probs": log_probs}

  async def generate(self, request: Request) -> dict:
    sampler = self.sampler
    checked = parse(await self.json_body(request, MAX_BODY_BYTES), sampler, self.limits)
    start = time.perf_counter()
    job = self.submit(checked)
    waiter = _watched(job)
    gone = asyncio.ensure_future(guards.wait_for_disconnect(request))
    try:
      await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
      job.abandon()  # a no-op once finished; stops the job if the client left or we were cancelled
      gone.cancel()
    if not waiter.done():
      raise guards.ClientGone()
    if waiter.exception() is not None:
      raise _refusal(waiter.exception())
    seconds = time.perf_counter() - start
    ids = waiter.result()
    cut = [cut_at_stop(sampler.vocab.decode(row), checked.stops) for row in ids]
    return {"samples": [text for text, _ in cut], "prime": checked.prime, "step": sampler.step,
            "stopped_by": [stop for _, stop in cut],
            "chars_per_s": ids.shape[0] * ids.shape[1] / seconds}

  async def stream(self, request: Request) -> StreamingResponse:
    fields = dict(request.query_params)
    if "num_samples" in fields:
      raise BadRequest("the stream generates one sample; use POST /api/generate for several.")
    checked = parse(fields, self.sampler, self.limits)
    loop, chunks = asyncio.get_running_loop(), asyncio.Queue()

    def on_chunk(ids: np.ndarray) -> None:  # on the batcher's thread
      loop.call_soon_threadsafe(chunks.put_nowait, ids)

    job = self.submit(checked, on_chunk)  # before the response starts: a refusal is a plain 503
    return StreamingResponse(self._events(checked, job, chunks), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})

  async def _events(self, checked: GenerationRequest, job: Job, chunks: asyncio.Queue):
    waiter = _watched(job)
    start, text, chunk, stopped_by = time.perf_counter(), "", None, None
    try:
      yield _event("prime", {"prime": checked.prime})
      while len(text) < checked.length:
        chunk = asyncio.ensure_future(chunks.get())
        await asyncio.wait({chunk, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not chunk.done() and waiter.exception() is not None:
          error = _refusal(waiter.exception())
          yield _event("failed", {"error": str(error), "status": error.status})
          return
        new = self.sampler.vocab.decode((await chunk)[0])  # once finished, its last chunk is near
        kept, stopped_by = cut_at_stop(text + new, checked.stops)
        if kept[len(text):]:
          yield _event("chunk", {"text": kept[len(text):]})
        text = kept
        if stopped_by is not None:
          break
      seconds = time.perf_counter() - start
      yield _event("done", {"text": text, "step": self.sampler.step, "stopped_by": stopped_by,
                            "chars_per_s": len(text) / seconds})
    finally:
      job.abandon()  # the client left (or the stream ended): the batcher drops it
      if chunk is not None:
        chunk.cancel()


def create_app(sampler: Sampler, batcher: Batcher, limits: Limits,
               hosts: set[str] | None = None, allow_origins: Iterable[str] = ()) -> FastAPI:
  """The app: the Api's handlers as routes, error handlers, guards and the page. `hosts`: the
  Host headers it answers (None: any); `allow_origins`: other sites' pages that may use it
  ("*": any)."""
  api = Api(sampler, batcher, limits)
  app = FastAPI(title="jaxchar", docs_url=None, redoc_url=None, openapi_url=None)
  app.add_middleware(guards.OriginGuard, hosts=hosts, allow_origins=tuple(allow_origins))
  app.add_middleware(guards.NoTracebacks)
  app.add_exception_handler(BadRequest, api.bad_request)
  app.add_exception_handler(HTTPException, api.http_error)
  app.add_api_route("/", api.index, methods=["GET"], response_class=HTMLResponse)
  app.add_api_route("/healthz", api.healthz, methods=["GET"])
  app.add_api_route("/api/info", api.info, methods=["GET"])
  app.add_api_route("/api/score", api.score, methods=["POST"])
  app.add_api_route("/api/generate", api.generate, methods=["POST"])
  app.add_api_route("/api/stream", api.stream, methods=["GET"])
  return app


def _refusal(error: BaseException) -> BadRequest:
  """What a job's failure tells its client."""
  if isinstance(error, Refused):
    headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status == 503 else None
    return BadRequest(str(error), status=error.status, headers=headers)
  return BadRequest(f"generation failed ({type(error).__name__}: {error}).", status=500)


def _watched(job: Job) -> asyncio.Future:
  """The job's future on this event loop, its error retrieved even if nobody asks for it."""
  waiter = asyncio.wrap_future(job.future)
  waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
  return waiter


def _event(kind: str, data: dict) -> str:
  return f"event: {kind}\ndata: {json.dumps(data)}\n\n"
