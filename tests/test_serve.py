"""The FastAPI decode server, started for real with uvicorn on a free loopback port (tests/conftest.py bundles)."""

from __future__ import annotations

import concurrent.futures as cf
import io
import re
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from edgeae.runtime.codec import Decoder, Encoder  # noqa: E402
from edgeae.serve.app import ServeConfig, choose_format, create_app  # noqa: E402
from edgeae.serve.store import ImageStore, payload_id  # noqa: E402
from edgeae.serve.testing import ThreadServer  # noqa: E402


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)


@pytest.fixture(scope="module")
def codec(tiny_bundle):
    return Encoder(tiny_bundle), Decoder(tiny_bundle)


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    app = create_app(ServeConfig(bundle=str(tiny_bundle), max_batch=16, max_wait_ms=20, max_body=4096, store=str(store)))
    with ThreadServer(app) as s:
        s.store = store
        yield s


def _post(base: str, path: str, content, **headers):
    headers.setdefault("content-type", "application/octet-stream")
    return httpx.post(base + path, content=content, headers=headers, timeout=30)


def test_decode_round_trip_equals_the_library(server, codec):
    enc, dec = codec
    payloads = enc.encode_each(_images(24))
    with cf.ThreadPoolExecutor(12) as ex:  # concurrent: these are micro-batched together
        responses = list(ex.map(lambda p: _post(server.base, "/v1/decode", p), payloads))
    for r, p in zip(responses, payloads, strict=True):
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert np.array_equal(np.array(Image.open(io.BytesIO(r.content))), dec.decode(p)[0])
    metrics = httpx.get(server.base + "/metrics").text
    counts = {int(m.group(1)): int(m.group(2)) for m in re.finditer(r'edgeae_batch_size_bucket\{le="(\d+)"\} (\d+)', metrics)}
    total = int(re.search(r"edgeae_batch_size_count (\d+)", metrics).group(1))
    assert total >= 1 and counts[16] == total


def test_batch_payload_formats(server, codec):
    enc, dec = codec
    payload = enc.encode(_images(3, seed=1))
    want = dec.decode(payload)
    r = _post(server.base, "/v1/decode", payload)
    assert r.headers["content-type"] == "application/x-npy"
    assert np.array_equal(np.load(io.BytesIO(r.content), allow_pickle=False), want)
    r = _post(server.base, "/v1/decode", payload, accept="image/png")
    assert np.array_equal(np.array(Image.open(io.BytesIO(r.content))), want.reshape(24, 8))
    r = _post(server.base, "/v1/decode", payload, accept="multipart/mixed")
    assert r.headers["content-type"].startswith("multipart/mixed") and r.content.count(b"\x89PNG") == 3
    one = enc.encode_each(_images(1))[0]
    r = _post(server.base, "/v1/decode", one, accept="application/x-npy")
    assert np.load(io.BytesIO(r.content)).shape == (1, 8, 8)
    assert choose_format(None, 1) == "image/png" and choose_format("*/*", 2) == "application/x-npy"


def test_each_payload_error_has_its_status_and_code(server, codec, other_bundle):
    enc, _ = codec
    good = enc.encode_each(_images(1))[0]
    bad_crc = good[:-1] + bytes([good[-1] ^ 0xFF])
    cases = {
        b"not a payload at all": (400, "bad_magic"),
        good[:2] + b"\x09" + good[3:]: (400, "unsupported_version"),
        good[:-5]: (400, "truncated"),
        bad_crc: (400, "checksum_mismatch"),
        Encoder(other_bundle).encode_each(_images(1))[0]: (409, "fingerprint_mismatch"),
        b"": (400, "empty"),
    }
    for body, (status, code) in cases.items():
        r = _post(server.base, "/v1/decode", body)
        assert (r.status_code, r.json()["error"]) == (status, code), body[:8]
        assert r.json()["detail"]
    # still serving
    assert _post(server.base, "/v1/decode", good).status_code == 200
    assert 'edgeae_errors_total{kind="bad_magic"}' in httpx.get(server.base + "/metrics").text


def test_random_bytes_never_crash_the_server(server, codec):
    enc, _ = codec
    good = enc.encode_each(_images(1))[0]
    rng = np.random.default_rng(3)
    for _ in range(40):
        body = bytearray(good)
        for i in rng.integers(0, len(body), 3):
            body[i] = int(rng.integers(0, 256))
        r = _post(server.base, "/v1/decode", bytes(body))
        assert r.status_code in (200, 400, 409)
    assert httpx.get(server.base + "/healthz").json()["status"] == "ok"


def test_oversize_body_is_413_by_header_and_by_stream(server):
    r = _post(server.base, "/v1/decode", b"\xea\xae" + b"\0" * 5000)
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    def chunks():  # no Content-Length: chunked transfer, the limit is enforced on the streamed size
        for _ in range(6):
            yield b"\0" * 1000

    r = _post(server.base, "/v1/decode", chunks())
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_ingest_is_idempotent_and_atomic(server, codec):
    enc, dec = codec
    payloads = enc.encode_each(_images(3, seed=7)) + [enc.encode(_images(2, seed=8))]
    first = [_post(server.base, "/v1/ingest", p) for p in payloads]
    again = [_post(server.base, "/v1/ingest", p) for p in payloads]
    assert [r.status_code for r in first + again] == [200] * 8
    assert [r.json()["new"] for r in first] == [True] * 4 and [r.json()["new"] for r in again] == [False] * 4
    store = ImageStore(server.store)
    for p in payloads:
        folder = store.path(payload_id(p))
        pngs = sorted(folder.glob("*.png"))
        want = dec.decode(p)
        assert len(pngs) == len(want)
        assert all(np.array_equal(np.array(Image.open(f)), w) for f, w in zip(pngs, want, strict=True))
        assert (folder / "payload.eae").read_bytes() == p
    assert not list(server.store.rglob(".tmp-*"))


def test_concurrent_ingest_of_one_payload_stores_once(server, codec):
    enc, _ = codec
    p = enc.encode_each(_images(1, seed=11))[0]
    with cf.ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda _: _post(server.base, "/v1/ingest", p), range(8)))
    assert all(r.status_code == 200 for r in rs)
    assert sum(r.json()["new"] for r in rs) == 1
    assert len(list(ImageStore(server.store).path(payload_id(p)).glob("*.png"))) == 1


def test_model_health_metrics_openapi(server, tiny_bundle):
    m = httpx.get(server.base + "/v1/model").json()
    assert m["fingerprint"] == Decoder(tiny_bundle).manifest.fingerprint and m["latent_shape"] == [8, 2, 2]
    assert httpx.get(server.base + "/healthz").json()["fingerprint"] == m["fingerprint"]
    text = httpx.get(server.base + "/metrics").text
    for name in ("edgeae_requests_total", "edgeae_batch_size_bucket", 'quantile="0.99"'):
        assert name in text
    paths = httpx.get(server.base + "/openapi.json").json()["paths"]
    assert {"/v1/decode", "/v1/ingest", "/v1/model", "/healthz", "/metrics"} <= set(paths)


def test_full_queue_answers_503_with_retry_after(tiny_bundle, codec):
    enc, _ = codec
    gate, entered = threading.Event(), threading.Event()

    def slow(_batch: int) -> None:  # test hook: the decoder blocks until the test lets it go
        entered.set()
        assert gate.wait(30)

    app = create_app(ServeConfig(bundle=str(tiny_bundle), max_batch=1, max_wait_ms=0, queue=2), hook=slow)
    batcher = lambda: app.state.service.batcher  # noqa: E731
    payloads = enc.encode_each(_images(6, seed=5))
    with ThreadServer(app) as s, cf.ThreadPoolExecutor(2) as ex:
        first = ex.submit(_post, s.base, "/v1/decode", payloads[0])
        assert entered.wait(30)  # the first request is in the decoder
        second = ex.submit(_post, s.base, "/v1/decode", payloads[1])
        while batcher().outstanding < 2:  # the second is queued: the queue (2) is full
            assert not second.done(), second.result().text
            threading.Event().wait(0.005)
        refused = [_post(s.base, "/v1/decode", p) for p in payloads[2:]]
        assert [r.status_code for r in refused] == [503] * 4
        assert all(r.headers["retry-after"] == "1" for r in refused)
        assert refused[0].json()["error"] == "overloaded"
        gate.set()
        assert first.result(timeout=30).status_code == 200 and second.result(timeout=30).status_code == 200
        assert batcher().outstanding == 0
        assert _post(s.base, "/v1/decode", payloads[0]).status_code == 200


def test_several_decode_threads_and_no_store(tiny_bundle, codec):
    enc, dec = codec
    payloads = enc.encode_each(_images(16, seed=9))
    app = create_app(ServeConfig(bundle=str(tiny_bundle), workers=3, max_batch=4, max_wait_ms=2))
    with ThreadServer(app) as s, cf.ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda p: _post(s.base, "/v1/decode", p), payloads))
        assert all(np.array_equal(np.array(Image.open(io.BytesIO(r.content))), dec.decode(p)[0])
                   for r, p in zip(rs, payloads, strict=True))
        r = _post(s.base, "/v1/ingest", payloads[0])
        assert (r.status_code, r.json()["error"]) == (404, "no_store")


def test_store_index_expiry_cli_and_sweep_spares_live_writers(tmp_path, codec):
    import fcntl
    import os
    import time

    from click.testing import CliRunner

    from edgeae.cli import main

    enc, dec = codec
    store = ImageStore(tmp_path / "s")
    ps = enc.encode_each(_images(3, seed=60))
    now = time.time()
    for i, p in enumerate(ps):  # received 10, 5 and 0 days ago
        assert store.put(p, dec.decode(p), device="cam", bundle="fp", received=now - (10 - 5 * i) * 86400)[1]
    assert store.count() == (3, 3, sum(map(len, ps)), store.count()[3]) and store.count()[3] > 0
    runner = CliRunner()
    out = runner.invoke(main, ["store", "list", str(store.root), "--device", "cam"]).output
    assert out.count("cam") == 3 and payload_id(ps[0]) in out
    assert runner.invoke(main, ["store", "count", str(store.root), "--days", "7"]).output.startswith("2 payloads")
    res = runner.invoke(main, ["store", "expire", str(store.root), "--keep-days", "7"])
    assert res.exit_code == 0 and "expired 1" in res.output
    assert sorted(e.id for e in store.entries()) == store.ids() == sorted(payload_id(p) for p in ps[1:])
    # a crash left one half-built folder; another writer is building one right now (it holds the lock)
    shard = store.root / "ab"
    shard.mkdir(exist_ok=True)
    crashed, live = shard / ".tmp-crashed", shard / ".tmp-live"
    crashed.mkdir()
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        ImageStore(store.root)
        assert not crashed.exists() and live.exists()
    finally:
        os.close(fd)
    res = runner.invoke(main, ["store", "count", str(tmp_path)])
    assert res.exit_code != 0 and "index.sqlite3" in res.output and "Traceback" not in res.output


def test_keys_cli_adds_rotates_and_revokes(tmp_path):
    from click.testing import CliRunner

    from edgeae.cli import main
    from edgeae.serve.auth import KeyRing

    kf = tmp_path / "keys.toml"
    runner = CliRunner()
    first = runner.invoke(main, ["keys", "add", str(kf), "cam.01"]).output.strip()
    ring = KeyRing(kf, reload_s=0)
    assert ring.device(first).name == "cam.01" and ring.device(first).scopes == {"ingest", "decode"}
    second = runner.invoke(main, ["keys", "add", str(kf), "cam.01", "--scope", "metrics"]).output.strip()
    assert second != first and ring.device(first) is None and ring.device(second).scopes == {"metrics"}
    assert runner.invoke(main, ["keys", "revoke", str(kf), "cam.01"]).exit_code == 0
    assert ring.device(second) is None and len(ring) == 0
    assert oct(kf.stat().st_mode & 0o777) == "0o600"
    res = runner.invoke(main, ["keys", "add", str(kf), "bad name!"])
    assert res.exit_code != 0 and "device name" in res.output
