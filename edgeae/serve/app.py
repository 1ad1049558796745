"""The FastAPI decode service (the `[server]` extra): POST /v1/decode, POST /v1/ingest, GET /v1/model,
GET /healthz, GET /metrics. See docs/SERVER.md. fastapi is imported only here, never by the runtime."""


import asyncio
import secrets
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeae.errors import FingerprintMismatch, PayloadError
from edgeae.runtime.images import png_bytes
from edgeae.runtime.payload import MAX_PAYLOAD_BYTES
from edgeae.serve.batcher import MicroBatcher, Overloaded
from edgeae.serve.engine import DecodeEngine, npy_bytes, strip
from edgeae.serve.metrics import Metrics
from edgeae.serve.store import ImageStore, payload_id

NPY = "application/x-npy"
PNG = "image/png"
MULTIPART = "multipart/mixed"
RETRY_AFTER_S = 1
SWITCH_INTERVAL_S = 0.0005


@dataclass
class ServeConfig:
    bundle: str
    precision: str = "fp32"
    max_batch: int = 32
    max_wait_ms: float = 5.0
    queue: int = 256
    workers: int = 1
    threads: int | None = None
    max_body: int = 1 << 20
    store: str | None = None


class HTTPProblem(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


def problem_for(exc: BaseException) -> HTTPProblem:
    """Map an exception to (status, JSON error); anything unexpected is a 500 that names no internals."""
    if isinstance(exc, HTTPProblem):
        return exc
    if isinstance(exc, FingerprintMismatch):
        return HTTPProblem(409, exc.code, str(exc))
    if isinstance(exc, PayloadError):
        return HTTPProblem(400, exc.code, str(exc))
    if isinstance(exc, Overloaded):
        return HTTPProblem(503, "overloaded", f"server busy: {exc}; retry later",
                           {"Retry-After": str(RETRY_AFTER_S)})
    return HTTPProblem(500, "internal", f"{type(exc).__name__} while decoding; see the server log")


def choose_format(accept: str | None, items: int) -> str:
    """Response type: one image -> PNG unless .npy is asked for; several -> .npy unless PNG (a strip, items
    stacked top to bottom) or multipart/mixed (one PNG part per item) is asked for."""
    a = (accept or "").lower()
    if NPY in a:
        return NPY
    if MULTIPART in a:
        return MULTIPART if items > 1 else PNG
    if PNG in a:
        return PNG
    return PNG if items == 1 else NPY


def create_app(config: ServeConfig, hook: Callable[[int], None] | None = None, engine: DecodeEngine | None = None) -> Any:
    """The ASGI app. `hook(batch_size)` runs before each graph run (a test seam, e.g. to slow decoding)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response

    max_body = min(config.max_body, MAX_PAYLOAD_BYTES)
    metrics = Metrics()
    engine = engine or DecodeEngine(config.bundle, config.precision, threads=config.threads, hook=hook)
    store = ImageStore(config.store) if config.store else None
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Any):
        state["batcher"] = MicroBatcher(engine, config.max_batch, config.max_wait_ms, config.queue,
                                        config.workers, metrics)
        yield
        state["batcher"].close()

    app = FastAPI(title="edgeae decode server", version="1", lifespan=lifespan,
                  description="Decodes edgeae payloads (docs/FORMAT.md) made with one bundle into images.")

    def error_response(p: HTTPProblem) -> Any:
        return JSONResponse({"error": p.error, "detail": p.detail}, status_code=p.status, headers=p.headers)

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise HTTPProblem(400, "bad_request", "Content-Length is not a number")
            if int(length) > max_body:
                raise HTTPProblem(413, "too_large", f"body of {length} bytes exceeds the limit of {max_body}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise HTTPProblem(413, "too_large", f"body exceeds the limit of {max_body} bytes")
            chunks.append(chunk)
        if not size:
            raise HTTPProblem(400, "empty", "empty body; POST the payload bytes")
        return b"".join(chunks)

    async def handle(endpoint: str, request: Request, work: Callable[[bytes], Any]) -> Any:
        t0 = time.perf_counter()
        batcher = state["batcher"]
        try:
            batcher.arrive()
            try:
                payload = await read_body(request)
            finally:
                batcher.arrived()
            response = await work(payload)
            status, error = response.status_code, None
        except Exception as exc:
            p = problem_for(exc)
            response, status, error = error_response(p), p.status, p.error
        metrics.observe_request(endpoint, status, time.perf_counter() - t0, error)
        return response

    @app.post("/v1/decode", summary="Decode one payload",
              responses={200: {"content": {PNG: {}, NPY: {}, MULTIPART: {}}}, 400: {}, 409: {}, 413: {}, 503: {}})
    async def decode(request: Request) -> Any:
        """Body: payload bytes. One item -> PNG; several -> .npy (N, H, W[, C]) uint8, or by `Accept`:
        image/png (one strip, items top to bottom) or multipart/mixed (a PNG part per item)."""

        accept = request.headers.get("accept")

        def render(images: Any) -> tuple[bytes, str, dict[str, str]]:  # runs in the decode thread
            headers = {"X-Edgeae-Items": str(len(images)), "X-Edgeae-Shape": ",".join(map(str, images.shape[1:]))}
            fmt = choose_format(accept, len(images))
            if fmt == NPY:
                return npy_bytes(images), NPY, headers
            if fmt == PNG:
                return png_bytes(images[0] if len(images) == 1 else strip(images)), PNG, headers
            boundary = "edgeae-" + secrets.token_hex(8)
            parts = [f"--{boundary}\r\nContent-Type: {PNG}\r\nContent-ID: {i}\r\n\r\n".encode() + png_bytes(im)
                     + b"\r\n" for i, im in enumerate(images)]
            return b"".join(parts) + f"--{boundary}--\r\n".encode(), f'{MULTIPART}; boundary="{boundary}"', headers

        async def work(payload: bytes) -> Any:
            body, media, headers = await state["batcher"].decode(payload, render)
            return Response(body, media_type=media, headers=headers)

        return await handle("decode", request, work)

    @app.post("/v1/ingest", summary="Decode and store one payload, idempotently")
    async def ingest(request: Request) -> Any:
        """Stores the payload's images under the server's --store, keyed by the payload's sha256. Posting the
        same payload again stores nothing new and answers 200 with `"new": false`."""
        if store is None:
            return error_response(HTTPProblem(404, "no_store", "this server was started without --store"))

        async def work(payload: bytes) -> Any:
            pid = payload_id(payload)
            if store.exists(pid):
                metrics.ingested_dup += 1
                return JSONResponse({"id": pid, "new": False, "items": None})
            images = await state["batcher"].decode(payload)
            pid, new = await asyncio.to_thread(store.put, payload, images, pid)
            if new:
                metrics.ingested_new += 1
            else:
                metrics.ingested_dup += 1
            return JSONResponse({"id": pid, "new": new, "items": len(images)})

        return await handle("ingest", request, work)

    @app.get("/v1/model", summary="The bundle this server decodes with")
    async def model() -> Any:
        return {**engine.summary(), "max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms,
                "max_body": max_body, "queue": config.queue, "store": bool(store)}

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok", "fingerprint": engine.fingerprint}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Any:
        b = state.get("batcher")
        return PlainTextResponse(metrics.render(b.outstanding if b else 0),
                                 media_type="text/plain; version=0.0.4")

    app.state.engine, app.state.metrics, app.state.store = engine, metrics, store
    return app


def run(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    import sys

    import uvicorn

    # The event loop (HTTP) and the decode threads share the GIL; with the default 5 ms switch interval a
    # decode thread doing Python-level work (entropy decoding, PNG) makes the loop wait in 5 ms steps.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if config.store:
        Path(config.store).mkdir(parents=True, exist_ok=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level, access_log=False)
