"""Connection-level limits uvicorn does not have, as a subclass of its h11 protocol (`uvicorn.Config(http=...)`):

- a **header timeout**: a connection that has not sent a complete request head within `header_timeout`
  seconds of connecting (or of its previous response) gets `408` and is closed -- however slowly it
  trickles bytes (uvicorn's keep-alive timer is reset by every byte, so alone it never fires for them);
- a **connection cap**: beyond `max_connections` open connections, a new one gets `503` with `Retry-After`
  and is closed at once, before it can hold anything.

Body timeouts, sizes and the memory budget are the application's (edgeae.serve.http), so they also hold
behind Ray Serve's proxy. Header size is h11's limit (`h11_max_incomplete_event_size`, 16 KiB here).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("edgeae.serve")
MAX_HEADER_BYTES = 16 << 10


def _raw_response(status: int, reason: str, error: str, detail: str, retry_after: int | None = None) -> bytes:
    body = json.dumps({"error": error, "detail": detail}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close"]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def guarded_protocol(header_timeout: float, max_connections: int, retry_after: int = 1) -> type:
    """An H11Protocol subclass with the header timeout and the connection cap."""

    class GuardedH11Protocol(H11Protocol):
        _header_timer: Any = None
        _seen_cycle: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("connection cap of %d reached: refusing a connection with 503", max_connections)
                self._refuse(503, "Service Unavailable", "too_many_connections",
                             f"more than {max_connections} open connections; retry later", retry_after)
                return
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._header_timed_out)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _refuse(self, status: int, reason: str, error: str, detail: str, retry: int | None = None) -> None:
            if not self.transport.is_closing():
                self.transport.write(_raw_response(status, reason, error, detail, retry))
                self.transport.close()

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being served: its body and time limits are the application's
            self._refuse(408, "Request Timeout", "header_timeout",
                         f"no complete request head within {header_timeout:g} s")

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and self.cycle is not self._seen_cycle:  # a request head arrived
                self._seen_cycle = self.cycle
                self._disarm()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._arm()  # the next request head must come in time too (super may start it at once)
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol
