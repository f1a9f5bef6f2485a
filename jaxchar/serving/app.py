"""The HTTP API and web page of `python -m jaxchar.serve` (FastAPI): generate, stream, info.

Every request goes through the one Batcher, so concurrent users share generation calls. Bad
requests get HTTP 4xx with {"error": "..."}; nothing a client sends is used as a file path.
"""

import asyncio
import json
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

import jaxchar
from jaxchar.sampling.config import SAMPLE_MODES
from jaxchar.sampling.sampler import Sampler
from jaxchar.serving.batcher import Batcher
from jaxchar.serving.request_checks import (MAX_BODY_BYTES, BadRequest, GenerationRequest, Limits,
                                            parse)

STREAM_CHUNK = 64  # characters per streamed event (one batched call each)
ROUTES = "GET /, POST /api/generate, GET /api/stream, GET /api/info, GET /healthz"


def model_info(sampler: Sampler, batcher: Batcher) -> dict:
  meta = sampler.meta
  config = meta.get("config", {})
  return {
      "jaxchar": jaxchar.__version__, "step": sampler.step, "epoch": meta.get("epoch"),
      "val_loss": meta.get("val_loss"), "vocab_size": sampler.vocab.size,
      "corpus_chars": meta.get("corpus_chars"), "data": config.get("data"),
      "lowercase": sampler.lowercase, "maxlen": sampler.maxlen, "hidden": meta.get("hidden"),
      "num_layers": meta.get("num_layers", 1), "modes": list(SAMPLE_MODES),
      "max_batch": batcher.max_batch, "length_buckets": batcher.length_buckets,
      "batch_buckets": batcher.batch_buckets, "generation_calls": batcher.calls,
      "rows_generated": batcher.rows_generated}


def create_app(sampler: Sampler, batcher: Batcher, limits: Limits) -> FastAPI:
  """The app: routes, error handlers, and the page, all bound to one restored sampler."""
  app = FastAPI(title="jaxchar", docs_url=None, redoc_url=None, openapi_url=None)
  page = resources.files("jaxchar.serving").joinpath("page.html").read_text(encoding="utf-8")

  async def generate(request: GenerationRequest, length: int, chunk: int = 0,
                     context: str | None = None) -> list[str]:
    prime = request.prime if context is None else context
    rows = [sampler.row(prime, request.temperature, request.top_k, request.seed, index, chunk,
                        "skip") for index in range(request.num_samples)]
    ids = await asyncio.wrap_future(batcher.submit(rows, length, request.mode))
    return [sampler.vocab.decode(row) for row in ids]

  @app.exception_handler(BadRequest)
  async def bad_request(_, error: BadRequest):
    return JSONResponse({"error": str(error)}, status_code=error.status)

  @app.exception_handler(HTTPException)
  async def http_error(request: Request, error: HTTPException):
    if error.status_code == 404:
      message = f"no route {request.method} {request.url.path}; the routes are {ROUTES}."
    elif error.status_code == 405:
      message = f"{request.method} is not allowed on {request.url.path}; the routes are {ROUTES}."
    else:
      message = str(error.detail)
    return JSONResponse({"error": message}, status_code=error.status_code)

  @app.exception_handler(Exception)
  async def internal_error(_, error: Exception):
    return JSONResponse({"error": f"internal error ({type(error).__name__}: {error}); the "
                                  "server keeps running, please report this."},
                        status_code=500)

  @app.get("/", response_class=HTMLResponse)
  async def index() -> str:
    return page

  @app.get("/healthz")
  async def healthz() -> dict:
    return {"ok": True, "step": sampler.step}

  @app.get("/api/info")
  async def info() -> dict:
    return model_info(sampler, batcher)

  @app.post("/api/generate")
  async def generate_route(request: Request) -> dict:
    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
      raise BadRequest(f"the body is over {MAX_BODY_BYTES // 1024} KB.", status=413)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
      raise BadRequest(f"the body is over {MAX_BODY_BYTES // 1024} KB.", status=413)
    try:
      fields = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise BadRequest(f"the body is not valid JSON ({e}); send e.g. "
                       "{\"prime\": \"moe: \", \"length\": 200}.") from None
    checked = parse(fields, sampler, limits)
    start = time.perf_counter()
    samples = await generate(checked, checked.length)
    seconds = time.perf_counter() - start
    return {"samples": samples, "prime": checked.prime, "step": sampler.step,
            "chars_per_s": checked.length * checked.num_samples / seconds}

  @app.get("/api/stream")
  async def stream(request: Request) -> StreamingResponse:
    fields = dict(request.query_params)
    if "num_samples" in fields:
      raise BadRequest("the stream generates one sample; use POST /api/generate for several.")
    checked = parse(fields, sampler, limits)

    async def events():
      start, text = time.perf_counter(), ""
      yield f"event: prime\ndata: {json.dumps({'prime': checked.prime})}\n\n"
      for chunk, done in enumerate(range(0, checked.length, STREAM_CHUNK)):
        size = min(STREAM_CHUNK, checked.length - done)
        # Each chunk re-primes from the last window: exact for window mode (which sees only
        # that window); stateful mode carries its state within a chunk only.
        (new,) = await generate(checked, size, chunk, checked.prime + text)
        text += new
        yield f"event: chunk\ndata: {json.dumps({'text': new})}\n\n"
      seconds = time.perf_counter() - start
      final = {"text": text, "step": sampler.step, "chars_per_s": len(text) / seconds}
      yield f"event: done\ndata: {json.dumps(final)}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})

  return app
