"""One profiling configuration, run in a fresh process: `python -m edgeae.profiling.worker JOB.json`.

A fresh process per configuration makes peak RSS mean something (getrusage is a lifetime high-water mark)
and keeps CPU affinity, thread pools and PyTorch's global state from leaking between configurations.
The job is JSON written by the engine; inputs are .npy / .bin files beside it; the result is JSON too.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIN_RUNS = 5
MAX_RUNS = 20_000
PROFILED_RUNS = 50  # --per-op: runs recorded by onnxruntime's profiler (a second, separate session)
TOP_OPS = 10


def main(argv: list[str]) -> int:
    job_path = Path(argv[1])
    job = json.loads(job_path.read_text())
    affinity = _pin(job.get("cpus"))
    result = RUNNERS[job["kind"]](job)
    result["affinity"] = affinity
    Path(job["out"]).write_text(json.dumps(result))
    return 0


def _pin(cpus: list[int] | None) -> list[int] | None:
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        os.sched_setaffinity(0, cpus)  # before any thread pool exists, so every worker thread inherits it
    except OSError:
        return None
    return sorted(os.sched_getaffinity(0))


def measure(setup: Callable[[], Callable[[], Any]], job: dict[str, Any]) -> dict[str, Any]:
    """Cold start (setup, then the first call) apart from steady state (warm-up, then timed calls)."""
    from edgeae.profiling.host import peak_rss_mb

    base = peak_rss_mb()
    t0 = time.perf_counter()
    call = setup()
    t1 = time.perf_counter()
    call()
    t2 = time.perf_counter()
    for _ in range(job["warmup"]):
        call()
    runs, seconds = job.get("runs"), job.get("seconds")
    samples: list[float] = []
    deadline = time.perf_counter() + (seconds or 0.0)
    while len(samples) < MAX_RUNS:
        s = time.perf_counter()
        call()
        samples.append(time.perf_counter() - s)
        if runs is not None and len(samples) >= runs:
            break
        if runs is None and len(samples) >= MIN_RUNS and time.perf_counter() >= deadline:
            break
    return {"cold_create_s": t1 - t0, "cold_first_run_s": t2 - t1, "samples_s": samples,
            "base_rss_mb": base, "peak_rss_mb": peak_rss_mb()}


def _load(job: dict[str, Any], name: str) -> Any:
    import numpy as np

    return np.load(Path(job["inputs"]) / name, allow_pickle=False)[: job["batch"]]


def _onnx(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from edgeae.runtime.session import applied_settings, make_session

    x = np.ascontiguousarray(_load(job, job["input_file"]))
    held: dict[str, Any] = {}

    def setup() -> Callable[[], Any]:
        sess = held["session"] = make_session(job["graph"], job.get("device"), job["threads"],
                                              arena=job.get("arena", True))
        feed = {sess.get_inputs()[0].name: x}
        return lambda: sess.run(None, feed)

    result = measure(setup, job)
    result["session"] = applied_settings(held["session"])
    if job.get("per_op"):
        result["ops"] = _per_op(job, x)
    return result


def _per_op(job: dict[str, Any], x: Any) -> list[dict[str, Any]]:
    """Operator times from onnxruntime's own profiler, in a separate session so the timed runs stay clean."""
    from edgeae.runtime.session import make_session

    with tempfile.TemporaryDirectory() as tmp:
        sess = make_session(job["graph"], job.get("device"), job["threads"], enable_profiling=True,
                            profile_prefix=str(Path(tmp) / "ort"))
        feed = {sess.get_inputs()[0].name: x}
        runs = max(1, min(job.get("runs") or PROFILED_RUNS, PROFILED_RUNS))
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    return aggregate_ops(events, runs)


def aggregate_ops(events: list[dict[str, Any]], runs: int, top: int = TOP_OPS) -> list[dict[str, Any]]:
    """onnxruntime profiler events -> operator types by total kernel time (µs summed, reported per run)."""
    totals: dict[str, float] = {}
    nodes: dict[str, dict[str, None]] = {}
    for e in events:
        if e.get("cat") != "Node" or "op_name" not in e.get("args", {}):
            continue
        op = e["args"]["op_name"]
        totals[op] = totals.get(op, 0.0) + float(e.get("dur", 0))
        nodes.setdefault(op, {})[e["name"].removesuffix("_kernel_time")] = None
    grand = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [{"op_type": op, "nodes": len(nodes[op]), "ms_per_run": us / runs / 1e3, "share": us / grand,
             "examples": list(nodes[op])[:3]} for op, us in ranked]


def _codec(job: dict[str, Any]) -> dict[str, Any]:
    """The full path: Encoder.encode (uint8 images -> payload) or Decoder.decode (payload -> uint8 images)."""
    from edgeae.runtime.codec import Decoder, Encoder
    from edgeae.runtime.session import applied_settings

    encode = job["part"] == "encode"
    data = _load(job, "images_u8.npy") if encode else (Path(job["inputs"]) / f"payload_{job['batch']}.bin").read_bytes()
    held: dict[str, Any] = {}

    def setup() -> Callable[[], Any]:
        args, kw = (job["bundle"], job["precision"]), {"device": job.get("device"), "threads": job["threads"]}
        if encode:
            enc = held["codec"] = Encoder(*args, **kw)
            return lambda: enc.encode(data)
        dec = held["codec"] = Decoder(*args, **kw)
        return lambda: dec.decode(data)

    result = measure(setup, job)
    result["session"] = applied_settings(held["codec"].session)
    if encode:
        result["bytes_per_image"] = len(held["codec"].encode(data)) / job["batch"]
    return result


def _torch(job: dict[str, Any]) -> dict[str, Any]:
    """PyTorch eager on the model the bundle was exported from, same inputs, same thread count."""
    import numpy as np
    import torch

    torch.set_num_threads(job["threads"])
    torch.set_num_interop_threads(1)
    x = torch.from_numpy(np.ascontiguousarray(_load(job, job["input_file"])))
    held: dict[str, Any] = {}

    def setup() -> Callable[[], Any]:
        from edgeae.train.rundir import load_run

        model = held["model"] = load_run(job["run_dir"]).model
        module = model.encoder if job["part"] == "encoder" else model.decoder

        def call() -> Any:
            with torch.inference_mode():
                return module(x)

        return call

    result = measure(setup, job)
    result["torch"] = torch.__version__
    return result


def _pillow(job: dict[str, Any]) -> dict[str, Any]:
    """JPEG / WebP with Pillow on the same uint8 images, one image at a time (as a camera pipeline would)."""
    import io

    import numpy as np
    from PIL import Image

    from edgeae.evaluate.classical import save_options  # the same encoder settings as `edgeae eval`

    images = [Image.fromarray(a) for a in _load(job, "images_u8.npy")]
    fmt, options = job["format"].upper(), save_options(job["format"], job["quality"])

    def encode_all() -> list[bytes]:
        out = []
        for im in images:
            buf = io.BytesIO()
            im.save(buf, format=fmt, **options)
            out.append(buf.getvalue())
        return out

    encoded = encode_all()

    def decode_all() -> list[Any]:
        return [np.asarray(Image.open(io.BytesIO(b))) for b in encoded]

    result = measure(lambda: encode_all if job["part"] == "encode" else decode_all, job)
    result["bytes_per_image"] = sum(map(len, encoded)) / len(encoded)
    return result


RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "onnx": _onnx, "codec": _codec, "torch": _torch, "pillow": _pillow,
}

if __name__ == "__main__":
    sys.exit(main(sys.argv))
