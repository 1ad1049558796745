"""Ray Serve deployment of the same decoder (the `[ray]` extra): replicas, each batching with `@serve.batch`.

Each request is parsed and entropy-decoded on arrival (a bad payload fails alone, with the same JSON errors as
the FastAPI server); the symbols of concurrent requests are then decoded in ONE graph run by the batched method.
Routes: POST /v1/decode (PNG for one image, .npy otherwise or when asked), GET /v1/model, GET /healthz.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from ray import serve

from edgeae.runtime.images import png_bytes
from edgeae.runtime.payload import MAX_PAYLOAD_BYTES
from edgeae.serve.app import NPY, choose_format, problem_for
from edgeae.serve.engine import DecodeEngine, npy_bytes, strip


@serve.deployment(name="edgeae_decoder", max_ongoing_requests=256)
class RayDecoder:
    def __init__(self, bundle: str, precision: str = "fp32", max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_body: int = 1 << 20, threads: int | None = 1) -> None:
        self.engine = DecodeEngine(bundle, precision, threads=threads)
        self.max_body = min(max_body, MAX_PAYLOAD_BYTES)
        # @serve.batch adds these setters at runtime; Ray's stub types the method as a plain coroutine function.
        self._run_batch.set_max_batch_size(max_batch)  # type: ignore[attr-defined]
        self._run_batch.set_batch_wait_timeout_s(max_wait_ms / 1000.0)  # type: ignore[attr-defined]
        self.batches: list[int] = []

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _run_batch(self, prepared: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.append(len(prepared))
        del self.batches[:-1000]
        return await asyncio.to_thread(self.engine.run, prepared)

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response

        path = request.url.path.rstrip("/")
        if request.method == "GET" and path == "/healthz":
            return JSONResponse({"status": "ok", "fingerprint": self.engine.fingerprint})
        if request.method == "GET" and path == "/v1/model":
            return JSONResponse({**self.engine.summary(), "engine": "ray", "recent_batches": self.batches[-50:]})
        if request.method != "POST" or path != "/v1/decode":
            return JSONResponse({"error": "not_found", "detail": f"no route {request.method} {path}"},
                                status_code=404)
        t0 = time.perf_counter()
        try:
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                return JSONResponse({"error": "too_large", "detail": f"body exceeds {self.max_body} bytes"},
                                    status_code=413)
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    return JSONResponse({"error": "too_large", "detail": f"body exceeds {self.max_body} bytes"},
                                        status_code=413)
                chunks.append(chunk)
            payload = b"".join(chunks)
            images = await self._run_batch(self.engine.prepare(payload))
        except Exception as exc:
            p = problem_for(exc)
            return JSONResponse({"error": p.error, "detail": p.detail}, status_code=p.status, headers=p.headers)
        fmt = choose_format(request.headers.get("accept"), len(images))
        headers = {"X-Edgeae-Items": str(len(images)), "X-Edgeae-Latency-Ms": f"{1000 * (time.perf_counter() - t0):.2f}"}
        if fmt == NPY:
            return Response(npy_bytes(images), media_type=NPY, headers=headers)
        return Response(png_bytes(images[0] if len(images) == 1 else strip(images)), media_type="image/png",
                        headers=headers)


def build(bundle: str, *, precision: str = "fp32", replicas: int = 1, max_batch: int = 32, max_wait_ms: float = 5.0,
          max_body: int = 1 << 20, threads: int | None = 1) -> Any:
    """The bound Serve application (pass to serve.run)."""
    # @serve.deployment turns the class into a Deployment (with .options); Ray's stub keeps the class type.
    return RayDecoder.options(num_replicas=replicas, ray_actor_options={"num_cpus": 0}).bind(  # type: ignore[attr-defined]
        str(bundle), precision, max_batch, max_wait_ms, max_body, threads)


def start(bundle: str, *, host: str = "127.0.0.1", port: int = 8000, num_cpus: int | None = None, **options: Any) -> Any:
    """Start a local Ray (no dashboard; on loopback when serving on loopback), Serve's HTTP proxy on host:port
    and the application; returns its handle."""
    import ray

    if not ray.is_initialized():
        extra: dict[str, Any] = {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False, **extra)
    serve.start(http_options={"host": host, "port": port}, detached=False)
    return serve.run(build(bundle, **options), name="edgeae", route_prefix="/", blocking=False)


def shutdown() -> None:
    import ray

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
