"""Ray Serve deployment of the same decode service (the `[ray]` extra): `--workers` replicas, each running the
shared HTTP layer (edgeae.serve.http.DecodeService: routes, auth, limits, JSON errors, logs, metrics) and its
own micro-batcher, whose decode threads keep parsing, entropy decoding and the graph run off the replica's
event loop. Routes: POST /v1/decode, GET /v1/model, GET /healthz, GET /metrics (ingest: --engine local).
Connection-level limits (header timeout, connection cap) are the proxy's; put Ray behind a reverse proxy
on a network.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from ray import serve

from edgeae.serve.http import DecodeService, ServeConfig

ROUTES = {("POST", "/v1/decode"): "decode", ("POST", "/v1/ingest"): "ingest", ("GET", "/v1/model"): "model",
          ("GET", "/healthz"): "healthz", ("GET", "/metrics"): "metrics"}


@serve.deployment(name="edgeae_decoder", max_ongoing_requests=256)
class RayDecoder:
    def __init__(self, config: ServeConfig) -> None:
        # a quarter of the replica's 256 request slots at most for refusals waiting out a penalty
        self.service = DecodeService(config, engine_name="ray", max_waiting=64)
        self.started = False

    async def __call__(self, request: Any) -> Any:
        if not self.started:  # the batcher's futures belong to the replica's running loop
            self.service.start()
            self.started = True
        endpoint = ROUTES.get((request.method, request.url.path.rstrip("/") or "/"), "not_found")
        return await self.service.handle(endpoint, request)

    def __del__(self) -> None:
        if getattr(self, "started", False):
            self.service.close()


def build(config: ServeConfig, replicas: int = 1) -> Any:
    """The bound Serve application (pass to serve.run)."""
    # @serve.deployment turns the class into a Deployment (with .options); Ray's stub keeps the class type.
    return RayDecoder.options(num_replicas=replicas, ray_actor_options={"num_cpus": 0}).bind(  # type: ignore[attr-defined]
        config)


def start(config: ServeConfig | str, *, host: str = "127.0.0.1", port: int = 8000, num_cpus: int | None = None,
          replicas: int = 1, after_init: Callable[[], None] | None = None, **options: Any) -> Any:
    """Start a local Ray (no dashboard; on loopback when serving on loopback), Serve's HTTP proxy on host:port
    and the application; returns its handle. `config` may be a bundle path plus ServeConfig fields;
    `after_init` runs right after ray.init (the CLI takes its signal handlers back from Ray there)."""
    import ray

    if isinstance(config, str):
        config = ServeConfig(bundle=config, **options)
    elif options:
        config = dataclasses.replace(config, **options)
    if config.threads is None:
        config = dataclasses.replace(config, threads=1)
    if not ray.is_initialized():
        extra: dict[str, Any] = {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 logging_level=logging.ERROR, **extra)
    if after_init is not None:
        after_init()
    serve.start(http_options={"host": host, "port": port}, detached=False)
    return serve.run(build(config, replicas), name="edgeae", route_prefix="/", blocking=False)


def shutdown() -> None:
    import ray

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
