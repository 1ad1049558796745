"""Benchmark: the decode server over loopback HTTP, micro-batching on (--max-batch 32) vs off (--max-batch 1).

Per concurrency level (1, 8, 32): requests/s and client-side p50/p99 latency of POST /v1/decode with
one-image payloads, plus the server's mean batch size read from /metrics. The server runs as a subprocess
(`edgeae serve`, onnxruntime 1 thread) on a free 127.0.0.1 port; the client is one thread per concurrent
request with a keep-alive stdlib http.client connection, in this process (warm-up requests not counted). Bounded: --requests per cell (default 600) and --seconds per cell (default 20). Goal: batching
>= 3x the throughput of --max-batch 1 at concurrency 32.

    .venv/bin/python benchmarks/bench_serve.py [BUNDLE] [--requests 600] [--seconds 20] [--int8]

Without BUNDLE a dense AE (64x64 gray photo patches, hidden 4096-4096, latent 64) is trained for one epoch
and exported into a temp folder (needs [train], ~30 s): a weight-bound decoder, where batching pays on a CPU.
With a tiny conv bundle (8x8 digits) HTTP dominates and batching changes little; see docs/SERVER.md.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from edgeae.runtime.codec import Encoder
from edgeae.serve.testing import ProcessServer, free_port

LEVELS = (1, 8, 32)
HEADERS = {"Content-Type": "application/octet-stream"}


def make_bundle(root: Path) -> Path:
    """A dense AE on 64x64 gray photo patches with 4096-wide hidden layers: its decoder is weight-bound (each
    graph run reads ~100 MB of weights), the kind of decoder batching helps on a CPU. Needs [train]."""
    from edgeae.bundling.build import ExportOptions, export_run
    from edgeae.train.data import DataSpec
    from edgeae.train.trainer import TrainConfig, train

    run = train("dense", DataSpec(name="photos", patch=64, color="gray", limit=400), root / "run",
                {"latent": 64, "hidden": (4096, 4096)}, TrainConfig(epochs=1, batch_size=64, seed=0, progress=False)).path
    export_run(run, ExportOptions(out=root / "bundle", int8=False, calibration_samples=64, measure_speed=False))
    return root / "bundle"


def load(base: str, payloads: list[bytes], concurrency: int, requests: int, seconds: float) -> dict:
    """`concurrency` client threads, each with its own keep-alive connection (stdlib http.client: httpx's
    asyncio client costs more CPU per request than the server on a small host and hides batching)."""
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = [0]
    counter = iter(range(requests))
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/decode", body=payloads[0], headers=HEADERS)  # warm-up: connect, not counted
        conn.getresponse().read()
        barrier.wait()
        while time.perf_counter() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            conn.request("POST", "/v1/decode", body=payloads[i % len(payloads)], headers=HEADERS)
            r = conn.getresponse()
            r.read()
            with lock:
                if r.status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[0] += 1
        conn.close()

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    bsum = float(re.search(r"edgeae_batch_size_sum (\S+)", text).group(1))
    bcount = float(re.search(r"edgeae_batch_size_count (\S+)", text).group(1))
    lat = np.array(latencies) * 1000
    return {"rps": len(latencies) / wall, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "n": len(latencies), "errors": errors[0], "batch_sum": bsum, "batch_count": bcount}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", nargs="?")
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else make_bundle(Path(tmp))
        enc = Encoder(bundle)
        shape = enc.manifest.input.shape
        rng = np.random.default_rng(0)
        imgs = rng.integers(0, 256, (64, shape[1], shape[2]) + ((shape[0],) if shape[0] > 1 else ()), dtype=np.uint8)
        payloads = enc.encode_each(imgs)
        rows = []
        for label, max_batch in (("batching", 32), ("max-batch 1", 1)):
            port = free_port()
            extra = ["--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms), "--threads", "1",
                     "--queue", "4096"] + (["--int8"] if args.int8 else [])
            server = ProcessServer(bundle, port, *extra).start()
            try:
                prev_sum = prev_count = 0.0
                for c in levels:
                    r = load(server.base, payloads, c, args.requests, args.seconds)
                    mean_batch = (r["batch_sum"] - prev_sum) / max(r["batch_count"] - prev_count, 1)
                    prev_sum, prev_count = r["batch_sum"], r["batch_count"]
                    rows.append((label, c, r, mean_batch))
            finally:
                server.stop()
    print(f"# bench_serve: {bundle} ({'int8' if args.int8 else 'fp32'}), input {list(shape)}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"# loopback HTTP, one-image payloads, max-wait {args.max_wait_ms} ms, onnxruntime 1 thread; "
          f"<= {args.requests} requests / {args.seconds:.0f} s per cell")
    print(f"{'server':<12} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} {'n':>5} {'err':>4}")
    for label, c, r, mb in rows:
        print(f"{label:<12} {c:>4} {r['rps']:>9.1f} {r['p50']:>8.2f} {r['p99']:>8.2f} {mb:>10.2f} {r['n']:>5} "
              f"{r['errors']:>4}")
    by = {(label, c): r for label, c, r, _ in rows}
    for c in levels:
        if ("batching", c) in by and ("max-batch 1", c) in by:
            print(f"speed-up at concurrency {c}: {by[('batching', c)]['rps'] / by[('max-batch 1', c)]['rps']:.2f}x")


if __name__ == "__main__":
    main()
