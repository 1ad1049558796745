"""Dynamic micro-batching off the event loop.

Requests go into a bounded queue; `workers` decode threads each take the first waiting request, then gather
more until `max_batch` requests, `max_batch_items` items or `max_batch_pixels` output values are in hand or
`max_wait_ms` have passed (no wait when no other request is queued or being received), parse +
entropy-decode each (a bad payload fails only its own request), run ONE decoder graph over all of them and
hand each request its images back on the event loop. A full queue refuses at once (`Overloaded`), so a slow
decoder turns into 503s, not memory growth. A job whose client went away or whose time ran out is cancelled:
it is skipped if its decoding has not started. Every job is finished exactly once (`_outstanding` is exact).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeae.serve.engine import DecodeEngine
from edgeae.serve.metrics import Metrics

log = logging.getLogger("edgeae.serve")


class Overloaded(Exception):
    """The request queue is full; retry later."""


class Cancelled(Exception):
    """The job was cancelled (client gone or time limit) before it was decoded."""


@dataclass
class Job:
    payload: bytes
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    render: Callable[[np.ndarray], Any] | None = None
    items: int = 1
    pixels: int = 0  # output values (items x C x H x W), for the per-batch cap
    request_id: str = "-"
    queued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    finished: bool = False

    def cancel(self) -> None:
        """Skip this job if its decoding has not started (called on the event loop)."""
        self.cancelled = True


_STOP = object()


class MicroBatcher:
    def __init__(self, engine: DecodeEngine, max_batch: int = 32, max_wait_ms: float = 5.0, queue_size: int = 256,
                 workers: int = 1, metrics: Metrics | None = None, max_batch_items: int | None = None,
                 max_batch_pixels: int | None = None) -> None:
        if max_batch < 1 or queue_size < 1 or workers < 1 or max_wait_ms < 0:
            raise ValueError("max_batch, queue_size and workers must be >= 1 and max_wait_ms >= 0")
        self.engine = engine
        self.max_batch = max_batch
        self.max_batch_items = max_batch_items
        self.max_batch_pixels = max_batch_pixels
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.metrics = metrics or Metrics()
        self._q: queue.Queue[Any] = queue.Queue()
        self._outstanding = 0  # queued + being decoded
        # requests whose body is being received (the server calls arrive/arrived): token -> start time
        self._arriving: dict[int, float] = {}
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"edgeae-decode-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def arrive(self) -> int:
        """A request started (its body is being read): a gathering decode thread waits for it, but only
        during the first max_wait of its body (a body that takes longer -- a slow link, or a client
        stalling on purpose -- is not worth holding everyone's batch for). Returns the token for `arrived`."""
        token = next(self._tokens)
        with self._lock:
            self._arriving[token] = time.perf_counter()
        return token

    def arrived(self, token: int) -> None:
        """That request's body is read (it is about to be queued, or was refused)."""
        with self._lock:
            self._arriving.pop(token, None)

    def _arrival_soon(self) -> bool:
        """Is a body still being received that started less than max_wait ago?"""
        since = time.perf_counter() - self.max_wait
        with self._lock:
            return any(t > since for t in self._arriving.values())

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def submit(self, payload: bytes, render: Callable[[np.ndarray], Any] | None = None, *, items: int = 1,
               pixels: int = 0, request_id: str = "-") -> Job:
        """Queue a payload (call on the event loop); `job.future` gets the images, or `render(images)`
        computed in the decode thread. Raises Overloaded when the queue is full."""
        with self._lock:
            if self._outstanding >= self.queue_size:
                raise Overloaded(f"{self._outstanding} requests waiting (queue {self.queue_size})")
            self._outstanding += 1
        loop = asyncio.get_running_loop()
        job = Job(payload, loop.create_future(), loop, render, items, pixels, request_id)
        self._q.put(job)
        return job

    async def decode(self, payload: bytes, render: Callable[[np.ndarray], Any] | None = None) -> Any:
        """The payload's uint8 images (or `render(images)`); raises its PayloadError, or Overloaded."""
        return await self.submit(payload, render).future

    def close(self) -> None:
        for _ in self._threads:
            self._q.put(_STOP)
        for t in self._threads:
            t.join(timeout=5)

    # --- decode threads -----------------------------------------------------------------------------------

    def _fits(self, jobs: list[Job], job: Job) -> bool:
        if self.max_batch_items is not None and sum(j.items for j in jobs) + job.items > self.max_batch_items:
            return False
        return self.max_batch_pixels is None or sum(j.pixels for j in jobs) + job.pixels <= self.max_batch_pixels

    def _gather(self, first: Job, carry: list[Job]) -> list[Job]:
        """The first job plus whatever is queued, up to the batch caps; waits up to max_wait for more only while
        requests are queued or started arriving within max_wait (`arrive`), so a lone request is decoded at once. A job
        that would break a cap is left in `carry` to start the next batch."""
        jobs = [first]
        deadline = time.perf_counter() + self.max_wait
        while len(jobs) < self.max_batch:
            if self._q.empty() and not self._arrival_soon():
                break  # no request queued or starting to arrive: waiting could only add latency
            left = deadline - time.perf_counter()
            try:
                job = self._q.get_nowait() if left <= 0 else self._q.get(timeout=left)
            except queue.Empty:
                break
            if job is _STOP:
                self._q.put(_STOP)
                break
            if not self._fits(jobs, job):
                carry.append(job)
                break
            jobs.append(job)
        return jobs

    def _work(self) -> None:
        carry: list[Job] = []
        while True:
            first = carry.pop() if carry else self._q.get()
            if first is _STOP:
                return
            jobs = self._gather(first, carry)
            try:
                self._decode(jobs)
            except BaseException as exc:  # never let a decode thread die: fail what is left of the batch
                log.error("decode batch of %d failed (requests %s): %r", len(jobs),
                          ",".join(j.request_id for j in jobs), exc, exc_info=exc)
                for job in jobs:
                    self._finish(job, exc=exc)

    def _decode(self, jobs: list[Job]) -> None:
        ok: list[tuple[Job, Any]] = []
        for job in jobs:
            if job.cancelled:
                self.metrics.observe_cancelled()
                self._finish(job, exc=Cancelled("cancelled before decoding"))
                continue
            try:
                ok.append((job, self.engine.prepare(job.payload)))
            except Exception as exc:
                self._finish(job, exc=exc)
        live = [(job, q) for job, q in ok if not job.cancelled]
        for job, _ in ok:
            if job.cancelled:
                self.metrics.observe_cancelled()
                self._finish(job, exc=Cancelled("cancelled before the graph run"))
        if not live:
            return
        self.metrics.observe_batch(len(live))
        results = self.engine.run([q for _, q in live])
        for (job, _), images in zip(live, results, strict=True):
            try:
                result = job.render(images) if job.render is not None else images
            except Exception as exc:
                self._finish(job, exc=exc)
            else:
                self._finish(job, result=result)

    def _finish(self, job: Job, result: Any = None, exc: BaseException | None = None) -> None:
        with self._lock:
            if job.finished:  # a batch that failed after some of its jobs were finished: once only
                return
            job.finished = True
            self._outstanding -= 1

        def settle() -> None:
            if job.future.done():  # the client went away and the request was cancelled
                return
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the event loop is closed (shutdown)
            pass
