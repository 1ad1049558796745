"""The HTTP layer both servers share (FastAPI + uvicorn, and the Ray Serve deployment): routes, authentication,
bounded body reading, decode-cost caps checked before decoding, a memory budget, quotas, the ingest store,
JSON errors and one JSON log line per request. It takes a Starlette `Request` and returns a Starlette
`Response`; only connection-level limits (header timeout, connection cap) live in `edgeae.serve.protocol`.

Order of the checks for a payload request (each refusal happens before anything more expensive):
auth (401/403) -> framing and Content-Type (400/411/415) -> size and memory budget (413/503) -> body within the
time limit (408) -> payload HMAC (401) -> header, fingerprint and cost caps (400/409/413) -> [ingest: duplicate,
quota 429, disk 507] -> decode in the batcher within the request time limit (503), cancelled if the client
goes away -> [ingest: store + index].
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeae.errors import FingerprintMismatch, PayloadError, Truncated
from edgeae.runtime import payload as wire
from edgeae.runtime.images import png_bytes
from edgeae.serve.auth import SIGNATURE_HEADER, Device, KeyRing, bearer, signature_ok
from edgeae.serve.batcher import Cancelled, MicroBatcher, Overloaded
from edgeae.serve.engine import DecodeEngine, npy_bytes, strip
from edgeae.serve.metrics import Metrics
from edgeae.serve.penalty import STRIKE_STATUSES, Penalties
from edgeae.serve.store import ImageStore, StoreFull, payload_id

NPY = "application/x-npy"
PNG = "image/png"
MULTIPART = "multipart/mixed"
PAYLOAD_TYPES = ("application/octet-stream", "application/x-edgeae-payload")
RETRY_AFTER_S = 1
BYTES_PER_VALUE = 8  # decode memory per output value: float32 graph output + uint8 + encoded image + slack
BYTES_PER_SYMBOL = 8  # int32 symbols + float32 latents
MAX_SLEEPING = 256  # refusals waiting out a penalty at once, all owners together (half the connection cap);
# one owner may hold half of them
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
access_log = logging.getLogger("edgeae.serve.access")
log = logging.getLogger("edgeae.serve")


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
    # authentication
    keys: str | None = None  # key file (edgeae.serve.auth); None = open server (loopback only, or --insecure)
    require_signature: bool = False  # every payload must carry X-Edgeae-Signature
    key_reload_s: float = 1.0
    # decode cost (None = derived from the bundle and the memory budget)
    memory_budget: int = 128 << 20  # bytes: bodies in flight + decode work admitted, all requests together
    budget_share: float = 0.25  # the most of it one device (or client address, without keys) may hold
    max_items: int | None = None  # per request
    max_pixels: int | None = None  # output values (items x C x H x W) per request
    max_batch_items: int | None = None
    max_batch_pixels: int | None = None
    request_timeout: float = 30.0  # seconds from the first byte of the body to the response
    body_timeout: float = 10.0  # seconds to receive the whole body
    # connections (the uvicorn protocol; not the Ray proxy)
    header_timeout: float = 10.0
    max_connections: int = 512
    keep_alive_s: float = 5.0
    # ingest
    quota_bytes: int | None = None  # per device per quota window
    quota_items: int | None = None
    quota_window_s: float = 3600.0
    quota_disk_bytes: int | None = None  # per device, on disk
    keep_days: float | None = None
    min_free_bytes: int = 64 << 20
    # refusal penalties (edgeae.serve.penalty): after `penalty_free` refused requests, each further refusal of
    # the same device (or client address) waits `penalty_step_s` more, up to `penalty_max_s` (0 = off)
    penalty_free: int = 8
    penalty_step_s: float = 0.05
    penalty_max_s: float = 1.0
    allow_unbound: bool = False  # serve a partial bundle whose fingerprint cannot be recomputed (older exports)


@dataclass(frozen=True)
class Limits:
    """The caps in force, derived from the bundle and the config (GET /v1/model shows them)."""

    max_body: int
    max_items: int
    max_pixels: int
    max_batch_items: int
    max_batch_pixels: int
    memory_budget: int
    values_per_item: int  # C x H x W at the bundle's reference size
    symbols_per_item: int

    @classmethod
    def derive(cls, config: ServeConfig, engine: DecodeEngine) -> Limits:
        m = engine.manifest
        values = math.prod(m.input.shape)
        symbols = m.latent.symbols
        per_item = values * BYTES_PER_VALUE + symbols * BYTES_PER_SYMBOL
        # the largest request (body + decode work) must fit one device's share of the budget: half for the
        # body at most, the rest for the work
        share = max(1, int(config.memory_budget * min(1.0, config.budget_share)))
        max_body = min(config.max_body, wire.MAX_PAYLOAD_BYTES, share // 2)
        work = share - max_body
        max_pixels = config.max_pixels or max(values, work // BYTES_PER_VALUE // 2)
        wire_items = min(wire.MAX_ITEMS, wire.MAX_TOTAL_SYMBOLS // max(1, symbols))
        max_items = config.max_items or max(1, min(wire_items, 4096, max_pixels // values, work // per_item))
        return cls(max_body=max_body, max_items=max_items, max_pixels=max_pixels,
                   max_batch_items=max(config.max_batch_items or max_items, max_items),
                   max_batch_pixels=max(config.max_batch_pixels or max_pixels, max_pixels),
                   memory_budget=config.memory_budget, values_per_item=values, symbols_per_item=symbols)

    def cost(self, body: int, items: int, values: int) -> int:
        """Bytes a request may hold while it is decoded: its body plus the decode work."""
        return body + values * BYTES_PER_VALUE + items * self.symbols_per_item * BYTES_PER_SYMBOL


class Budget:
    """Bytes admitted, all requests together, and per owner (a device, or a client address on an open
    server): one owner may hold at most `share` of the total, so a few clients stalling bodies cannot starve
    the others. Event-loop only: no lock."""

    def __init__(self, total: int, share: float = 1.0) -> None:
        self.total, self.used, self.peak = total, 0, 0
        self.per_owner = max(1, int(total * share))
        self.owners: dict[str, int] = {}

    def take(self, n: int, owner: str = "-") -> bool:
        mine = self.owners.get(owner, 0)
        if n > 0 and (self.used + n > self.total or mine + n > self.per_owner):
            return False
        self.used += n
        self.owners[owner] = mine + n
        self.peak = max(self.peak, self.used)
        return True

    def over_share(self, n: int, owner: str = "-") -> bool:
        """Would `n` more bytes pass the owner's own share (its fault, unlike a full total)?"""
        return self.owners.get(owner, 0) + n > self.per_owner

    def give(self, n: int, owner: str = "-") -> None:
        self.used -= n
        left = self.owners.get(owner, 0) - n
        if left > 0:
            self.owners[owner] = left
        else:
            self.owners.pop(owner, None)


class HTTPProblem(Exception):
    """A refusal. `strike`: the client's own fault even where the status (503) would not say so."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None,
                 strike: bool = False) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}
        self.strike = strike or status in STRIKE_STATUSES


class ClientGone(Exception):
    """The client disconnected; nobody reads the answer. `incomplete`: inside its request body."""

    def __init__(self, incomplete: bool = False) -> None:
        super().__init__("client gone")
        self.incomplete = incomplete


def _busy(error: str, detail: str, strike: bool = False) -> HTTPProblem:
    return HTTPProblem(503, error, detail, {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"}, strike)


def problem_for(exc: BaseException, request_id: str = "-") -> HTTPProblem:
    """Map an exception to (status, JSON error); anything unexpected is a 500 that names no internals (and
    is logged with its traceback under the request id)."""
    if isinstance(exc, HTTPProblem):
        return exc
    if isinstance(exc, FingerprintMismatch):
        return HTTPProblem(409, exc.code, str(exc))
    if isinstance(exc, PayloadError):
        return HTTPProblem(400, exc.code, str(exc))
    if isinstance(exc, Overloaded):
        return _busy("overloaded", f"server busy: {exc}; retry later")
    if isinstance(exc, StoreFull):
        return HTTPProblem(507, "insufficient_storage", f"the server's store is full ({exc}); retry later",
                           {"Retry-After": "60"})
    log.error("request %s: unexpected %s", request_id, type(exc).__name__, exc_info=exc)
    return HTTPProblem(500, "internal", f"{type(exc).__name__} while decoding; see the server log for request "
                                        f"{request_id}")


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


def render_images(images: Any, accept: str | None) -> tuple[bytes, str, dict[str, str]]:
    """(body, media type, headers) of a decode response; runs in the decode thread. `images`: an (N, H, W[, C])
    array, or a list of per-item arrays when the payload's items differ in size (then one PNG part each)."""
    mixed = isinstance(images, list)
    shape = "mixed" if mixed else ",".join(map(str, images.shape[1:]))
    headers = {"X-Edgeae-Items": str(len(images)), "X-Edgeae-Shape": shape}
    fmt = choose_format(accept, len(images))
    if mixed and len(images) > 1:
        fmt = MULTIPART  # items of several sizes: neither one array nor one strip
    if fmt == NPY:
        return npy_bytes(images), NPY, headers
    if fmt == PNG:
        return png_bytes(images[0] if len(images) == 1 else strip(images)), PNG, headers
    boundary = "edgeae-" + secrets.token_hex(8)
    parts = [f"--{boundary}\r\nContent-Type: {PNG}\r\nContent-ID: {i}\r\n\r\n".encode() + png_bytes(im)
             + b"\r\n" for i, im in enumerate(images)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f'{MULTIPART}; boundary="{boundary}"', headers


def peek_items(payload: bytes) -> int | None:
    """The item count a v1/v2 payload announces, read from its first bytes (None if it cannot be read; the
    strict parser then says why). Lets a forged 65,536-item header be refused before it is parsed."""
    if len(payload) < 4 or payload[:2] != wire.MAGIC or payload[2] not in (1, 2):
        return None
    pos = 3
    for _ in range(2):  # header_length, then (after the fixed fields) items
        value = shift = 0
        for _i in range(4):
            if pos >= len(payload):
                return None
            byte = payload[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        else:
            return None
        if _ == 0:
            pos += wire.FINGERPRINT_BYTES + 1 + (1 if payload[2] == 2 else 0)  # fingerprint, coder_bits[, model]
    return value


@dataclass
class Context:
    """What the request log line says about one request."""

    id: str
    method: str
    path: str
    endpoint: str
    client: str | None = None
    device: str | None = None
    status: int = 0
    error: str | None = None
    items: int | None = None
    bytes: int = 0
    new: bool | None = None
    ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def owner(self) -> str:
        """Whose share of the memory budget this request uses: its device, else its client address."""
        return f"device:{self.device}" if self.device else f"client:{self.client or '-'}"


class DecodeService:
    """One bundle's decode service. `start()` on the serving event loop, `close()` at shutdown."""

    def __init__(self, config: ServeConfig, engine: DecodeEngine | None = None,
                 hook: Callable[[int], None] | None = None, engine_name: str = "local",
                 max_waiting: int | None = None) -> None:
        self.config = config
        self.engine_name = engine_name
        self.metrics = Metrics()
        self.engine = engine or DecodeEngine(config.bundle, config.precision, threads=config.threads, hook=hook,
                                             allow_unbound=config.allow_unbound)
        self.limits = Limits.derive(config, self.engine)
        self.budget = Budget(self.limits.memory_budget, config.budget_share)
        self.penalties = Penalties(config.penalty_free, config.penalty_step_s, config.penalty_max_s)
        self._sleeping: dict[str, int] = {}  # owner -> refusals waiting out their penalty now
        self.max_waiting = MAX_SLEEPING if max_waiting is None else max_waiting
        self.keys = KeyRing(config.keys, config.key_reload_s) if config.keys else None
        self.store = ImageStore(config.store, config.min_free_bytes) if config.store else None
        self.batcher: MicroBatcher | None = None
        self._inflight: dict[str, list[int]] = {}  # device -> [bytes, items] of ingests admitted, not stored
        self._tasks: list[asyncio.Task] = []

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        c, lim = self.config, self.limits
        self.batcher = MicroBatcher(self.engine, c.max_batch, c.max_wait_ms, c.queue, c.workers, self.metrics,
                                    max_batch_items=lim.max_batch_items, max_batch_pixels=lim.max_batch_pixels)
        if self.store is not None and c.keep_days is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._expire_forever()))

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.batcher is not None:
            self.batcher.close()
        if self.store is not None:
            self.store.close()

    async def _expire_forever(self) -> None:
        assert self.store is not None and self.config.keep_days is not None
        period = min(3600.0, max(1.0, self.config.keep_days * 86400 / 24))
        while True:
            try:
                n = await asyncio.to_thread(self.store.expire, time.time() - self.config.keep_days * 86400)
                if n:
                    log.info("expired %d ingested payload(s) older than %s days", n, self.config.keep_days)
            except Exception as exc:  # keep serving; say it
                log.error("expiry failed: %r", exc, exc_info=exc)
            await asyncio.sleep(period)

    # --- entry point ---------------------------------------------------------------------------------------

    async def handle(self, endpoint: str, request: Any) -> Any:
        """Answer one request for `endpoint` (decode, ingest, model, healthz, metrics); never raises."""
        from starlette.responses import JSONResponse

        t0 = time.perf_counter()
        strike = False
        rid = request.headers.get("x-request-id", "")
        ctx = Context(id=rid if REQUEST_ID.match(rid) else secrets.token_hex(8), method=request.method,
                      path=request.url.path, endpoint=endpoint,
                      client=request.client.host if request.client else None)
        try:
            response = await self._route(endpoint, request, ctx)
        except ClientGone as exc:
            response = JSONResponse({"error": "client_gone", "detail": "the client disconnected"}, status_code=499)
            ctx.error = "client_gone"
            if exc.incomplete:  # hung up inside its body: as a body timeout would have been, a strike
                self.penalties.strike(ctx.owner)
        except Exception as exc:
            p = problem_for(exc, ctx.id)
            response = JSONResponse({"error": p.error, "detail": p.detail}, status_code=p.status, headers=p.headers)
            ctx.error, strike = p.error, p.strike
            del p  # the exception's traceback holds the request's frames (its body): not while it sleeps
        response.headers["X-Request-Id"] = ctx.id
        ctx.status = response.status_code
        ctx.ms = round(1000 * (time.perf_counter() - t0), 3)
        if strike:  # a refusal the client caused: answer it later the more it insists (edgeae.serve.penalty)
            await self._penalise(ctx, response)
        if endpoint in ("decode", "ingest", "metrics") or ctx.status >= 400:
            self.metrics.observe_request(endpoint, ctx.status, ctx.ms / 1000, ctx.error)
            record = {k: v for k, v in asdict(ctx).items() if v is not None and k != "extra"}
            access_log.info(json.dumps({"ts": round(time.time(), 3), **record, **ctx.extra}, separators=(",", ":")))
        return response

    async def _penalise(self, ctx: Context, response: Any) -> None:
        """Wait before sending a refusal, by the owner's strikes; beyond `max_waiting` refusals waiting (or half
        of them of one owner) answer at once and close the connection instead, so waiting refusals cannot fill
        the connection slots (or a Ray replica's request slots)."""
        wait = self.penalties.strike(ctx.owner)
        if wait <= 0:
            return
        mine = self._sleeping.get(ctx.owner, 0)
        if sum(self._sleeping.values()) >= self.max_waiting or mine >= self.max_waiting // 2:
            response.headers["Connection"] = "close"
            ctx.extra["penalty_ms"] = 0
            return
        ctx.extra["penalty_ms"] = round(1000 * wait)
        self.metrics.observe_penalty(wait)
        self._sleeping[ctx.owner] = mine + 1
        try:
            await asyncio.sleep(wait)
        finally:
            left = self._sleeping[ctx.owner] - 1
            if left:
                self._sleeping[ctx.owner] = left
            else:
                del self._sleeping[ctx.owner]

    async def _route(self, endpoint: str, request: Any, ctx: Context) -> Any:
        from starlette.responses import JSONResponse, PlainTextResponse

        if endpoint == "healthz":
            return JSONResponse({"status": "ok", "fingerprint": self.engine.fingerprint})
        if endpoint == "model":
            return JSONResponse(self.model_info())
        if endpoint not in ("decode", "ingest", "metrics"):
            raise HTTPProblem(404, "not_found", f"no route {request.method} {request.url.path}")
        device = self.authenticate(request, endpoint, ctx)
        if endpoint == "metrics":
            b = self.batcher
            return PlainTextResponse(self.metrics.render(b.outstanding if b else 0, self.gauges()),
                                     media_type="text/plain; version=0.0.4")
        if endpoint == "ingest" and self.store is None:
            raise HTTPProblem(404, "no_store", "this server was started without --store")
        return await self._payload_request(endpoint, request, device, ctx)

    def model_info(self) -> dict[str, Any]:
        c = self.config
        return {**self.engine.summary(), "engine": self.engine_name, "max_batch": c.max_batch,
                "max_wait_ms": c.max_wait_ms, "max_body": self.limits.max_body, "queue": c.queue,
                "store": bool(self.store), "auth": "keys" if self.keys else "none",
                "require_signature": c.require_signature,
                "limits": {k: v for k, v in asdict(self.limits).items()},
                "request_timeout_s": c.request_timeout, "body_timeout_s": c.body_timeout}

    def gauges(self) -> dict[str, float]:
        return {"memory_budget_bytes": self.budget.total, "memory_admitted_bytes": self.budget.used,
                "memory_admitted_peak_bytes": self.budget.peak}

    # --- checks --------------------------------------------------------------------------------------------

    def authenticate(self, request: Any, scope: str, ctx: Context | None = None) -> Device | None:
        if self.keys is None:
            return None
        token = bearer(request.headers.get("authorization"))
        if token is None:
            raise HTTPProblem(401, "unauthorized", "send `Authorization: Bearer <device key>`",
                              {"WWW-Authenticate": 'Bearer realm="edgeae"'})
        device = self.keys.device(token)
        if device is None:
            raise HTTPProblem(401, "unauthorized", "unknown or revoked key",
                              {"WWW-Authenticate": 'Bearer realm="edgeae", error="invalid_token"'})
        if ctx is not None:
            ctx.device = device.name  # from here on its refusals are the device's
        if scope not in device.scopes:
            raise HTTPProblem(403, "forbidden", f"device {device.name} may not use {scope}")
        return device

    def _take(self, n: int, owner: str, what: str) -> None:
        """Take `n` bytes from the memory budget for `owner`, or refuse with 503 (a strike when it is the
        owner's own share that is full, not the total)."""
        if not self.budget.take(n, owner):
            raise _busy("overloaded", f"{what} (budget {self.budget.total} bytes, {self.budget.per_owner} per "
                        "device); retry later", self.budget.over_share(n, owner))

    async def read_body(self, request: Any, ctx: Context) -> tuple[bytes, int]:
        """The body within the size cap, the memory budget and the body time limit; returns (body, bytes
        taken from the budget) -- the caller gives them back."""
        from starlette.requests import ClientDisconnect

        h = request.headers
        lim = self.limits
        if "transfer-encoding" in h and "content-length" in h:
            raise HTTPProblem(400, "bad_request", "both Content-Length and Transfer-Encoding; send one",
                              {"Connection": "close"})
        ctype = h.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in PAYLOAD_TYPES:
            raise HTTPProblem(415, "unsupported_media_type", f"Content-Type must be {PAYLOAD_TYPES[0]} "
                              f"(got {ctype or 'none'})", {"Connection": "close"})
        length = h.get("content-length")
        declared = None
        if length is not None:
            if not length.isdigit() or len(length) > 12:
                raise HTTPProblem(400, "bad_request", "Content-Length is not a number", {"Connection": "close"})
            declared = int(length)
            if declared > lim.max_body:
                raise HTTPProblem(413, "too_large", f"body of {declared} bytes exceeds the limit of {lim.max_body}",
                                  {"Connection": "close"})
        owner = ctx.owner
        if declared:
            self._take(declared, owner, "too many bytes of requests in flight")
        taken = declared or 0
        chunks: list[bytes] = []
        got = [0, taken]  # bytes received, bytes taken from the budget

        async def collect() -> None:
            async for chunk in request.stream():
                got[0] += len(chunk)
                if got[0] > lim.max_body:
                    raise HTTPProblem(413, "too_large", f"body exceeds the limit of {lim.max_body} bytes",
                                      {"Connection": "close"})
                if got[0] > got[1]:  # chunked: take from the budget as it arrives
                    self._take(got[0] - got[1], owner, "too many bytes of requests in flight")
                    got[1] = got[0]
                chunks.append(chunk)

        try:
            await asyncio.wait_for(collect(), self.config.body_timeout)
        except asyncio.TimeoutError:
            self.budget.give(got[1], owner)
            raise HTTPProblem(408, "body_timeout", f"the body did not arrive within {self.config.body_timeout} s",
                              {"Connection": "close"}) from None
        except ClientDisconnect:
            self.budget.give(got[1], owner)
            raise ClientGone(incomplete=True) from None
        except BaseException:
            self.budget.give(got[1], owner)
            raise
        size, taken = got
        ctx.bytes = size
        if not size:
            self.budget.give(taken, owner)
            raise HTTPProblem(400, "empty", "empty body; POST the payload bytes")
        return b"".join(chunks), taken

    def precheck(self, payload: bytes) -> tuple[int, int]:
        """Header-only checks before any decoding: the strict header, the fingerprint, the caps on items and
        output values. Returns (items, output values)."""
        lim = self.limits
        announced = peek_items(payload)
        if announced is not None and announced > lim.max_items:
            raise HTTPProblem(413, "too_many_items", f"payload announces {announced} items; this server decodes "
                              f"at most {lim.max_items} per request (split the batch)")
        h = wire.parse_header(payload)
        if h.fingerprint != self.engine.fingerprint_prefix:
            raise FingerprintMismatch(f"payload was made with bundle {h.fingerprint.hex()} but this server decodes "
                                      f"{self.engine.fingerprint_prefix.hex()}; send it to the server of its bundle")
        if h.items > lim.max_items:
            raise HTTPProblem(413, "too_many_items", f"payload has {h.items} items; this server decodes at most "
                              f"{lim.max_items} per request (split the batch)")
        values = self.engine.output_values(h)
        if values > lim.max_pixels:
            raise HTTPProblem(413, "too_many_pixels", f"payload decodes to {values} pixel values; this server "
                              f"decodes at most {lim.max_pixels} per request (split the batch)")
        if h.total_size > len(payload):
            raise Truncated(f"payload has {len(payload)} bytes but its header announces {h.total_size}; the payload "
                            "is cut short")
        return h.items, values

    def check_quota(self, device: str, size: int, items: int) -> None:
        """429 + Retry-After when this ingest would pass the device's quota (the index plus what is in flight)."""
        c, store = self.config, self.store
        assert store is not None
        if c.quota_bytes is None and c.quota_items is None and c.quota_disk_bytes is None:
            return
        sent, n, disk, frees_at = store.usage(device, c.quota_window_s)
        fb, fi = self._inflight.get(device, (0, 0))
        retry = max(1, math.ceil((frees_at or time.time() + c.quota_window_s) - time.time()))
        if c.quota_bytes is not None and sent + fb + size > c.quota_bytes:
            raise HTTPProblem(429, "quota_bytes", f"device {device} sent {sent + fb} of its {c.quota_bytes} bytes "
                              f"per {c.quota_window_s:g} s", {"Retry-After": str(retry)})
        if c.quota_items is not None and n + fi + items > c.quota_items:
            raise HTTPProblem(429, "quota_items", f"device {device} sent {n + fi} of its {c.quota_items} items per "
                              f"{c.quota_window_s:g} s", {"Retry-After": str(retry)})
        if c.quota_disk_bytes is not None and disk + fb + size > c.quota_disk_bytes:
            oldest = store.oldest(device)
            wait = 86400.0 if c.keep_days is None or oldest is None else oldest + c.keep_days * 86400 - time.time()
            raise HTTPProblem(429, "quota_disk", f"device {device} holds {disk} of its {c.quota_disk_bytes} bytes "
                              "on disk", {"Retry-After": str(max(1, math.ceil(wait)))})

    # --- the payload endpoints -----------------------------------------------------------------------------

    async def _payload_request(self, endpoint: str, request: Any, device: Device | None, ctx: Context) -> Any:
        from starlette.responses import JSONResponse, Response

        assert self.batcher is not None, "DecodeService.start() was not called"
        deadline = time.monotonic() + self.config.request_timeout
        token = self.batcher.arrive()
        try:
            payload, taken = await self.read_body(request, ctx)
        finally:
            self.batcher.arrived(token)
        held = taken
        name = device.name if device else "-"
        inflight: list[int] | None = None
        try:
            if device is not None and (self.config.require_signature or request.headers.get(SIGNATURE_HEADER)):
                if not signature_ok(device, payload, request.headers.get(SIGNATURE_HEADER)):
                    raise HTTPProblem(401, "bad_signature", "X-Edgeae-Signature is missing or is not "
                                      "HMAC-SHA256(device key, payload)")
            items, values = self.precheck(payload)
            ctx.items = items
            cost = self.limits.cost(0, items, values)
            self._take(cost, ctx.owner, "decode work admitted is at the memory budget")
            held += cost
            if endpoint == "decode":
                accept = request.headers.get("accept")
                body, media, headers = await self._decode(payload, lambda im: render_images(im, accept), items,
                                                          values, request, ctx, deadline)
                return Response(body, media_type=media, headers=headers)
            store = self.store
            assert store is not None
            pid = payload_id(payload)
            ctx.extra["payload"] = pid[:16]
            if await asyncio.to_thread(store.exists, pid):
                self.metrics.ingested_dup += 1
                ctx.new = False
                return JSONResponse({"id": pid, "new": False, "items": None})
            self.check_quota(name, len(payload), items)
            await asyncio.to_thread(store.check_space, len(payload) + 2 * values + 4096 * items)
            inflight = self._inflight.setdefault(name, [0, 0])
            inflight[0] += len(payload)
            inflight[1] += items
            images = await self._decode(payload, None, items, values, request, ctx, deadline)
            pid, new = await asyncio.to_thread(store.put, payload, images, pid, device=name,
                                               bundle=self.engine.fingerprint)
            if new:
                self.metrics.ingested_new += 1
            else:
                self.metrics.ingested_dup += 1
            ctx.new = new
            return JSONResponse({"id": pid, "new": new, "items": len(images)})
        finally:
            self.budget.give(held, ctx.owner)
            if inflight is not None:
                inflight[0] -= len(payload)
                inflight[1] -= ctx.items or 0
                if inflight == [0, 0]:
                    self._inflight.pop(name, None)

    async def _decode(self, payload: bytes, render: Callable | None, items: int, values: int, request: Any,
                      ctx: Context, deadline: float) -> Any:
        """Queue the payload; wait for it within the request's time limit, cancelling it if the client goes."""
        assert self.batcher is not None
        job = self.batcher.submit(payload, render, items=items, pixels=values, request_id=ctx.id)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({job.future, gone}, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if job.future in done:
            try:
                return job.future.result()
            except Cancelled:
                raise ClientGone() from None
        job.cancel()
        job.future.add_done_callback(lambda f: f.exception())  # retrieved: no "never retrieved" warning
        if gone in done:
            raise ClientGone()
        raise _busy("timeout", f"not decoded within the request time limit of {self.config.request_timeout} s; "
                    "retry later")


async def _disconnected(request: Any) -> None:
    """Return when the client disconnects (after its body was read)."""
    for _ in range(3):
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return
    await asyncio.Event().wait()  # this server does not report disconnects: rely on the time limit
