"""Prometheus text metrics without a dependency: counters, a batch-size histogram, latency quantiles."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict, deque

import numpy as np

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_WINDOW = 4096  # quantiles over the most recent requests
QUANTILES = (0.5, 0.9, 0.99)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, status)
        self.errors: Counter[str] = Counter()  # kind
        self.batch_counts = [0] * len(BATCH_BUCKETS)
        self.batch_sum = 0
        self.batch_n = 0
        self.latency: dict[str, deque[float]] = {}
        self.latency_sum: defaultdict[str, float] = defaultdict(float)
        self.latency_n: Counter[str] = Counter()
        self.ingested_new = 0
        self.ingested_dup = 0
        self.cancelled = 0  # jobs skipped because their client left or their time ran out
        self.penalised = 0  # refusals answered late (edgeae.serve.penalty)
        self.penalty_seconds = 0.0

    def observe_request(self, endpoint: str, status: int, seconds: float, error: str | None = None) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            if error:
                self.errors[error] += 1
            self.latency.setdefault(endpoint, deque(maxlen=LATENCY_WINDOW)).append(seconds)
            self.latency_sum[endpoint] += seconds
            self.latency_n[endpoint] += 1

    def observe_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    def observe_penalty(self, seconds: float) -> None:
        with self._lock:
            self.penalised += 1
            self.penalty_seconds += seconds

    def observe_batch(self, size: int) -> None:
        with self._lock:
            for i, b in enumerate(BATCH_BUCKETS):
                if size <= b:
                    self.batch_counts[i] += 1
            self.batch_sum += size
            self.batch_n += 1

    def render(self, queue_depth: int = 0, gauges: dict[str, float] | None = None) -> str:
        with self._lock:
            lines = ["# HELP edgeae_requests_total HTTP requests by endpoint and status.",
                     "# TYPE edgeae_requests_total counter"]
            for (ep, st), n in sorted(self.requests.items()):
                lines.append(f'edgeae_requests_total{{endpoint="{ep}",status="{st}"}} {n}')
            lines += ["# HELP edgeae_errors_total Refused requests by kind (payload error code, too_large, ...).",
                      "# TYPE edgeae_errors_total counter"]
            for kind, n in sorted(self.errors.items()):
                lines.append(f'edgeae_errors_total{{kind="{kind}"}} {n}')
            lines += ["# HELP edgeae_batch_size Requests decoded together in one graph run.",
                      "# TYPE edgeae_batch_size histogram"]
            for b, n in zip(BATCH_BUCKETS, self.batch_counts, strict=True):
                lines.append(f'edgeae_batch_size_bucket{{le="{b}"}} {n}')
            lines += [f'edgeae_batch_size_bucket{{le="+Inf"}} {self.batch_n}',
                      f"edgeae_batch_size_sum {self.batch_sum}", f"edgeae_batch_size_count {self.batch_n}",
                      "# HELP edgeae_request_latency_seconds Request latency (quantiles over the last "
                      f"{LATENCY_WINDOW} requests per endpoint).",
                      "# TYPE edgeae_request_latency_seconds summary"]
            for ep, window in sorted(self.latency.items()):
                a = np.fromiter(window, float)
                for q in QUANTILES:
                    lines.append(f'edgeae_request_latency_seconds{{endpoint="{ep}",quantile="{q}"}} '
                                 f"{float(np.quantile(a, q)):.6f}")
                lines.append(f'edgeae_request_latency_seconds_sum{{endpoint="{ep}"}} {self.latency_sum[ep]:.6f}')
                lines.append(f'edgeae_request_latency_seconds_count{{endpoint="{ep}"}} {self.latency_n[ep]}')
            lines += ["# TYPE edgeae_ingested_total counter",
                      f'edgeae_ingested_total{{new="true"}} {self.ingested_new}',
                      f'edgeae_ingested_total{{new="false"}} {self.ingested_dup}',
                      "# TYPE edgeae_queue_depth gauge", f"edgeae_queue_depth {queue_depth}",
                      "# HELP edgeae_cancelled_total Decode jobs skipped: client gone or time limit.",
                      "# TYPE edgeae_cancelled_total counter", f"edgeae_cancelled_total {self.cancelled}",
                      "# HELP edgeae_penalised_total Refusals answered late because their client kept erring.",
                      "# TYPE edgeae_penalised_total counter", f"edgeae_penalised_total {self.penalised}",
                      "# TYPE edgeae_penalty_seconds_total counter",
                      f"edgeae_penalty_seconds_total {self.penalty_seconds:.3f}"]
            for name, value in sorted((gauges or {}).items()):
                lines += [f"# TYPE edgeae_{name} gauge", f"edgeae_{name} {value}"]
        return "\n".join(lines) + "\n"
