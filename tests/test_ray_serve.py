"""Ray Serve: a local Ray (loopback, no dashboard, 2 CPUs) serving the decoder through the same HTTP layer as
the FastAPI server; decoded over HTTP on loopback and compared with the library. Ray is shut down at the end,
whatever happens; `edgeae serve --engine ray` stops quietly on SIGTERM."""

from __future__ import annotations

import concurrent.futures as cf
import io
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
OCTET = {"content-type": "application/octet-stream"}


def test_ray_serve_decodes_batches_over_loopback(tiny_bundle, other_bundle):
    from PIL import Image

    from edgeae.runtime.codec import Decoder, Encoder
    from edgeae.serve import ray_app
    from edgeae.serve.testing import free_port, wait_ready

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    enc, dec = Encoder(tiny_bundle), Decoder(tiny_bundle)
    payloads = enc.encode_each(np.random.default_rng(0).integers(0, 256, (16, 8, 8), dtype=np.uint8))
    try:
        try:
            ray_app.start(str(tiny_bundle), host="127.0.0.1", port=port, num_cpus=2, replicas=1, max_batch=8,
                          max_wait_ms=20)
            wait_ready(base, timeout=90)
        except Exception as exc:  # a sandbox without the resources Ray needs
            pytest.skip(f"Ray Serve could not start here: {type(exc).__name__}: {str(exc)[:200]}")
        with httpx.Client(timeout=60) as client, cf.ThreadPoolExecutor(8) as ex:
            rs = list(ex.map(lambda p: client.post(base + "/v1/decode", content=p, headers=OCTET), payloads))
            for r, p in zip(rs, payloads, strict=True):
                assert r.status_code == 200, r.text
                assert np.array_equal(np.array(Image.open(io.BytesIO(r.content))), dec.decode(p)[0])
            batch = enc.encode(np.zeros((3, 8, 8), np.uint8))
            r = client.post(base + "/v1/decode", content=batch, headers=OCTET)
            assert r.headers["content-type"] == "application/x-npy"
            assert np.array_equal(np.load(io.BytesIO(r.content), allow_pickle=False), dec.decode(batch))
            # the same HTTP layer as the FastAPI server: same errors, same limits
            r = client.post(base + "/v1/decode", content=b"garbage", headers=OCTET)
            assert (r.status_code, r.json()["error"]) == (400, "bad_magic")
            r = client.post(base + "/v1/decode", content=batch)
            assert (r.status_code, r.json()["error"]) == (415, "unsupported_media_type")
            other = Encoder(other_bundle).encode_each(np.zeros((1, 8, 8), np.uint8))[0]
            r = client.post(base + "/v1/decode", content=other, headers=OCTET)
            assert (r.status_code, r.json()["error"]) == (409, "fingerprint_mismatch")
            model = client.get(base + "/v1/model").json()
            assert model["engine"] == "ray" and model["fingerprint"] == dec.manifest.fingerprint
            metrics = client.get(base + "/metrics").text
            runs = int(re.search(r"edgeae_batch_size_count (\d+)", metrics).group(1))
            items = int(re.search(r"edgeae_batch_size_sum (\d+)", metrics).group(1))
            assert items == len(payloads) + 1 and runs <= items  # decoded in the replica's batcher threads
    finally:
        ray_app.shutdown()
    assert not ray.is_initialized()


def test_ray_serve_stops_quietly_on_sigterm(tiny_bundle, tmp_path):
    from edgeae.serve.testing import free_port, wait_ready

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from edgeae.cli import main; main()", "serve", "--engine", "ray",
                             "--bundle", str(tiny_bundle), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        try:
            wait_ready(f"http://127.0.0.1:{port}", timeout=120, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            proc.kill()
            out = proc.communicate(timeout=30)[0].decode(errors="replace")
            pytest.skip(f"Ray Serve could not start here: {exc}: {out[-300:]}")
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-2000:]
    for marker in ("*** SIG", "Stack trace", "stack trace", "@ 0x", "Traceback", "core dumped"):
        assert marker not in out, out[-2000:]
