"""Dynamic micro-batching off the event loop.

Requests go into a bounded queue; `workers` decode threads each take the first waiting request, then gather
more until `max_batch` requests or `max_wait_ms` have passed (no wait when no other request is queued or
being received), parse + entropy-decode each (a bad payload fails
only its own request), run ONE decoder graph over all of them and hand each request its images back on the
event loop. A full queue refuses at once (`Overloaded`), so a slow decoder turns into 503s, not memory growth.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeae.serve.engine import DecodeEngine
from edgeae.serve.metrics import Metrics


class Overloaded(Exception):
    """The request queue is full; retry later."""


@dataclass
class _Job:
    payload: bytes
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    render: Callable[[np.ndarray], Any] | None = None
    queued: float = field(default_factory=time.perf_counter)


_STOP = object()


class MicroBatcher:
    def __init__(self, engine: DecodeEngine, max_batch: int = 32, max_wait_ms: float = 5.0, queue_size: int = 256,
                 workers: int = 1, metrics: Metrics | None = None) -> None:
        if max_batch < 1 or queue_size < 1 or workers < 1 or max_wait_ms < 0:
            raise ValueError("max_batch, queue_size and workers must be >= 1 and max_wait_ms >= 0")
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.metrics = metrics or Metrics()
        self._q: queue.Queue[Any] = queue.Queue()
        self._outstanding = 0  # queued + being decoded
        self.arriving = 0  # requests whose body is still being received (the server calls arrive/arrived)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"edgeae-decode-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def arrive(self) -> None:
        """A request started (its body is being read): a gathering decode thread waits for it."""
        with self._lock:
            self.arriving += 1

    def arrived(self) -> None:
        """That request's body is read (it is about to be queued, or was refused)."""
        with self._lock:
            self.arriving -= 1

    @property
    def outstanding(self) -> int:
        return self._outstanding

    async def decode(self, payload: bytes, render: Callable[[np.ndarray], Any] | None = None) -> Any:
        """The payload's uint8 images, or `render(images)` computed in the decode thread (PNG/npy encoding stays
        off the event loop); raises its PayloadError, or Overloaded when the queue is full."""
        with self._lock:
            if self._outstanding >= self.queue_size:
                raise Overloaded(f"{self._outstanding} requests waiting (queue {self.queue_size})")
            self._outstanding += 1
        loop = asyncio.get_running_loop()
        job = _Job(payload, loop.create_future(), loop, render)
        self._q.put(job)
        return await job.future

    def close(self) -> None:
        for _ in self._threads:
            self._q.put(_STOP)
        for t in self._threads:
            t.join(timeout=5)

    # --- decode threads -----------------------------------------------------------------------------------

    def _gather(self, first: _Job) -> list[_Job]:
        """The first job plus whatever is queued, up to max_batch; waits up to max_wait for more only while
        requests are queued or still being received (`arrive`), so a lone request is decoded at once."""
        jobs = [first]
        deadline = time.perf_counter() + self.max_wait
        while len(jobs) < self.max_batch:
            if self._q.empty() and self.arriving <= 0:
                break  # no request queued or being received: waiting could only add latency
            left = deadline - time.perf_counter()
            try:
                job = self._q.get_nowait() if left <= 0 else self._q.get(timeout=left)
            except queue.Empty:
                break
            if job is _STOP:
                self._q.put(_STOP)
                break
            jobs.append(job)
        return jobs

    def _work(self) -> None:
        while True:
            first = self._q.get()
            if first is _STOP:
                return
            jobs = self._gather(first)
            try:
                self._decode(jobs)
            except BaseException as exc:  # never let a decode thread die: fail the batch instead
                for job in jobs:
                    self._finish(job, exc=exc)

    def _decode(self, jobs: list[_Job]) -> None:
        ok: list[tuple[_Job, np.ndarray]] = []
        for job in jobs:
            try:
                ok.append((job, self.engine.prepare(job.payload)))
            except Exception as exc:
                self._finish(job, exc=exc)
        if not ok:
            return
        self.metrics.observe_batch(len(ok))
        results = self.engine.run([q for _, q in ok])
        for (job, _), images in zip(ok, results, strict=True):
            try:
                result = job.render(images) if job.render is not None else images
            except Exception as exc:
                self._finish(job, exc=exc)
            else:
                self._finish(job, result=result)

    def _finish(self, job: _Job, result: Any = None, exc: BaseException | None = None) -> None:
        with self._lock:
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
