"""The FastAPI decode service (the `[server]` extra): POST /v1/decode, POST /v1/ingest, GET /v1/model,
GET /healthz, GET /metrics. See docs/SERVER.md. fastapi is imported only here, never by the runtime.

The routes only hand the request to the shared HTTP layer (edgeae.serve.http.DecodeService), which the Ray
Serve deployment uses too; `run` adds what only uvicorn can do: the header timeout and connection cap
(edgeae.serve.protocol), TLS, and JSON-line logging.
"""


import ipaddress
import json
import logging
import sys
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from edgeae.errors import InputError
from edgeae.serve.engine import DecodeEngine
from edgeae.serve.http import (  # noqa: F401 (re-exported: the public names of the server)
    MULTIPART,
    NPY,
    PNG,
    RETRY_AFTER_S,
    DecodeService,
    HTTPProblem,
    ServeConfig,
    choose_format,
    problem_for,
)

SWITCH_INTERVAL_S = 0.0005


def create_app(config: ServeConfig, hook: Callable[[int], None] | None = None, engine: DecodeEngine | None = None) -> Any:
    """The ASGI app. `hook(batch_size)` runs before each graph run (a test seam, e.g. to slow decoding)."""
    from fastapi import FastAPI, Request

    service = DecodeService(config, engine=engine, hook=hook)

    @asynccontextmanager
    async def lifespan(app: Any):
        service.start()
        yield
        service.close()

    app = FastAPI(title="edgeae decode server", version="1", lifespan=lifespan,
                  description="Decodes edgeae payloads (docs/FORMAT.md) made with one bundle into images.")
    binary = {"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                   "format": "binary"}}}}}

    @app.post("/v1/decode", summary="Decode one payload", openapi_extra=binary,
              responses={200: {"content": {PNG: {}, NPY: {}, MULTIPART: {}}}, 400: {}, 401: {}, 403: {}, 408: {},
                         409: {}, 413: {}, 415: {}, 503: {}})
    async def decode(request: Request) -> Any:
        """Body: payload bytes (`Content-Type: application/octet-stream`). One item -> PNG; several -> .npy
        (N, H, W[, C]) uint8, or by `Accept`: image/png (one strip, items top to bottom) or multipart/mixed."""
        return await service.handle("decode", request)

    @app.post("/v1/ingest", summary="Decode and store one payload, idempotently", openapi_extra=binary,
              responses={400: {}, 401: {}, 403: {}, 404: {}, 408: {}, 409: {}, 413: {}, 415: {}, 429: {}, 503: {},
                         507: {}})
    async def ingest(request: Request) -> Any:
        """Stores the payload's images under the server's --store, keyed by the payload's sha256, and indexes
        it (device, time, size, bundle). Posting the same payload again stores nothing new: `"new": false`."""
        return await service.handle("ingest", request)

    @app.get("/v1/model", summary="The bundle this server decodes with, and its limits")
    async def model(request: Request) -> Any:
        return await service.handle("model", request)

    @app.get("/healthz")
    async def healthz(request: Request) -> Any:
        return await service.handle("healthz", request)

    @app.get("/metrics", summary="Prometheus text (needs the metrics scope when keys are on)")
    async def prometheus(request: Request) -> Any:
        return await service.handle("metrics", request)

    app.state.service = service
    app.state.engine, app.state.metrics, app.state.store = service.engine, service.metrics, service.store
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: ServeConfig, host: str, insecure: bool) -> None:
    """Refuse to serve without keys on a non-loopback address unless `insecure`."""
    if not config.keys and not insecure and not is_loopback(host):
        raise InputError(f"refusing to serve on {host} without --keys (anyone who can reach it could ingest); "
                         "give a key file (docs/SERVER.md), bind 127.0.0.1, or pass --insecure")


class JSONLines(logging.Formatter):
    """Access records are JSON already; everything else becomes one JSON line too (traceback included)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "edgeae.serve.access":
            return record.getMessage()
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def setup_logging(level: str = "info", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONLines())
    for name in ("edgeae.serve", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False


def uvicorn_config(app: Any, config: ServeConfig, host: str, port: int, *, ssl_certfile: str | None = None,
                   ssl_keyfile: str | None = None, ssl_keyfile_password: str | None = None,
                   log_level: str = "warning") -> Any:
    import uvicorn

    from edgeae.serve.protocol import MAX_HEADER_BYTES, guarded_protocol

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, log_config=None,
                          http=guarded_protocol(config.header_timeout, config.max_connections, RETRY_AFTER_S),
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES, timeout_keep_alive=max(1, round(config.keep_alive_s)),
                          ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, ssl_keyfile_password=ssl_keyfile_password,
                          lifespan="on", server_header=False)


def run(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", *,
        insecure: bool = False, ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
        ssl_keyfile_password: str | None = None) -> None:
    import uvicorn

    check_exposure(config, host, insecure)
    # The event loop (HTTP) and the decode threads share the GIL; with the default 5 ms switch interval a
    # decode thread doing Python-level work (entropy decoding, PNG) makes the loop wait in 5 ms steps.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    setup_logging(log_level)
    if config.store:
        Path(config.store).mkdir(parents=True, exist_ok=True)
    app = create_app(config)
    server = uvicorn.Server(uvicorn_config(app, config, host, port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                                           ssl_keyfile_password=ssl_keyfile_password, log_level=log_level))
    server.run()
